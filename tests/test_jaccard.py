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
