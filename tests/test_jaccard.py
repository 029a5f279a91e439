import importlib

import numpy as np
import pytest
import scipy.sparse as sp

from dsfnet.cluster import ClusterConfig, cluster_features, dbscan_labels, jaccard_distance, knn_search
from tests.reference_jaccard import dense_jaccard


@pytest.mark.parametrize(("k1", "k2"), [(30, 6), (20, 1), (5, 3)])
def test_sparse_jaccard_equals_dense_reference(make_clustered, k1, k2):
    feats, _ = make_clustered(num_ids=25, per_id=12, dim=64, noise=0.9, seed=k1)
    sparse = jaccard_distance(feats, k1=k1, k2=k2)
    assert sp.issparse(sparse)
    dense = sparse.toarray()
    dense[sparse.toarray() == 0] = 1.0  # absent pairs mean 1.0 ...
    rows, cols = sparse.nonzero()
    explicit = sp.coo_matrix(sparse)
    dense[explicit.row, explicit.col] = explicit.data  # ... stored entries (explicit zeros too) are exact
    oracle = dense_jaccard(feats, knn_search(feats, k1), k1, k2)
    np.testing.assert_allclose(dense, oracle, atol=1e-4)
    assert np.allclose(np.diag(dense), 0.0, atol=1e-6)


def test_dbscan_on_sparse_matches_dense(make_clustered):
    feats, truth = make_clustered(num_ids=20, per_id=10, dim=64, noise=1.0, seed=3)
    sparse = jaccard_distance(feats, k1=20, k2=6)
    oracle = dense_jaccard(feats, knn_search(feats, 20), 20, 6)
    ours = dbscan_labels(sparse, eps=0.6, min_samples=4)
    ref = dbscan_labels(oracle, eps=0.6, min_samples=4)
    np.testing.assert_array_equal(ours, ref)
    assert ours.max() + 1 >= 15  # well-separated identities mostly become their own cluster


def test_knn_backends_agree(make_clustered):
    feats, _ = make_clustered(num_ids=10, per_id=8, dim=32, noise=0.5)
    a = knn_search(feats, 6, backend="faiss")
    b = knn_search(feats, 6, backend="torch", batch_size=7)
    np.testing.assert_array_equal(a[:, 0], np.arange(len(feats)))
    sims = feats @ feats.T
    np.testing.assert_allclose(np.take_along_axis(sims, a, 1), np.take_along_axis(sims, b, 1), atol=1e-5)


def test_auto_searches_with_torch_on_the_cpu_and_the_labels_equal_faiss(make_clustered, monkeypatch):
    """Without a working faiss GPU index, `auto` is torch's matrix product (4.5x faster than faiss's CPU index on
    2 cores, bench/bench_knn.py); `cluster.knn_backend: faiss` keeps faiss, with the same pseudo-labels."""
    knn_module = importlib.import_module("dsfnet.cluster.knn")
    feats, _ = make_clustered(num_ids=12, per_id=10, dim=24, noise=0.4, seed=5)
    with_faiss = cluster_features(feats, ClusterConfig(k1=10, k2=3, eps=0.6, min_samples=4, knn_backend="faiss"))

    def no_faiss_index(*_args, **_kwargs):
        raise AssertionError("auto used faiss's CPU index")

    monkeypatch.setattr(knn_module.faiss, "IndexFlatIP", no_faiss_index)
    monkeypatch.setattr(knn_module, "SIMILARITY_BLOCK_FLOATS", 5 * len(feats))  # 5 queries a block: many blocks
    with_auto = cluster_features(feats, ClusterConfig(k1=10, k2=3, eps=0.6, min_samples=4))
    np.testing.assert_array_equal(with_auto.labels, with_faiss.labels)
    assert with_auto.num_clusters >= 10
    with pytest.raises(ValueError, match="cluster.knn_backend must be one of"):
        cluster_features(feats, ClusterConfig(k1=10, knn_backend="annoy"))


