"""Retrieval metrics under the Market-1501 protocol: non-interpolated mAP and CMC.

The protocol of torchreid and cluster-contrast: for each query, gallery items with the query's identity
*and* camera are removed; queries left with no true match are skipped; AP is the mean precision at each
true match; CMC counts a query from its first true match on. Distractors (pid 0) are ordinary negatives.
Ties in distance are ranked by gallery index, so results are deterministic.
"""

from __future__ import annotations

import numpy as np

HIGH_BIT = np.uint32(0x80000000)


def cosine_distance(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """1 - cos for L2-normalised features (same ranking as squared Euclidean)."""
    return 1.0 - query.astype(np.float32) @ gallery.astype(np.float32).T


def stable_order(distances: np.ndarray) -> np.ndarray:
    """Row-wise argsort, ties broken by column index, as int64.

    For float32 rows it sorts one uint64 key per entry (order-preserving float bits, then the column
    index) with a plain value sort, which is faster than a stable argsort and gives the same order.
    """
    if distances.dtype == np.float64 and np.array_equal(distances.astype(np.float32), distances):
        distances = distances.astype(np.float32)
    if distances.dtype != np.float32:
        return np.argsort(distances, axis=1, kind="stable")
    bits = (distances + np.float32(0.0)).view(np.uint32)  # + 0.0 turns -0.0 into +0.0: equal values, equal keys
    keys = np.where(bits & HIGH_BIT, ~bits, bits | HIGH_BIT).astype(np.uint64)
    keys <<= np.uint64(32)
    keys |= np.arange(distances.shape[1], dtype=np.uint64)
    keys.sort(axis=1)
    return (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)


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


def evaluate_ranks(distmat, q_pids, g_pids, q_camids, g_camids,
                   chunk_elements: int = 8_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Per-query AP and first-match rank (0-based; -1 for a query with no valid true match).

    Vectorised over chunks of queries, so memory stays O(chunk · gallery) whatever the query count.
    """
    distmat, q_pids, g_pids, q_camids, g_camids = _check(distmat, q_pids, g_pids, q_camids, g_camids)
    num_q, num_g = distmat.shape
    rows_per_chunk = max(1, chunk_elements // num_g)
    ap = np.zeros(num_q)
    first = np.full(num_q, -1, dtype=np.int64)
    for start in range(0, num_q, rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        order = stable_order(distmat[rows])
        same_id = g_pids[order] == q_pids[rows, None]
        valid = ~(same_id & (g_camids[order] == q_camids[rows, None]))
        hits = same_id & valid
        valid_rank = np.cumsum(valid, axis=1)  # 1-based rank among the kept gallery items
        hit_count = np.cumsum(hits, axis=1)
        num_hits = hit_count[:, -1]
        has_match = num_hits > 0
        precision = np.where(hits, hit_count / np.maximum(valid_rank, 1), 0.0).sum(axis=1)
        ap[rows] = np.where(has_match, precision / np.maximum(num_hits, 1), 0.0)
        first_pos = np.argmax(hits, axis=1)
        first_rank = valid_rank[np.arange(len(first_pos)), first_pos] - 1
        first[rows] = np.where(has_match, first_rank, -1)
    return ap, first


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
    valid = first >= 0
    if not valid.any():
        raise ValueError("no query has a true match in the gallery from another camera")
    max_rank = min(max_rank, np.asarray(distmat).shape[1])
    cmc = np.array([(first[valid] < r).mean() for r in range(1, max_rank + 1)])
    return float(ap[valid].mean()), cmc


def ranked_gallery(distances: np.ndarray, q_pid: int, q_camid: int, g_pids: np.ndarray, g_camids: np.ndarray,
                   top: int) -> np.ndarray:
    """Gallery indices of one query's top ranks, without the same-identity same-camera items (protocol)."""
    order = stable_order(np.asarray(distances, dtype=np.float32)[None, :])[0]
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
