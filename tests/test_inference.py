"""Feature passes through ONNX Runtime (dsfnet/inference.py): the same features as PyTorch's, to 1e-4."""

import numpy as np
import pytest
import torch

from dsfnet import inference
from dsfnet.config import DDOConfig, DSFNetConfig, FINetConfig, ModelConfig, SCNetConfig
from dsfnet.data import SyntheticConfig, generate_synthetic
from dsfnet.features import extract_branches, extract_features
from dsfnet.inference import OnnxNetwork, resolve_runtime
from dsfnet.models import build_model

HEIGHT, WIDTH = 64, 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("synthetic"),
                              SyntheticConfig(profile="tiny", height=HEIGHT, width=WIDTH), progress=False)


def network(arch: str, method: DSFNetConfig | None) -> torch.nn.Module:
    """A network whose BatchNorm statistics come from images, as after training (random-init ones do not)."""
    model = build_model(ModelConfig(arch=arch, last_stride=2), method, seed=5)
    model.train()
    with torch.no_grad():
        model(torch.rand(32, 3, HEIGHT, WIDTH))
    return model.eval()


def test_auto_picks_onnxruntime_where_it_measured_faster(monkeypatch):
    assert resolve_runtime("auto", "mobilenet_v2") == "onnxruntime"
    assert resolve_runtime("auto", "resnet18") == "torch"
    assert resolve_runtime("auto", "mobilenet_v2", "cuda") == "torch"
    assert resolve_runtime("torch", "mobilenet_v2") == "torch"
    assert resolve_runtime("onnxruntime", "resnet18") == "onnxruntime"
    assert resolve_runtime("auto", "mobilenet_v2", images=2048) == "onnxruntime"
    assert resolve_runtime("auto", "mobilenet_v2", images=2047) == "torch"  # the export would cost more
    assert resolve_runtime("onnxruntime", "mobilenet_v2", images=10) == "onnxruntime"
    monkeypatch.setattr(inference, "onnxruntime_installed", lambda: False)
    assert resolve_runtime("auto", "mobilenet_v2") == "torch"  # without the extra: PyTorch, no error
    with pytest.raises(ValueError, match=r"pip install '\.\[onnx\]'"):
        resolve_runtime("onnxruntime", "mobilenet_v2")


def test_bad_runtime_settings_name_the_parameter():
    with pytest.raises(ValueError, match="train.feature_runtime must be one of"):
        resolve_runtime("tensorrt", "resnet18")
    with pytest.raises(ValueError, match="train.feature_runtime: onnxruntime runs on the CPU"):
        resolve_runtime("onnxruntime", "resnet18", "cuda")


DDO_ALONE = DSFNetConfig(FINetConfig(enabled=False), SCNetConfig(enabled=False), DDOConfig(enabled=True))


@pytest.mark.parametrize("arch,method", [("mobilenet_v2", DSFNetConfig()), ("resnet18", None),
                                         ("resnet18", DDO_ALONE)])
def test_every_branch_equals_pytorchs(data, arch, method):
    model = network(arch, method)
    got = {runtime: extract_branches(model, data.train, HEIGHT, WIDTH, batch_size=16, progress=False,
                                     runtime=runtime) for runtime in ("torch", "onnxruntime")}
    for name, reference in got["torch"].items():
        if reference is None:  # the baseline network has no parts and no integration weights
            assert got["onnxruntime"][name] is None and method is None
            continue
        assert got["onnxruntime"][name].shape == reference.shape
        np.testing.assert_allclose(got["onnxruntime"][name], reference, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("flip", [False, True])
def test_retrieval_embeddings_equal_pytorchs(data, flip):
    model = network("mobilenet_v2", DSFNetConfig())
    torch_features, onnx_features = (
        extract_features(model, data.query, HEIGHT, WIDTH, batch_size=8, progress=False, flip=flip, runtime=runtime)
        for runtime in ("torch", "onnxruntime"))
    assert onnx_features.shape == (len(data.query), model.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(onnx_features, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(onnx_features, torch_features, atol=1e-4)


def test_export_leaves_a_training_network_training(data):
    """Exporting runs the network in eval mode; the trainer's network must come back in train mode."""
    model = network("resnet18", None).train()
    onnx = OnnxNetwork.export(model, HEIGHT, WIDTH)
    assert model.training and all(m.training for m in model.modules())
    extract_branches(model, data.train[:4], HEIGHT, WIDTH, progress=False, runtime="onnxruntime")  # as each epoch
    assert model.training and all(m.training for m in model.modules())
    images = torch.rand(3, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        reference = model.eval()(images)
    np.testing.assert_allclose(onnx(images)["embedding"].numpy(), reference.numpy(), atol=1e-4)


def test_params_name_a_bad_memory_format_or_runtime():
    from pipeline.params import ParamsError, params_from_dict

    with pytest.raises(ParamsError, match="model.memory_format must be one of"):
        params_from_dict({"model": {"memory_format": "nhwc"}})
    with pytest.raises(ParamsError, match="train.feature_runtime must be one of"):
        params_from_dict({"train": {"feature_runtime": "trt"}})


def test_training_clusters_on_onnxruntime_features_and_keeps_training_the_network(data):
    """`train.feature_runtime: onnxruntime` through `train`: every epoch's pass exports the current weights."""
    from dsfnet.cluster import ClusterConfig
    from dsfnet.config import TrainConfig
    from dsfnet.trainer import train

    method = DSFNetConfig(FINetConfig(), SCNetConfig(split=False))
    config = TrainConfig(epochs=2, iters=2, batch_size=16, height=HEIGHT, width=WIDTH, device="cpu",
                         feature_runtime="onnxruntime")
    model = build_model(ModelConfig(arch="mobilenet_v2"), method, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    result = train(model, data.train, config, ClusterConfig(k1=6, k2=3, eps=0.7, min_samples=2, camera_norm=False),
                   method, progress=False)
    assert len(result.history) == 2 and all(h.num_clusters > 0 and h.extract_s > 0 for h in result.history)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # it trained


@pytest.mark.parametrize("arch,method", [("resnet18", DSFNetConfig()), ("mobilenet_v2", None)])
def test_flip_in_one_forward_equals_the_two_forward_reference(arch, method):
    """`embed_images` runs a batch and its mirrors as one forward: the same embeddings as the textbook two
    forwards (the image's embedding plus its mirror's, re-normalised), in PyTorch and through ONNX Runtime."""
    from torch.nn.functional import normalize

    from dsfnet.features import embed_images, embed_images_onnx

    model = network(arch, method)
    images = torch.rand(5, 3, HEIGHT, WIDTH)
    with torch.inference_mode():
        reference = normalize(model(images) + model(torch.flip(images, dims=[3])), dim=1)
        got = embed_images(model, images, flip=True)
        plain = embed_images(model, images, flip=False)
    np.testing.assert_allclose(got.numpy(), reference.numpy(), atol=1e-5)
    onnx = OnnxNetwork.export(model, HEIGHT, WIDTH)
    np.testing.assert_allclose(embed_images_onnx(onnx, images, flip=True).numpy(), reference.numpy(), atol=1e-4)
    np.testing.assert_allclose(embed_images_onnx(onnx, images).numpy(), plain.numpy(), atol=1e-4)
