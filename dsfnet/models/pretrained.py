"""ImageNet weights for `model.pretrained`: torchvision's own files from the torch hub cache, or a local file.

`model.pretrained: imagenet` looks in `torch.hub.get_dir()/checkpoints/` ($TORCH_HOME/hub/checkpoints/) for
torchvision's file of `model.arch` under torchvision's name (e.g. resnet50-0676ba61.pth), and for
mobilenet_v2 also for the file `python -m pipeline.imagenet_weights` converts from another source
(mobilenet_v2-deepsort-<sha256 prefix>.pth). Every file name carries the first hex digits of the file's
sha256 after its last dash, as torchvision's do; the bytes are checked against it as torch.hub's check_hash
does, so a truncated or replaced file is an error, not a silently different network. Nothing is downloaded
unless `model.allow_download` is true (and a network is there).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from dsfnet.atomic import sha256_file

IMAGENET = "imagenet"
# torchvision's weights enum per architecture; IMAGENET1K_V1's url names the file in the hub cache
TORCHVISION_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights",
                       "mobilenet_v2": "MobileNet_V2_Weights"}
# files that `make imagenet-weights` converts from another source: <stem>-<first 8 hex digits of sha256>.pth
CONVERTED_STEMS = {"mobilenet_v2": "mobilenet_v2-deepsort"}
PROVIDE_COMMAND = "make imagenet-weights"  # = python -m pipeline.imagenet_weights
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's: the hex digits after a dash, before the suffix
HEAD_KEYS = ("fc.weight", "fc.bias", "classifier.1.weight", "classifier.1.bias")  # ImageNet classifiers, unused


def hub_checkpoints() -> Path:
    """Where torch.hub (and torchvision) keep downloaded weights: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_url(arch: str) -> str:
    if arch not in TORCHVISION_WEIGHTS:
        raise ValueError(f"model.pretrained: imagenet knows no weights for model.arch={arch!r} "
                         f"(one of {sorted(TORCHVISION_WEIGHTS)})")
    return getattr(torchvision.models, TORCHVISION_WEIGHTS[arch]).IMAGENET1K_V1.url


def torchvision_file(arch: str) -> Path:
    """torchvision's own ImageNet file of `arch` in the hub cache (it may not exist)."""
    return hub_checkpoints() / Path(urlparse(torchvision_url(arch)).path).name


def check_hash(path: str | Path) -> None:
    """The file's sha256 starts with the hex digits its name carries (torch.hub's check_hash), else an error."""
    path = Path(path)
    match = HASH_REGEX.search(path.name)
    if match is None or not match.group(1):
        raise ValueError(f"model.pretrained: {path.name} carries no sha256 prefix (name-<hex digits>.pth)")
    prefix, digest = match.group(1), sha256_file(path)
    if not digest.startswith(prefix):
        raise ValueError(f"model.pretrained: {path} is corrupt or not the file its name promises: its sha256 "
                         f"starts {digest[:len(prefix)]}, its name says {prefix}; delete it and provide it again")


def _offline_error(arch: str, folder: Path, wanted: list[str], reason: str = "") -> FileNotFoundError:
    url, name = torchvision_url(arch), wanted[0]
    provide = (f"run `{PROVIDE_COMMAND}` (python -m pipeline.imagenet_weights), or copy torchvision's {name} there"
               if arch in CONVERTED_STEMS else f"copy torchvision's {name} there")
    return FileNotFoundError(
        f"model.pretrained: imagenet needs ImageNet weights for model.arch={arch}: no {' or '.join(wanted)} "
        f"in {folder} (the torch hub cache, $TORCH_HOME/hub/checkpoints){reason}. To provide it, {provide} "
        f"(from a machine with a network: curl -L -o {folder / name} {url}), or set model.allow_download: true "
        f"where a network is there")


def imagenet_weights(arch: str, allow_download: bool = False) -> Path:
    """The checked ImageNet weights file of `arch` in the hub cache: torchvision's own, else a converted one.

    Missing, it is downloaded (to torchvision's name, hash checked) only with `allow_download`.
    """
    official, folder = torchvision_file(arch), hub_checkpoints()
    if official.is_file():
        check_hash(official)
        return official
    wanted = [official.name]
    if arch in CONVERTED_STEMS:
        stem = CONVERTED_STEMS[arch]
        wanted.append(f"{stem}-<sha256>.pth")
        converted = sorted(folder.glob(f"{stem}-*.pth"), key=lambda path: path.stat().st_mtime)
        for path in converted:
            check_hash(path)
        if converted:
            return converted[-1]
    if not allow_download:
        raise _offline_error(arch, folder, wanted)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        prefix = HASH_REGEX.search(official.name).group(1)
        torch.hub.download_url_to_file(torchvision_url(arch), str(official), hash_prefix=prefix, progress=False)
    except Exception as error:  # noqa: BLE001 - no network, a proxy page, a bad hash: the same way out
        raise _offline_error(arch, folder, wanted, f"; downloading failed ({error})") from None
    return official


def resolve_pretrained(pretrained: str | Path, arch: str, allow_download: bool = False) -> Path:
    """The weights file `model.pretrained` names: `imagenet` (the hub cache) or a local path."""
    if str(pretrained) == IMAGENET:
        return imagenet_weights(arch, allow_download)
    return Path(pretrained)


def load_pretrained(net: nn.Module, path: str | Path, arch: str) -> None:
    """ImageNet weights from a local torchvision state_dict (or a checkpoint holding one under 'state_dict').

    The ImageNet classifier (fc / classifier) may be there or not; every other tensor must be, in its shape.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained: weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"model.pretrained: {path} is not a readable torch weights file ({error})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"model.pretrained: {path} holds no state_dict (got {type(state).__name__})")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state) - set(HEAD_KEYS))
    wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or wrong:
        detail = f"{len(missing)} missing tensors (e.g. {missing[:3]})" if missing else ""
        if wrong:
            detail += ("; " if detail else "") + f"{len(wrong)} with other shapes (e.g. {wrong[0]}: " \
                      f"{tuple(state[wrong[0]].shape)} vs {tuple(expected[wrong[0]].shape)})"
        raise ValueError(f"model.pretrained: {path} does not match model.arch={arch}: {detail}")
    net.load_state_dict({k: v for k, v in state.items() if k in expected and k not in HEAD_KEYS}, strict=False)