def test_exact_at_two_thousand_samples_with_identical_dbscan_labels(make_clustered):
    feats, _ = make_clustered(num_ids=120, per_id=17, dim=128, noise=1.1, seed=11)
    feats = feats[:2000]
    sparse = jaccard_distance(feats, k1=30, k2=6)
    oracle = dense_jaccard(feats, knn_search(feats, 30), 30, 6)
    ours = np.ones_like(oracle)
    explicit = sparse.tocoo()
    ours[explicit.row, explicit.col] = explicit.data
    assert np.abs(ours - oracle).max() <= 1e-4
    assert explicit.nnz == int((oracle < 1).sum())  # exactly the pairs below 1 are stored
    np.testing.assert_array_equal(dbscan_labels(sparse, 0.6, 4), dbscan_labels(oracle, 0.6, 4))
    truncated = cluster_features(feats, ClusterConfig(k1=30, k2=6, eps=0.6, min_samples=4)).labels
    np.testing.assert_array_equal(truncated, dbscan_labels(oracle, 0.6, 4))  # pruned to ≤ eps: same labels


@pytest.mark.parametrize(
    ("features", "kwargs", "message"),
    [
        (np.full((10, 4), np.nan, dtype=np.float32), {}, "NaN or infinite"),
        (np.ones((10, 4), dtype=np.float32), {}, "L2-normalised"),
        (np.eye(4, dtype=np.float32), {"k1": 5, "k2": 2}, r"k1 must be in \[1, N=4\]"),
        (np.eye(8, dtype=np.float32), {"k1": 3, "k2": 4}, r"k2 must be in \[1, k1=3\]"),
    ],
)
def test_bad_arguments_are_named(features, kwargs, message):
    with pytest.raises(ValueError, match=message):
        jaccard_distance(features, **kwargs)


@pytest.mark.parametrize("eps", [0.0, 1.5, -0.1])
def test_eps_outside_unit_interval_is_rejected(make_clustered, eps):
    feats, _ = make_clustered(num_ids=3, per_id=5, dim=8, noise=0.3)
    with pytest.raises(ValueError, match="eps must be in"):
        cluster_features(feats, ClusterConfig(k1=5, k2=2, eps=eps))


def test_identical_features_form_one_cluster():
    feats = np.tile(np.array([[0.6, 0.8]], dtype=np.float32), (40, 1))
    pseudo = cluster_features(feats, ClusterConfig(k1=10, k2=3, eps=0.6, min_samples=4))
    assert pseudo.num_clusters == 1 and pseudo.num_outliers == 0
    assert set(pseudo.timings) == {"knn_s", "jaccard_s", "dbscan_s"}


def brute_force_penalised_knn(features, k, camids, penalty):
    sims = features @ features.T - penalty * (camids[:, None] == camids[None, :])
    np.fill_diagonal(sims, 1.0)  # unit-norm rows: the sample itself, unpenalised, stays first
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), order


@pytest.mark.parametrize("backend", ["faiss", "torch", "auto"])
def test_camera_penalised_knn_equals_brute_force(make_clustered, backend):

    knn_module = importlib.import_module("dsfnet.cluster.knn")  # the package's `knn` name is the function

    feats, _ = make_clustered(num_ids=6, per_id=12, dim=16, noise=0.5, seed=3)
    camids = np.random.default_rng(0).integers(0, 3, len(feats))
    sims, idx = knn_module.camera_penalised_knn(feats, 9, camids, 0.2, backend=backend)
    ref_sims, ref_idx = brute_force_penalised_knn(feats, 9, camids, 0.2)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    assert (idx[:, 0] == np.arange(len(feats))).all()
    assert (np.sort(idx, axis=1) == np.sort(ref_idx, axis=1)).mean() > 0.99  # ties may swap places
    # no penalty: exactly the plain kNN (the default pipeline's numbers do not move)
    plain = knn_module.knn(feats, 9)
    penalised0 = knn_module.camera_penalised_knn(feats, 9, camids, 0.0)
    assert all(np.array_equal(a, b) for a, b in zip(plain, penalised0, strict=True))


def two_identities_two_cameras():
    """Ten images of each identity in each camera; the camera's look is stronger than the identity's."""
    rng = np.random.default_rng(1)
    identity, camera = rng.normal(size=(2, 32)), 1.5 * rng.normal(size=(2, 32))
    pid, camids = np.repeat([0, 1, 0, 1], 10), np.repeat([0, 0, 1, 1], 10)
    x = identity[pid] + camera[camids] + 0.3 * rng.normal(size=(40, 32))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), pid, camids


