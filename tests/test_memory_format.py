"""model.memory_format: channels-last is a speed choice, so features and loss curves must equal contiguous ones."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from dsfnet.config import DSFNetConfig, ModelConfig, TrainConfig
from dsfnet.data import SyntheticConfig, generate_synthetic
from dsfnet.features import extract_branches
from dsfnet.models import build_model
from dsfnet.models.backbone import uses_channels_last
from dsfnet.objective import DSFNetObjective
from dsfnet.trainer import build_optimizer, cycle, epoch_loader

HEIGHT, WIDTH = 64, 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("synthetic"),
                              SyntheticConfig(profile="tiny", height=HEIGHT, width=WIDTH), progress=False)


def pair(arch: str, method: DSFNetConfig):
    """The same initial weights, once contiguous and once channels-last."""
    models = [build_model(ModelConfig(arch=arch, memory_format=fmt, last_stride=2), method, seed=3)
              for fmt in ("contiguous", "channels_last")]
    assert not models[0].channels_last and models[1].channels_last
    conv = next(m for m in models[1].trunk.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    return models


def test_auto_runs_channels_last_where_it_measured_faster():
    assert uses_channels_last(ModelConfig(arch="mobilenet_v2"))
    assert uses_channels_last(ModelConfig(arch="resnet50"))
    assert not uses_channels_last(ModelConfig(arch="resnet18"))
    assert uses_channels_last(ModelConfig(arch="resnet18", memory_format="channels_last"))
    assert not uses_channels_last(ModelConfig(arch="mobilenet_v2", memory_format="contiguous"))


def test_an_unknown_memory_format_names_the_setting():
    with pytest.raises(ValueError, match="model.memory_format"):
        build_model(ModelConfig(memory_format="nhwc"))


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18"])
def test_features_of_every_branch_equal_the_contiguous_ones(data, arch):
    contiguous, channels_last = pair(arch, DSFNetConfig())
    got = [extract_branches(m, data.train, HEIGHT, WIDTH, batch_size=16, progress=False)
           for m in (contiguous, channels_last)]
    for name in ("global", "parts", "fused", "weights"):
        assert got[0][name].shape == got[1][name].shape
        np.testing.assert_allclose(got[1][name], got[0][name], atol=1e-4, err_msg=name)


def test_a_loss_curve_equals_the_contiguous_one(data):
    """Three Adam steps of DSFNet (FINet's branches and memories) on the same batches, in float64.

    float64, because a randomly initialised network in train mode is badly conditioned: in float32 the
    contiguous gradient itself is ~2 % away from the exact one and channels-last rounds differently, so
    float32 curves part after a step or two whatever the layout. In float64 both layouts must compute the
    same function and the same updates (measured: gradients agree to 1e-13). ResNet-18 with channels-last
    forced: the switch is the same for every trunk, and MobileNetV2's depthwise float64 kernels take minutes.
    """
    method = replace(DSFNetConfig(), scnet=replace(DSFNetConfig().scnet, enabled=False))  # labels, not clusters
    config = TrainConfig(height=HEIGHT, width=WIDTH, batch_size=8, num_instances=4)
    labels = np.unique([r.pid for r in data.train], return_inverse=True)[1]
    models = pair("resnet18", method)
    branches = extract_branches(models[0], data.train, HEIGHT, WIDTH, batch_size=32, progress=False)
    curves = []
    for model in models:
        model.double().train()
        objective = DSFNetObjective(branches, labels, method).double().train()
        optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], config)
        torch.manual_seed(0)  # the same augmentations for both
        batches = cycle(epoch_loader(data.train, labels, config, epoch=0))
        curve = []
        for _ in range(3):
            images, targets, _, _ = next(batches)
            loss, _ = objective(model(images.double()), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            curve.append(loss.item())
        curves.append(curve)
    assert len(set(curves[0])) == 3  # it trains: the loss moves every step
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-9)
