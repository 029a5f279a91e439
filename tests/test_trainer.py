"""The training loop: determinism for a seed, and resuming after a crash to the same result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsfnet.cluster import ClusterConfig
from dsfnet.data import SyntheticConfig, generate_synthetic
from dsfnet.models import ModelConfig, build_model
from dsfnet.trainer import TrainConfig, load_resume_state, seed_everything, train

CONFIG = TrainConfig(epochs=3, iters=2, batch_size=8, num_instances=2, height=32, width=16, workers=0, seed=3)
CLUSTER = ClusterConfig(k1=10, k2=3, eps=0.6, min_samples=3)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic(root, SyntheticConfig(profile="tiny", height=32, width=16), progress=False).train


def fresh_model(seed: int = 0) -> torch.nn.Module:
    seed_everything(seed)
    return build_model(ModelConfig())


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def uninterrupted(records):
    model = fresh_model()
    result = train(model, records, CONFIG, CLUSTER, progress=False)
    return weights(model), result


def test_same_seed_same_run(records, uninterrupted):
    reference, first = uninterrupted
    model = fresh_model()
    second = train(model, records, CONFIG, CLUSTER, progress=False)
    assert [h.num_clusters for h in second.history] == [h.num_clusters for h in first.history]
    assert [h.loss for h in second.history] == [h.loss for h in first.history]
    for name, tensor in weights(model).items():
        assert torch.equal(tensor, reference[name]), name


class Crash(RuntimeError):
    pass


def test_resume_after_a_crash_equals_the_uninterrupted_run(records, uninterrupted, tmp_path):
    reference, full = uninterrupted
    state = tmp_path / "last.pt"

    def crash_in_epoch_two(stats, labels, features):
        if stats.epoch == 1:
            raise Crash("killed")

    with pytest.raises(Crash):
        train(fresh_model(), records, CONFIG, CLUSTER, on_epoch_end=crash_in_epoch_two, progress=False,
              state_path=state, fingerprint="run-a", extra={"run_id": "abc"})
    saved = load_resume_state(state, "run-a")
    assert saved["next_epoch"] == 1 and saved["extra"] == {"run_id": "abc"}
    assert load_resume_state(state, "other-params") is None  # a state from other settings is not reused

    model = fresh_model(seed=99)  # different initial weights: they must be replaced by the saved ones
    resumed = train(model, records, CONFIG, CLUSTER, progress=False, state_path=state, fingerprint="run-a",
                    resume=saved)
    assert len(resumed.history) == 3 and len(resumed.labels) == 3
    assert [h.num_clusters for h in resumed.history] == [h.num_clusters for h in full.history]
    assert [h.loss for h in resumed.history] == pytest.approx([h.loss for h in full.history], rel=0, abs=0)
    for epoch_labels, expected in zip(resumed.labels, full.labels, strict=True):
        np.testing.assert_array_equal(epoch_labels, expected)
    for name, tensor in weights(model).items():
        assert torch.equal(tensor, reference[name]), name


@pytest.mark.parametrize("bn_group", [0, 4], ids=["plain-bn", "bn-groups-of-4"])
def test_full_dsfnet_is_deterministic_and_resumes_to_the_same_result(records, tmp_path, bn_group):
    from dataclasses import replace

    from dsfnet.config import DSFNetConfig
    method = DSFNetConfig()
    config = replace(CONFIG, bn_group=bn_group)

    def dsfnet_model(seed: int = 0):
        seed_everything(seed)
        return build_model(ModelConfig(), method)

    reference_model = dsfnet_model()
    reference = train(reference_model, records, config, CLUSTER, method, progress=False)
    assert all(h.hard_proxies > 0 and 0 <= h.lambda_t <= 0.5 for h in reference.history)
    assert all(abs(h.weight_global + 2 * h.weight_part - 1) < 1e-5 for h in reference.history)

    def crash_in_epoch_three(stats, labels, features):
        if stats.epoch == 2:
            raise Crash("killed")

    state = tmp_path / "last.pt"
    with pytest.raises(Crash):
        train(dsfnet_model(), records, config, CLUSTER, method, on_epoch_end=crash_in_epoch_three, progress=False,
              state_path=state, fingerprint="dsfnet")
    model = dsfnet_model(seed=42)
    resumed = train(model, records, config, CLUSTER, method, progress=False, state_path=state, fingerprint="dsfnet",
                    resume=load_resume_state(state, "dsfnet"))
    for got, want in zip(resumed.history, reference.history, strict=True):
        assert (got.num_clusters, got.hard_samples, got.hard_proxies, got.loss, got.lambda_t) == \
               (want.num_clusters, want.hard_samples, want.hard_proxies, want.loss, want.lambda_t)
    for name, tensor in weights(model).items():
        assert torch.equal(tensor, weights(reference_model)[name]), name
    grouped = {type(m).__name__ for m in model.modules() if "BatchNorm" in type(m).__name__}
    assert grouped == ({"GroupedBatchNorm1d", "GroupedBatchNorm2d"} if bn_group else {"BatchNorm1d", "BatchNorm2d"})
