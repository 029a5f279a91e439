import numpy as np
import pytest
import scipy.sparse as sp

from dsfnet.cluster import dbscan_labels, jaccard_distance, knn_search
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
