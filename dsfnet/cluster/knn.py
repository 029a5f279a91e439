"""Exact k-nearest-neighbour search by inner product on L2-normalised features.

faiss (GPU build when present, else CPU) does the search; a batched torch fallback keeps the
library usable where faiss is missing. Memory stays O(N·k) beyond the features themselves.
"""

from __future__ import annotations

import numpy as np
import torch

try:  # faiss is a hard dependency of the project, but the library must not die without it
    import faiss
except ImportError:  # pragma: no cover - exercised only on machines without faiss
    faiss = None


def _faiss_gpu_available() -> bool:
    return faiss is not None and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def knn(features: np.ndarray, k: int, backend: str = "auto", batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), both (N, k): each row's k most similar rows, itself included, best first."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N={n}], got {k}")
    if backend == "auto":
        backend = "faiss" if faiss is not None else "torch"
    if backend == "faiss":
        if faiss is None:
            raise RuntimeError("backend 'faiss' requested but faiss is not installed")
        index = faiss.IndexFlatIP(features.shape[1])
        if _faiss_gpu_available():
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(features)
        sims, neighbours = index.search(features, k)
        return sims, neighbours.astype(np.int64)
    if backend == "torch":
        x = torch.from_numpy(features)
        sims = np.empty((n, k), dtype=np.float32)
        neighbours = np.empty((n, k), dtype=np.int64)
        for start in range(0, n, batch_size):  # one (batch, N) block at a time: memory O(batch·N)
            top = torch.topk(x[start : start + batch_size] @ x.T, k, dim=1)
            sims[start : start + batch_size] = top.values.numpy()
            neighbours[start : start + batch_size] = top.indices.numpy()
        return sims, neighbours
    raise ValueError(f"unknown kNN backend {backend!r}; use 'auto', 'faiss' or 'torch'")


def camera_penalised_knn(features: np.ndarray, k: int, camids: np.ndarray,
                         penalty: float) -> tuple[np.ndarray, np.ndarray]:
    """`knn` where a neighbour from the sample's own camera counts `penalty` less similar (the sample itself
    keeps its similarity and stays first); the similarities returned are the penalised ones.

    Exact: each camera's samples are searched against their own camera and against all others separately,
    and the two lists merged. Why: with few cameras, same-camera look-alikes (background, light, viewpoint)
    crowd every k-reciprocal set and clusters never cross cameras (docs/method.md).
    """
    features = np.ascontiguousarray(features, dtype=np.float32)
    camids = np.asarray(camids)
    n = len(features)
    if len(camids) != n:
        raise ValueError(f"camids ({len(camids)}) must match features ({n})")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N={n}], got {k}")
    if penalty == 0:
        return knn(features, k)
    sims = np.empty((n, k), dtype=np.float32)
    neighbours = np.empty((n, k), dtype=np.int64)
    for camid in np.unique(camids):
        own, other = np.flatnonzero(camids == camid), np.flatnonzero(camids != camid)
        candidates_s, candidates_i = [], []
        for pool, shift in ((own, penalty), (other, 0.0)):
            if len(pool) == 0:
                continue
            index = faiss.IndexFlatIP(features.shape[1]) if faiss is not None else None
            found_s, found_i = _search(index, features[pool], features[own], min(k, len(pool)))
            candidates_s.append(found_s - shift)
            candidates_i.append(pool[found_i])
        s, i = np.concatenate(candidates_s, axis=1), np.concatenate(candidates_i, axis=1)
        s[i == own[:, None]] += penalty  # the sample itself is not penalised
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        sims[own], neighbours[own] = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
    return sims, neighbours


def _search(index, base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k inner products of `queries` in `base` (faiss index when given, else torch)."""
    if index is not None:
        index.add(np.ascontiguousarray(base))
        sims, found = index.search(np.ascontiguousarray(queries), k)
        return sims, found.astype(np.int64)
    top = torch.topk(torch.from_numpy(queries) @ torch.from_numpy(base).T, k, dim=1)
    return top.values.numpy(), top.indices.numpy()


def knn_search(features: np.ndarray, k: int, backend: str = "auto", batch_size: int = 4096) -> np.ndarray:
    """Indices (N, k) of each row's k most similar rows (itself included), most similar first."""
    return knn(features, k, backend, batch_size)[1]
