"""FINet's agreement weights (dsfnet.finet.agreement_weights, PPLR's reading) against by-hand computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dsfnet.cluster import ClusterConfig
from dsfnet.cluster.part_agreement import part_agreement
from dsfnet.config import DSFNetConfig, FINetConfig, SCNetConfig
from dsfnet.models import ReIDOutput
from dsfnet.objective import DSFNetObjective
from dsfnet.trainer import pseudo_labels


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def by_hand(global_: np.ndarray, parts: np.ndarray, k: int) -> np.ndarray:
    """Sets of the k most similar others by a full sort of each row, their Jaccard overlap."""
    def neighbours(x, i):
        similarity = x @ x[i]
        similarity[i] = -np.inf
        return set(np.argsort(-similarity, kind="stable")[:k])
    n, num_parts = parts.shape[:2]
    out = np.zeros((n, num_parts))
    for i in range(n):
        a = neighbours(global_, i)
        for p in range(num_parts):
            b = neighbours(parts[:, p], i)
            out[i, p] = len(a & b) / len(a | b)
    return out


def test_agreement_is_the_jaccard_overlap_of_the_two_neighbour_sets():
    rng = np.random.default_rng(0)
    global_ = unit(rng.normal(size=(60, 8)))
    parts = np.stack([unit(global_ + 0.3 * rng.normal(size=(60, 8))),  # a part close to the body
                      unit(rng.normal(size=(60, 8)))], axis=1)  # a part that sees something else
    got = part_agreement(global_, parts, k=7)
    np.testing.assert_allclose(got, by_hand(global_, parts, 7), atol=1e-6)
    assert got[:, 0].mean() > 3 * got[:, 1].mean()  # chance overlap of 7 in 59 is a Jaccard of ~0.06
    np.testing.assert_allclose(part_agreement(global_, np.stack([global_, global_], axis=1), k=7), 1.0)
    assert part_agreement(global_[:1], parts[:1], k=7).tolist() == [[1.0, 1.0]]  # nobody else: no evidence


def test_weighted_part_losses_are_the_weighted_means_of_the_per_sample_losses():
    torch.manual_seed(0)
    n, dim, num_parts = 20, 6, 2
    labels = np.repeat(np.arange(4), 5)
    branches = {"global": unit(np.random.default_rng(1).normal(size=(n, dim))),
                "parts": unit(np.random.default_rng(2).normal(size=(n, num_parts, dim))),
                "fused": unit(np.random.default_rng(3).normal(size=(n, dim)))}
    config = DSFNetConfig(FINetConfig(agreement_weights=True), SCNetConfig(enabled=False))
    objective = DSFNetObjective(branches, labels, config).eval()
    out = ReIDOutput(torch.randn(4, dim), torch.randn(4, num_parts, dim), F.normalize(torch.randn(4, dim), dim=1),
                     None)
    targets = torch.tensor([0, 1, 2, 3])
    weights = torch.tensor([[1.0, 0.0], [0.5, 0.2], [0.0, 0.4], [0.25, 0.1]])
    _, terms = objective(out, targets, None, weights)
    expected = []
    for p in range(num_parts):
        logits = F.normalize(out.parts[:, p], dim=1) @ objective.part_memories[p].features.T / 0.05
        per_sample = F.cross_entropy(logits, targets, reduction="none")
        expected.append(float((per_sample * weights[:, p]).sum() / weights[:, p].sum()))
    assert terms["loss_parts"] == pytest.approx(np.mean(expected), rel=1e-5)
    _, equal = objective(out, targets, None, torch.ones(4, num_parts))
    _, plain = objective(out, targets)
    assert equal["loss_parts"] == pytest.approx(plain["loss_parts"], rel=1e-6)  # equal weights: the plain mean


def test_pseudo_labels_carry_the_agreement_only_when_asked():
    rng = np.random.default_rng(5)
    centres = unit(rng.normal(size=(5, 16)))
    global_ = unit(np.repeat(centres, 8, axis=0) + 0.05 * rng.normal(size=(40, 16)))
    branches = {"global": global_, "parts": np.stack([global_, unit(rng.normal(size=(40, 16)))], axis=1),
                "fused": global_, "weights": None}
    cluster = ClusterConfig(k1=6, k2=3, eps=0.6, min_samples=2, camera_norm=False)
    on = DSFNetConfig(FINetConfig(agreement_weights=True, agreement_k=5), SCNetConfig(enabled=False))
    clustered = pseudo_labels(branches, cluster, on, epoch=0, epochs=1)
    np.testing.assert_allclose(clustered.part_agreement, part_agreement(global_, branches["parts"], 5))
    expected = part_agreement(global_, branches["parts"], 5)
    assert clustered.extra["part_agreement"] == pytest.approx(float(expected.mean()))
    assert clustered.extra["part_agreement_min"] == pytest.approx(float(expected[:, 1].mean()))
    assert expected[:, 1].mean() < 0.5 < expected[:, 0].mean()
    off = DSFNetConfig(FINetConfig(), SCNetConfig(enabled=False))
    assert pseudo_labels(branches, cluster, off, epoch=0, epochs=1).part_agreement is None


def test_a_bad_agreement_k_names_the_setting():
    with pytest.raises(ValueError, match="dsfnet.finet.agreement_k"):
        FINetConfig(agreement_k=0).check()


@pytest.mark.parametrize("retrieval", ["fused", "global"])
def test_training_with_agreement_weights_logs_them_every_epoch(tmp_path, retrieval):
    """End to end through `train`: the weights reach the part losses and the epoch statistics; with
    `retrieval: global` (PPLR's whole reading) the trained network retrieves with its global feature."""
    from dsfnet.config import ModelConfig, TrainConfig
    from dsfnet.data import SyntheticConfig, generate_synthetic
    from dsfnet.models import build_model
    from dsfnet.trainer import train

    data = generate_synthetic(tmp_path, SyntheticConfig(profile="tiny", height=64, width=32), progress=False)
    method = DSFNetConfig(FINetConfig(agreement_weights=True, agreement_k=5, retrieval=retrieval),
                          SCNetConfig(split=False))
    config = TrainConfig(epochs=2, iters=2, batch_size=16, height=64, width=32, device="cpu")
    model = build_model(ModelConfig(), method, seed=0)
    result = train(model, data.train, config,
                   ClusterConfig(k1=6, k2=3, eps=0.7, min_samples=2, camera_norm=False), method, progress=False)
    assert len(result.history) == 2
    for stats in result.history:
        assert 0 < stats.part_agreement_min <= stats.part_agreement <= 1 and stats.loss_parts > 0
    assert model.embedding_dim == (512 if retrieval == "global" else 3 * 512)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_agreement_searches_with_the_clustering_knn_backend(backend, monkeypatch):
    """`cluster.knn_backend` picks every search of the clustering step, the agreement's included."""
    import dsfnet.cluster.part_agreement as module

    rng = np.random.default_rng(3)
    centres = unit(rng.normal(size=(4, 12)))
    global_ = unit(np.repeat(centres, 6, axis=0) + 0.05 * rng.normal(size=(24, 12)))
    branches = {"global": global_, "parts": np.stack([global_, unit(rng.normal(size=(24, 12)))], axis=1),
                "fused": global_, "weights": None}
    asked = []
    real_knn = module.knn
    monkeypatch.setattr(module, "knn", lambda x, k, backend="auto": asked.append(backend) or real_knn(x, k, backend))
    cluster = ClusterConfig(k1=5, k2=3, eps=0.6, min_samples=2, camera_norm=False, knn_backend=backend)
    on = DSFNetConfig(FINetConfig(agreement_weights=True, agreement_k=4), SCNetConfig(enabled=False))
    clustered = pseudo_labels(branches, cluster, on, epoch=0, epochs=1)
    assert asked == [backend] * 3  # the global feature and each of the two parts
    np.testing.assert_allclose(clustered.part_agreement, by_hand(global_, branches["parts"], 4), atol=1e-6)
