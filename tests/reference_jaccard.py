"""A literal dense transcription of the published k-reciprocal Jaccard algorithm (the test oracle).

Deliberately loop-for-loop like the reference code: slow, O(N²) memory, obviously faithful.
"""

from __future__ import annotations

import numpy as np


def _k_reciprocal_neigh(initial_rank: np.ndarray, i: int, k1: int) -> np.ndarray:
    forward = initial_rank[i, : k1 + 1]
    backward = initial_rank[forward, : k1 + 1]
    hits = np.where(backward == i)[0]
    return forward[hits]


def dense_jaccard(features: np.ndarray, initial_rank: np.ndarray, k1: int, k2: int) -> np.ndarray:
    x = features.astype(np.float32)
    n = x.shape[0]
    initial_rank = initial_rank[:, :k1]  # the search returns k1 neighbours, self included
    nn_k1 = [_k_reciprocal_neigh(initial_rank, i, k1) for i in range(n)]
    nn_half = [_k_reciprocal_neigh(initial_rank, i, int(np.around(k1 / 2))) for i in range(n)]
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        k_reciprocal = nn_k1[i]
        expansion = k_reciprocal
        for candidate in k_reciprocal:
            cand = nn_half[candidate]
            if len(np.intersect1d(cand, k_reciprocal)) > 2 / 3 * len(cand):
                expansion = np.append(expansion, cand)
        expansion = np.unique(expansion)
        dist = 2 - 2 * (x[i : i + 1] @ x[expansion].T)
        weights = np.exp(-dist - (-dist).max())
        v[i, expansion] = (weights / weights.sum()).ravel()
    if k2 != 1:
        v = np.stack([v[initial_rank[i, :k2], :].mean(axis=0) for i in range(n)])
    inv_index = [np.where(v[:, i] != 0)[0] for i in range(n)]
    jaccard = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        temp_min = np.zeros(n, dtype=np.float32)
        nonzero = np.where(v[i, :] != 0)[0]
        for j in nonzero:
            temp_min[inv_index[j]] += np.minimum(v[i, j], v[inv_index[j], j])
        jaccard[i] = 1 - temp_min / (2 - temp_min)
    jaccard[jaccard < 0] = 0.0
    return jaccard