def test_camera_penalty_lets_clusters_cross_cameras():
    """Two identities seen by two cameras whose look dominates: without the penalty DBSCAN groups by camera,
    with it by identity."""
    x, pid, camids = two_identities_two_cameras()
    config = ClusterConfig(k1=10, k2=2, eps=0.6, min_samples=4)
    from dsfnet.label_stats import label_quality, multi_camera_share

    plain = cluster_features(x, config).labels
    penalised = cluster_features(x, ClusterConfig(k1=10, k2=2, eps=0.6, min_samples=4, camera_penalty=1.0),
                                 camids).labels
    assert multi_camera_share(plain, camids) == 0.0
    assert multi_camera_share(penalised, camids) == 1.0
    assert label_quality(penalised, pid)["purity"] == 1.0  # one cluster per identity, both cameras in it
    assert penalised.max() + 1 == 2
    with pytest.raises(ValueError, match="cluster.camera_penalty needs the camera"):
        cluster_features(x, ClusterConfig(camera_penalty=0.5, k1=10))
    with pytest.raises(ValueError, match=r"cluster.camera_penalty must be in \[0, 2\)"):
        cluster_features(x, ClusterConfig(camera_penalty=-0.1, k1=10), camids)


def test_trainer_pseudo_labels_pass_the_cameras_to_the_penalised_clustering():
    from dsfnet.config import DSFNetConfig
    from dsfnet.trainer import pseudo_labels

    x, pid, camids = two_identities_two_cameras()
    config = ClusterConfig(k1=10, k2=2, eps=0.6, min_samples=4, camera_norm=False, camera_penalty=1.0)
    labels = pseudo_labels({"global": x}, config, DSFNetConfig.baseline(), 0, 1, camids).labels
    assert labels.max() + 1 == 2 and (labels[pid == 0] == labels[0]).all()


def test_broken_faiss_gpu_falls_back_to_torch_with_one_warning(make_clustered, monkeypatch, caplog):
    """A faiss build that reports a GPU but cannot search on it (here: the CPU build's own error) costs a
    warning, not the run: the self-test runs in a child process, and the torch search gives the answer."""
    knn_module = importlib.import_module("dsfnet.cluster.knn")

    feats, _ = make_clustered(num_ids=10, per_id=8, dim=32, noise=0.5)
    expected = knn_search(feats, 6, backend="torch")
    monkeypatch.setattr(knn_module, "_faiss_gpu_available", lambda: True)
    knn_module._faiss_gpu_self_test.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="dsfnet.cluster.knn"):
            first = knn_search(feats, 6, backend="faiss")
            second = knn_search(feats, 6, backend="faiss")
    finally:
        knn_module._faiss_gpu_self_test.cache_clear()
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(second, expected)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings  # checked once per process
    assert "faiss GPU search unusable (its self-test failed:" in warnings[0]
    assert "kNN runs on torch on the CPU instead" in warnings[0]


def test_a_faiss_gpu_failure_at_search_time_switches_to_torch_for_good(make_clustered, monkeypatch, caplog):
    knn_module = importlib.import_module("dsfnet.cluster.knn")

    feats, _ = make_clustered(num_ids=10, per_id=8, dim=32, noise=0.5)
    expected = knn_search(feats, 6, backend="torch")
    calls = []

    def cublas_failure(index):
        calls.append(index)
        raise RuntimeError("Error in virtual void faiss::gpu::StandardGpuResourcesImpl::initializeForDevice\n"
                           "CUBLAS_STATUS_NOT_INITIALIZED")

    monkeypatch.setattr(knn_module, "faiss_gpu_usable", lambda: not knn_module._gpu_failed_at_run_time)
    monkeypatch.setattr(knn_module, "_gpu_failed_at_run_time", [])
    monkeypatch.setattr(knn_module.faiss, "index_cpu_to_all_gpus", cublas_failure)
    with caplog.at_level("WARNING", logger="dsfnet.cluster.knn"):
        np.testing.assert_array_equal(knn_search(feats, 6, backend="faiss"), expected)
        np.testing.assert_array_equal(knn_search(feats, 6, backend="faiss"), expected)
    assert len(calls) == 1  # the second search did not try the GPU again
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["faiss GPU search unusable (RuntimeError: CUBLAS_STATUS_NOT_INITIALIZED); "
                        "kNN runs on torch on the CPU instead"]
