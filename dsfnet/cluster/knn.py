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


def knn_search(features: np.ndarray, k: int, backend: str = "auto", batch_size: int = 4096) -> np.ndarray:
    """Indices (N, k) of each row's k most similar rows (itself included), most similar first."""
    return knn(features, k, backend, batch_size)[1]
