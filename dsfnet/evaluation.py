"""Retrieval metrics under the Market-1501 protocol: non-interpolated mAP and CMC.

The protocol of torchreid and cluster-contrast: for each query, gallery items with the query's identity
*and* camera are removed; queries left with no true match are skipped; AP is the mean precision at each
true match; CMC counts a query from its first true match on. Distractors (pid 0) are ordinary negatives.
Ties in distance are ranked by gallery index, so results are deterministic.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


def cosine_distance(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """1 - cos for L2-normalised features (same ranking as squared Euclidean)."""
    return 1.0 - query.astype(np.float32) @ gallery.astype(np.float32).T


def _check(distmat, q_pids, g_pids, q_camids, g_camids):
    distmat = np.asarray(distmat)
    arrays = [np.asarray(a) for a in (q_pids, g_pids, q_camids, g_camids)]
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (queries × gallery), got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(f"empty {'query' if num_q == 0 else 'gallery'}: distmat has shape {distmat.shape}")
    for name, array, expected in zip(("q_pids", "g_pids", "q_camids", "g_camids"), arrays,
                                     (num_q, num_g, num_q, num_g), strict=True):
        if array.shape != (expected,):
            raise ValueError(f"{name} has shape {array.shape} but distmat {distmat.shape} needs ({expected},)")
    if not np.isfinite(distmat).all():
        raise ValueError("distmat contains NaN or infinite distances")
    return distmat, *arrays


@njit(parallel=True, cache=True)
def _ranks(distmat, q_pids, g_pids, q_camids, g_camids):
    """Per query: AP and 0-based rank of the first true match (-1 without one), never sorting a whole row.

    Only the true matches are sorted (by distance, then gallery index); each negative is binary-searched
    among them to count how many true matches it outranks. O(G log P) per query, no (Q, G) temporaries.
    """
    num_q, num_g = distmat.shape
    ap = np.zeros(num_q)
    first = np.full(num_q, -1, np.int64)
    for q in prange(num_q):
        num_pos = 0
        for g in range(num_g):
            if g_pids[g] == q_pids[q] and g_camids[g] != q_camids[q]:
                num_pos += 1
        if num_pos == 0:
            continue
        positions = np.empty(num_pos, np.int64)
        k = 0
        for g in range(num_g):
            if g_pids[g] == q_pids[q] and g_camids[g] != q_camids[q]:
                positions[k] = g
                k += 1
        dist = np.empty(num_pos, np.float64)
        for a in range(num_pos):
            dist[a] = distmat[q, positions[a]]
        order = np.argsort(dist, kind="mergesort")  # stable: equal distances keep gallery order
        pos_index = positions[order]
        pos_dist = dist[order]
        ahead = np.zeros(num_pos + 1, np.int64)  # ahead[j]: negatives ranked between true matches j-1 and j
        for g in range(num_g):
            if g_pids[g] == q_pids[q]:  # true matches, and same-camera ones the protocol ignores
                continue
            d = np.float64(distmat[q, g])
            lo, hi = 0, num_pos
            while lo < hi:
                mid = (lo + hi) // 2
                if pos_dist[mid] < d or (pos_dist[mid] == d and pos_index[mid] < g):
                    lo = mid + 1
                else:
                    hi = mid
            ahead[lo] += 1
        negatives = 0
        precision = 0.0
        for j in range(num_pos):
            negatives += ahead[j]
            rank = j + negatives + 1
            precision += (j + 1) / rank
            if j == 0:
                first[q] = rank - 1
        ap[q] = precision / num_pos
    return ap, first


def evaluate_ranks(distmat, q_pids, g_pids, q_camids, g_camids) -> tuple[np.ndarray, np.ndarray]:
    """Per-query AP and first-match rank (0-based; -1 for a query with no valid true match)."""
    distmat, q_pids, g_pids, q_camids, g_camids = _check(distmat, q_pids, g_pids, q_camids, g_camids)
    if distmat.dtype not in (np.float32, np.float64):
        distmat = distmat.astype(np.float64)
    return _ranks(np.ascontiguousarray(distmat), *(a.astype(np.int64) for a in (q_pids, g_pids, q_camids, g_camids)))


def compute_map_cmc(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
) -> tuple[float, np.ndarray]:
    """(mAP in [0, 1], CMC curve of length min(max_rank, gallery size)) over the queries with a match."""
    ap, first = evaluate_ranks(distmat, q_pids, g_pids, q_camids, g_camids)
    return summarise_ranks(ap, first, min(max_rank, np.asarray(distmat).shape[1]))


def summarise_ranks(ap: np.ndarray, first: np.ndarray, max_rank: int) -> tuple[float, np.ndarray]:
    """(mAP, CMC) from `evaluate_ranks`' per-query results, over the queries with a true match."""
    valid = first >= 0
    if not valid.any():
        raise ValueError("no query has a true match in the gallery from another camera")
    cmc = np.array([(first[valid] < r).mean() for r in range(1, max_rank + 1)])
    return float(ap[valid].mean()), cmc


def ranked_gallery(distances: np.ndarray, q_pid: int, q_camid: int, g_pids: np.ndarray, g_camids: np.ndarray,
                   top: int) -> np.ndarray:
    """Gallery indices of one query's top ranks, without the same-identity same-camera items (protocol)."""
    order = np.argsort(distances, kind="stable")
    keep = ~((g_pids[order] == q_pid) & (g_camids[order] == q_camid))
    return order[keep][:top]


def rerank_distance(query: np.ndarray, gallery: np.ndarray, k1: int = 20, k2: int = 6,
                    lambda_value: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al. 2017) of query × gallery distances.

    The Jaccard part is the pseudo-label engine's exact k-reciprocal Jaccard distance over query ∪ gallery;
    the final distance mixes it with the original squared Euclidean distance (2 − 2 cos):
    d* = (1 − λ) · d_J + λ · d. Unlike the reference re_ranking, the original distance is not rescaled
    by its column maxima before weighting (the same choice the pseudo-label engine makes).
    """
    from dsfnet.cluster import jaccard_distance  # evaluation stays importable without numba's compile cost

    num_q = len(query)
    both = np.concatenate([query, gallery]).astype(np.float32)
    block = jaccard_distance(both, k1=k1, k2=k2)[:num_q][:, num_q:].tocoo()  # explicit zeros survive slicing
    jaccard = np.ones((num_q, len(gallery)), dtype=np.float32)  # absent pairs mean 1
    jaccard[block.row, block.col] = block.data
    original = 2.0 - 2.0 * (query.astype(np.float32) @ gallery.astype(np.float32).T)
    return ((1.0 - lambda_value) * jaccard + lambda_value * original).astype(np.float32)
