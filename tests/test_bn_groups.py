"""train.bn_group: BatchNorm over sub-batches equals per-GPU BN (against 4 real gloo DDP processes)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dsfnet.config import DSFNetConfig, ModelConfig
from dsfnet.models import build_model
from dsfnet.models.bn_groups import bn_group_for_rank, group_bounds, use_bn_groups
from tests import bn_group_worker


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm().clamp(min=1e-12))


def test_group_bounds_keep_every_image_and_never_leave_one_alone():
    assert group_bounds(16, 4) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert group_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert group_bounds(9, 4) == [(0, 4), (4, 9)]  # a group of one cannot be normalised
    assert group_bounds(3, 4) == [(0, 3)]


def test_grouped_layer_normalises_each_group_like_its_own_batch_norm():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.Flatten(), nn.Linear(5 * 6 * 2, 7),
                          nn.BatchNorm1d(7))
    plain[1].weight.data.uniform_(0.5, 1.5)
    plain[1].bias.data.uniform_(-0.5, 0.5)
    grouped = copy.deepcopy(plain)
    assert use_bn_groups(grouped, 3) == 2
    x = torch.randn(9, 3, 8, 4, requires_grad=True)
    out = grouped.train()(x)
    # reference: three independent copies of the plain network, one per group; buffers only from the first
    copies = [copy.deepcopy(plain).train() for _ in range(3)]
    expected = torch.cat([c(x[3 * g : 3 * g + 3]) for g, c in enumerate(copies)])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    for name, param in grouped.named_parameters():
        reference = sum(dict(c.named_parameters())[name].grad for c in copies)
        torch.testing.assert_close(param.grad, reference, rtol=1e-5, atol=1e-5)  # conv bias before BN: ~0
    for name, buffer in grouped.named_buffers():
        torch.testing.assert_close(buffer, dict(copies[0].named_buffers())[name])
    # eval mode: plain BN with the running statistics, the same state-dict keys
    assert grouped.state_dict().keys() == plain.state_dict().keys()
    fresh = copy.deepcopy(plain)
    fresh.load_state_dict(grouped.state_dict())
    torch.testing.assert_close(grouped.eval()(x), fresh.eval()(x))


def test_grouping_keeps_the_parameter_objects_and_frozen_bias():
    model = build_model(ModelConfig(), DSFNetConfig(), seed=0)
    before = {name: p for name, p in model.named_parameters()}
    frozen = {name for name, p in before.items() if not p.requires_grad}
    assert frozen, "the BN necks keep a frozen bias"
    assert use_bn_groups(model, 8) > 10
    after = dict(model.named_parameters())
    assert all(after[name] is p for name, p in before.items())
    assert {name for name, p in after.items() if not p.requires_grad} == frozen


def test_group_size_per_process_and_errors_name_the_setting():
    assert bn_group_for_rank(64, 256, 1) == 64
    assert bn_group_for_rank(64, 256, 4) == 0  # each rank's 64 images are already one group
    assert bn_group_for_rank(32, 256, 4) == 32
    assert bn_group_for_rank(0, 256, 1) == 0
    with pytest.raises(ValueError, match=r"train.bn_group \(48\) must divide the batch each process sees"):
        bn_group_for_rank(48, 256, 1)
    with pytest.raises(ValueError, match="train.bn_group must be >= 0"):
        use_bn_groups(nn.BatchNorm1d(3), -1)
    with pytest.raises(ValueError, match="train.bn_group must be >= 0"):
        bn_group_for_rank(-64, 256, 1)


def test_one_process_with_bn_groups_steps_like_four_ddp_processes(tmp_path):
    """Same loss, gradients (≤ 1e-5 relative), BN running statistics and memories after one full-DSFNet step."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
         str(Path(bn_group_worker.__file__)), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp = torch.load(tmp_path / "ddp.pt")
    single = bn_group_worker.step(bn_group_worker.build_case(), bn_group=bn_group_worker.GROUP)
    plain = bn_group_worker.step(bn_group_worker.build_case(), bn_group=0)

    assert single["grouped"] == ["GroupedBatchNorm1d", "GroupedBatchNorm2d"]
    assert ddp["grouped"] == ["BatchNorm1d", "BatchNorm2d"]  # DDP ranks: plain BN on their own share
    assert single["loss"] == pytest.approx(ddp["loss"], rel=1e-5)
    assert abs(plain["loss"] - ddp["loss"]) > 1e-3  # BN over the whole batch is measurably different
    assert single["grads"].keys() == ddp["grads"].keys()
    worst = max(relative_error(single["grads"][n], ddp["grads"][n]) for n in ddp["grads"])
    assert worst <= 1e-5, worst
    assert max(relative_error(plain["grads"][n], ddp["grads"][n]) for n in ddp["grads"]) > 1e-3
    for name, buffer in ddp["buffers"].items():
        torch.testing.assert_close(single["buffers"][name], buffer, rtol=1e-5, atol=1e-6, msg=name)
    for name, memory in ddp["memories"].items():
        torch.testing.assert_close(single["memories"][name], memory, rtol=1e-5, atol=1e-6, msg=name)
