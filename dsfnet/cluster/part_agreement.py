"""FINet's agreement weights, PPLR's reading: does a part see the same neighbours as the whole body?

A part feature of an occluded or misaligned stripe ranks the train set differently from the global feature;
its pseudo-label (the global cluster) is then a poor target for that part, so its loss should count less.
"""

from __future__ import annotations

import numpy as np

from dsfnet.cluster.knn import knn


def neighbours_without_self(features: np.ndarray, k: int, backend: str = "auto") -> np.ndarray:
    """(N, k) indices of each row's k most similar other rows, most similar first (`backend`: as `knn`'s)."""
    n = len(features)
    found = knn(features, k + 1, backend=backend)[1]
    others = found != np.arange(n)[:, None]
    others[others.all(axis=1), -1] = False  # a row whose duplicates pushed itself out: drop its (k+1)-th
    return found[others].reshape(n, k)


def part_agreement(global_: np.ndarray, parts: np.ndarray, k: int = 20, backend: str = "auto") -> np.ndarray:
    """(N, P): Jaccard overlap |A ∩ B| / |A ∪ B| of each sample's k nearest neighbours by the global
    feature (A) and by part p (B); 1 when they agree, 0 when they share none. `backend`: the kNN's
    (`cluster.knn_backend`), so one setting picks every search of the clustering step."""
    n, num_parts = parts.shape[:2]
    k = min(k, n - 1)
    if k < 1:
        return np.ones((n, num_parts), dtype=np.float32)
    by_global = neighbours_without_self(global_, k, backend)
    agreement = np.empty((n, num_parts), dtype=np.float32)
    for p in range(num_parts):
        by_part = neighbours_without_self(np.ascontiguousarray(parts[:, p]), k, backend)
        common = (by_global[:, :, None] == by_part[:, None, :]).sum(axis=(1, 2))
        agreement[:, p] = common / (2 * k - common)
    return agreement
