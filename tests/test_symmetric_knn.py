"""The symmetric self-search (`cluster.knn_backend: symmetric`): half the products, the same neighbours."""

import importlib

import numpy as np
import pytest
import torch.nn.functional as F

from dsfnet.cluster import ClusterConfig
from dsfnet.cluster.dbscan import camera_normalise
from dsfnet.cluster.ddo import as_concatenation, branch_neighbours, cluster_fused
from dsfnet.config import DDOConfig
from dsfnet.models.finet import integrate

knn_module = importlib.import_module("dsfnet.cluster.knn")  # the package re-exports a function `knn`


def brute_force(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every inner product in float64, each row sorted: the reference the searches must reproduce."""
    sims = features.astype(np.float64) @ features.astype(np.float64).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), order


def unit(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def assert_same_neighbours(found, reference):
    sims, idx = found
    ref_sims, ref_idx = reference
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)  # best first, as the reference sorts them
    np.testing.assert_array_equal(np.sort(idx, axis=1), np.sort(ref_idx, axis=1))


@pytest.mark.parametrize("with_faiss", [True, False])
def test_every_block_and_the_mix_equal_a_brute_force_search(with_faiss, monkeypatch):
    """Block pairs of 37 rows over 203 (an uneven last block), k up to a whole block: the faiss heaps and
    the torch.topk merges both reproduce a float64 search of each feature set and of the concatenation."""
    if not with_faiss:
        monkeypatch.setattr(knn_module, "faiss", None)
    rng = np.random.default_rng(0)
    blocks = [unit(rng, 203, 12), unit(rng, 203, 7), unit(rng, 203, 20)]
    mix = rng.uniform(0.1, 1.0, size=(203, 3)).astype(np.float32)
    found = knn_module.symmetric_knn(blocks, 40, mix=mix, block_rows=37)
    assert len(found) == 4
    concatenation = np.concatenate([mix[:, [b]] * x for b, x in enumerate(blocks)], axis=1)
    for got, x in zip(found, [*blocks, concatenation], strict=True):
        assert got[0].shape == got[1].shape == (203, 40) and got[1].dtype == np.int64
        assert_same_neighbours(got, brute_force(x, 40))
    for got in found[:3]:  # unit features: each row's best neighbour is itself
        np.testing.assert_array_equal(got[1][:, 0], np.arange(203))
    only = knn_module.symmetric_knn(blocks, 40, mix=mix, block_rows=37, mix_only=[0])  # block 0 serves the mix
    assert len(only) == 3
    for got, want in zip(only, found[1:], strict=True):
        np.testing.assert_array_equal(got[1], want[1])


def test_the_knn_backend_setting_reaches_the_symmetric_search(make_clustered, monkeypatch):
    feats, _ = make_clustered(num_ids=10, per_id=8, dim=16, noise=0.5)
    calls = []
    real = knn_module.symmetric_knn
    monkeypatch.setattr(knn_module, "symmetric_knn", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    assert_same_neighbours(knn_module.knn(feats, 9, backend="symmetric"), brute_force(feats, 9))
    assert calls
    # a search of queries against another base is not symmetric: `symmetric` hands it to the measured one
    sims, idx = knn_module.top_k(feats[:30], feats[30:], 5, backend="symmetric")
    ref = np.argsort(-(feats[30:] @ feats[:30].T), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(np.sort(idx, axis=1), np.sort(ref, axis=1))
    with_faiss = cluster_features_labels(feats, "faiss")
    np.testing.assert_array_equal(cluster_features_labels(feats, "symmetric"), with_faiss)


def cluster_features_labels(feats, backend):
    from dsfnet.cluster import cluster_features
    return cluster_features(feats, ClusterConfig(k1=10, k2=3, eps=0.6, min_samples=4, camera_norm=False,
                                                 knn_backend=backend)).labels


def test_bad_blocks_are_refused_by_name():
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="same N"):
        knn_module.symmetric_knn([unit(rng, 10, 4), unit(rng, 9, 4)], 3)
    with pytest.raises(ValueError, match="mix must have shape"):
        knn_module.symmetric_knn([unit(rng, 10, 4)], 3, mix=np.ones((10, 2)))
    with pytest.raises(ValueError, match="there is no mix"):
        knn_module.symmetric_knn([unit(rng, 10, 4)], 3, mix_only=[0])
    with pytest.raises(ValueError, match=r"k must be in \[1, N=10\]"):
        knn_module.symmetric_knn([unit(rng, 10, 4)], 11)


def ddo_branches(seed: int, learned_weights: bool):
    """DDO's clustering features as the trainer builds them: FINet's integration of a global and two part
    features (uniform weights with FINet off, per-sample ones with it on), then camera normalisation."""
    import torch

    rng = np.random.default_rng(seed)
    camids = np.tile(np.arange(4), 40)
    centres = unit(rng, 20, 24)[np.repeat(np.arange(20), 8)]
    branches = [centres + 0.5 * unit(rng, 160, 24) + 0.3 * rng.standard_normal((4, 24))[camids] for _ in range(3)]
    global_, parts = torch.from_numpy(branches[0]).float(), torch.from_numpy(np.stack(branches[1:], 1)).float()
    head = (lambda normalised: torch.softmax(torch.from_numpy(rng.standard_normal((160, 3))).float(), 1)) \
        if learned_weights else None
    fused, _ = integrate(global_, parts, head)
    parts = F.normalize(parts, dim=2).numpy()
    return camera_normalise(fused.numpy(), camids), camera_normalise(parts, camids), camids


@pytest.mark.parametrize("learned_weights", [False, True])
def test_ddo_neighbours_from_one_symmetric_pass_equal_one_search_per_branch(learned_weights):
    """FINet off: the fused feature is found from the parts' products (`as_concatenation` holds); FINet's
    per-sample weights do not survive the camera mean, so the fused feature is searched on its own — either
    way every list equals the per-branch faiss search, and so do the DDO labels."""
    fused, parts, camids = ddo_branches(0, learned_weights)
    branches = [fused, parts[:, 0], parts[:, 1]]
    assert (as_concatenation(fused, list(branches[1:])) is None) == learned_weights
    faiss_config = ClusterConfig(k1=12, k2=4, eps=0.6, min_samples=3, camera_norm=False, knn_backend="faiss")
    symmetric = ClusterConfig(k1=12, k2=4, eps=0.6, min_samples=3, camera_norm=False, knn_backend="symmetric")
    for got, x in zip(branch_neighbours(branches, symmetric, camids), branches, strict=True):
        assert_same_neighbours(got, brute_force(x, 12))
    ddo = DDOConfig()
    labels = [cluster_fused(fused, parts, config, ddo, 3, 8, camids).pseudo.labels for config in (faiss_config,
                                                                                                   symmetric)]
    np.testing.assert_array_equal(labels[1], labels[0])
    assert len(set(labels[0])) > 5  # a clustering with something in it, not all outliers


def test_a_feature_that_is_not_the_parts_concatenation_is_not_taken_for_one():
    rng = np.random.default_rng(2)
    parts = [unit(rng, 30, 8), unit(rng, 30, 8)]
    assert as_concatenation(unit(rng, 30, 16), parts) is None  # no room for a first block
    other = np.concatenate([unit(rng, 30, 8), unit(rng, 30, 8), parts[1]], axis=1) / np.sqrt(3)
    assert as_concatenation(other, parts) is None  # the middle block is not parts[0]
    blocks, scales = as_concatenation(np.concatenate([unit(rng, 30, 8), *parts], axis=1) / np.sqrt(3), parts)
    np.testing.assert_allclose(scales, np.full((30, 3), 1 / np.sqrt(3)), atol=1e-6)
    assert blocks[1] is parts[0] and blocks[2] is parts[1]
