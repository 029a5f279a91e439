import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from dsfnet.evaluation import compute_map_cmc


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


def test_no_valid_query_is_an_error():
    with pytest.raises(ValueError, match="no query has a true match"):
        compute_map_cmc(np.zeros((1, 1)), np.array([1]), np.array([1]), np.array([0]), np.array([0]))
