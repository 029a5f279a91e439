import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from dsfnet.evaluation import compute_map_cmc, evaluate_ranks, ranked_gallery, rerank_distance


def reference_map_cmc(distmat, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Independent reference: sklearn's (non-interpolated) AP on the valid gallery of each query."""
    aps, firsts = [], []
    for q in range(len(q_pids)):
        valid = ~((g_pids == q_pids[q]) & (g_cams == q_cams[q]))
        truth = (g_pids[valid] == q_pids[q]).astype(int)
        if truth.sum() == 0:
            continue
        scores = -distmat[q, valid]
        aps.append(average_precision_score(truth, scores))
        order = np.argsort(distmat[q, valid], kind="stable")
        firsts.append(int(np.argmax(truth[order])))
    cmc = np.array([np.mean([f < r for f in firsts]) for r in range(1, max_rank + 1)])
    return float(np.mean(aps)), cmc


def test_hand_computed_example():
    # one query (pid 1, cam 0); gallery ranked: [pid 2], [pid 1 same cam -> ignored], [pid 1 cam 1], [pid 1 cam 2]
    distmat = np.array([[0.1, 0.2, 0.3, 0.4]])
    mean_ap, cmc = compute_map_cmc(distmat, np.array([1]), np.array([2, 1, 1, 1]), np.array([0]),
                                   np.array([0, 0, 1, 2]), max_rank=3)
    assert mean_ap == pytest.approx((1 / 2 + 2 / 3) / 2)  # hits at ranks 2 and 3 of the valid list
    np.testing.assert_allclose(cmc, [0.0, 1.0, 1.0])


def test_matches_sklearn_reference_on_random_data():
    rng = np.random.default_rng(0)
    q_pids, g_pids = rng.integers(0, 15, 40), rng.integers(0, 15, 300)
    q_cams, g_cams = rng.integers(0, 4, 40), rng.integers(0, 4, 300)
    distmat = rng.random((40, 300)) + 0.5 * (q_pids[:, None] != g_pids[None, :])
    ours_map, ours_cmc = compute_map_cmc(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    ref_map, ref_cmc = reference_map_cmc(distmat, q_pids, g_pids, q_cams, g_cams, 20)
    assert ours_map == pytest.approx(ref_map, abs=1e-9)
    np.testing.assert_allclose(ours_cmc, ref_cmc)


def literal_map_cmc(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """The per-query loop of torchreid's eval_market1501, with a stable sort so ties rank by gallery index."""
    num_q, num_g = distmat.shape
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap = [], []
    for q in range(num_q):
        order = indices[q]
        remove = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
        raw = matches[q][~remove]
        if not np.any(raw):
            continue
        cmc = raw.cumsum()
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        tmp = raw.cumsum() / (np.arange(len(raw)) + 1.0)
        all_ap.append((tmp * raw).sum() / raw.sum())
    return float(np.mean(all_ap)), np.asarray(all_cmc).astype(np.float64).sum(0) / len(all_cmc)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vectorised_equals_literal_loop_with_ties_and_queries_without_match(seed, dtype):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, 12, 60), rng.integers(0, 12, 400)
    q_cams, g_cams = rng.integers(0, 3, 60), rng.integers(0, 3, 400)
    q_pids[:3] = 99  # three queries whose identity is absent from the gallery: skipped
    distmat = rng.integers(0, 20, (60, 400)).astype(dtype)  # heavy ties
    distmat[5:] += (rng.random((55, 400)) * (seed > 0)).astype(dtype)  # and continuous values
    ours = compute_map_cmc(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    ref = literal_map_cmc(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    assert ours[0] == pytest.approx(ref[0], abs=1e-6)
    np.testing.assert_allclose(ours[1], ref[1], atol=1e-6)


def test_per_query_ranks_match_the_literal_loop():
    rng = np.random.default_rng(5)
    q_pids, g_pids = rng.integers(0, 30, 101), rng.integers(0, 30, 333)
    q_cams, g_cams = rng.integers(0, 4, 101), rng.integers(0, 4, 333)
    distmat = rng.integers(0, 50, (101, 333)).astype(np.float32)
    ap, first = evaluate_ranks(distmat, q_pids, g_pids, q_cams, g_cams)
    for q in range(101):
        order = np.argsort(distmat[q], kind="stable")
        keep = ~((g_pids[order] == q_pids[q]) & (g_cams[order] == q_cams[q]))
        hits = np.flatnonzero(g_pids[order][keep] == q_pids[q])
        if hits.size == 0:
            assert first[q] == -1
            continue
        assert first[q] == hits[0]
        assert ap[q] == pytest.approx(np.mean(np.arange(1, hits.size + 1) / (hits + 1)), abs=1e-12)


@pytest.mark.parametrize(
    ("distmat", "q", "g", "message"),
    [
        (np.zeros((2, 3)), 3, 3, r"q_pids has shape \(3,\) but distmat \(2, 3\)"),
        (np.zeros((0, 3)), 0, 3, "empty query"),
        (np.zeros((2, 0)), 2, 0, "empty gallery"),
        (np.full((2, 3), np.nan), 2, 3, "NaN"),
    ],
)
def test_bad_input_is_named(distmat, q, g, message):
    with pytest.raises(ValueError, match=message):
        compute_map_cmc(distmat, np.zeros(q, int), np.zeros(g, int), np.zeros(q, int), np.ones(g, int))


def test_no_valid_query_is_an_error():
    with pytest.raises(ValueError, match="no query has a true match"):
        compute_map_cmc(np.zeros((1, 1)), np.array([1]), np.array([1]), np.array([0]), np.array([0]))


def test_ranked_gallery_drops_same_camera_same_identity():
    g_pids, g_cams = np.array([1, 1, 2, 1]), np.array([0, 1, 0, 2])
    ranked = ranked_gallery(np.array([0.1, 0.2, 0.3, 0.4]), 1, 0, g_pids, g_cams, top=2)
    np.testing.assert_array_equal(ranked, [1, 2])


def test_rerank_helps_on_clustered_features_and_equals_its_definition(make_clustered):
    from dsfnet.cluster import jaccard_distance

    feats, labels = make_clustered(num_ids=20, per_id=8, dim=32, noise=1.3, seed=4)
    cams = np.arange(len(labels)) % 4
    q_idx = np.flatnonzero(np.arange(len(labels)) % 8 == 0)
    g_idx = np.setdiff1d(np.arange(len(labels)), q_idx)
    q, g = feats[q_idx], feats[g_idx]
    reranked = rerank_distance(q, g, k1=10, k2=3, lambda_value=0.3)
    dense = np.ones((len(feats), len(feats)))
    coo = jaccard_distance(np.concatenate([q, g]), k1=10, k2=3).tocoo()
    dense[coo.row, coo.col] = coo.data
    expected = 0.7 * dense[: len(q), len(q):] + 0.3 * (2 - 2 * q @ g.T)
    np.testing.assert_allclose(reranked, expected, atol=1e-5)
    args = (labels[q_idx], labels[g_idx], cams[q_idx], cams[g_idx])
    plain_map, _ = compute_map_cmc(1 - q @ g.T, *args)
    rerank_map, _ = compute_map_cmc(reranked, *args)
    assert rerank_map > plain_map
