"""Exact k-nearest-neighbour search by inner product on L2-normalised features.

`auto` uses faiss's GPU index when its GPU build works, torch's batched matrix product + top-k on a GPU
without it, and on the CPU the backend measured faster on this machine (`knn_choice`: `python -m
dsfnet.warmup` times both once; torch until then). Which CPU search wins depends on the CPU: torch's (MKL)
found the same neighbours as faiss's IndexFlatIP 4.5x sooner on one 2-core machine and 1.5x later on an AMD
EPYC (bench/bench_knn.py). faiss-gpu wheels are known to die on CUBLAS assertions (SpCL #31, #43), so the GPU
index is self-tested in a child process first. Memory stays O(batch·N) beyond the features themselves.
"""

from __future__ import annotations

import functools
import logging
import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import torch

try:  # faiss is a hard dependency of the project, but the library must not die without it
    import faiss
except ImportError:  # pragma: no cover - exercised only on machines without faiss
    faiss = None


log = logging.getLogger(__name__)

# a search on the GPU index, in a child process: a broken faiss-gpu build aborts instead of raising
GPU_SELF_TEST = """
import faiss, numpy as np
x = np.random.default_rng(0).standard_normal((256, 64)).astype("float32")
index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(64))
index.add(x)
_, found = index.search(x, 4)
assert (found[:, 0] == np.arange(256)).all(), "the GPU index did not find each row itself"
"""


def _faiss_gpu_available() -> bool:
    return faiss is not None and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def _fall_back(reason: str) -> None:
    where = "the GPU" if torch.cuda.is_available() else "the CPU"
    log.warning("faiss GPU search unusable (%s); kNN runs on torch on %s instead", reason, where)


_gpu_failed_at_run_time: list[str] = []  # once the GPU index has failed, this process stays on torch


def faiss_gpu_usable() -> bool:
    """Whether faiss has a GPU, a small search on it works (checked once, in a child) and none has failed."""
    return not _gpu_failed_at_run_time and _faiss_gpu_self_test()


@functools.cache
def _faiss_gpu_self_test() -> bool:
    if not _faiss_gpu_available():
        return False
    try:
        probe = subprocess.run([sys.executable, "-c", GPU_SELF_TEST], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        _fall_back("its self-test did not finish in 300 s")
        return False
    if probe.returncode != 0:
        lines = (probe.stderr or probe.stdout or f"exit status {probe.returncode}").strip().splitlines()
        _fall_back(f"its self-test failed: {lines[-1] if lines else probe.returncode}")
        return False
    return True


SIMILARITY_BLOCK_FLOATS = 2**26  # a query batch's similarity block stays under 256 MiB however large N is


def _torch_top_k(base: np.ndarray, queries: np.ndarray, k: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Batched exact search with torch, on the GPU when there is one: memory O(batch·N)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch_size = max(1, min(batch_size, SIMILARITY_BLOCK_FLOATS // max(len(base), 1)))
    x, q = torch.from_numpy(base).to(device), torch.from_numpy(queries)
    sims = np.empty((len(q), k), dtype=np.float32)
    neighbours = np.empty((len(q), k), dtype=np.int64)
    for start in range(0, len(q), batch_size):
        top = torch.topk(q[start : start + batch_size].to(device) @ x.T, k, dim=1)
        sims[start : start + batch_size] = top.values.cpu().numpy()
        neighbours[start : start + batch_size] = top.indices.cpu().numpy()
    return sims, neighbours


SYMMETRIC_BLOCK_ROWS = 2048  # a block pair's product is 16 MiB per feature block: cache-friendly, BLAS-efficient


class _RunningTopK:
    """Each row's k best (similarity, index) so far, merged block by block: faiss's heaps where faiss is
    installed (a compare per candidate, ~3x torch.topk on this work), else torch.topk merges."""

    def __init__(self, n: int, k: int):
        self.k = k
        self.values = np.full((n, k), -np.inf, dtype=np.float32)
        self.indices = np.full((n, k), -1, dtype=np.int64)
        self.heaps = None
        if faiss is not None:
            self.heaps = faiss.float_minheap_array_t()  # a min-heap per row keeps the k largest
            self.heaps.nh, self.heaps.k = n, k
            self.heaps.val, self.heaps.ids = faiss.swig_ptr(self.values), faiss.swig_ptr(self.indices)
            self.heaps.heapify()

    def add(self, rows: slice, sims: np.ndarray, first_column: int) -> None:
        """Offer rows `rows` the candidates sims (C-contiguous float32, columns first_column...)."""
        if self.heaps is not None:
            self.heaps.addn(sims.shape[1], faiss.swig_ptr(sims), first_column, rows.start, sims.shape[0])
            return
        found = torch.topk(torch.from_numpy(sims), min(self.k, sims.shape[1]), dim=1)
        values = torch.cat([torch.from_numpy(self.values[rows]), found.values], dim=1)
        indices = torch.cat([torch.from_numpy(self.indices[rows]), found.indices + first_column], dim=1)
        best = torch.topk(values, self.k, dim=1)
        self.values[rows], self.indices[rows] = best.values.numpy(), torch.gather(indices, 1, best.indices).numpy()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.heaps is not None:
            self.heaps.reorder()  # heap order → best first
            self.heaps = None
        return self.values, self.indices


def _mixed(sims: Sequence[np.ndarray], row_scales: np.ndarray, column_scales: np.ndarray) -> np.ndarray:
    """Σ_b row_scales[i, b]·column_scales[j, b]·sims[b][i, j], in place after the first term."""
    total = sims[0] * row_scales[:, :1] * column_scales[:, 0]
    for b, block in enumerate(sims[1:], start=1):
        total += block * row_scales[:, b : b + 1] * column_scales[:, b]
    return total


def symmetric_knn(blocks: Sequence[np.ndarray], k: int, mix: np.ndarray | None = None,
                  block_rows: int = SYMMETRIC_BLOCK_ROWS, mix_only: Sequence[int] = ()
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """`knn` of every feature set in `blocks` (each (N, D_b), same N) from half of each similarity matrix.

    A self-search's similarity matrix is symmetric, so each block pair (I, J ≥ I) is multiplied once (numpy's
    BLAS) and serves rows I and, transposed, rows J: half the products of a query-by-query search. With `mix`
    (N, B) the list ends with one more result, the neighbours by Σ_b mix[i, b]·mix[j, b]·S_b(i, j) — the inner
    product of the concatenation [mix[:, b]·x_b], found from the blocks' products without a search of its
    own (DDO's fused feature is such a concatenation of its branches, see dsfnet/cluster/ddo.py). Blocks in
    `mix_only` serve the mix and get no list of their own.
    """
    blocks = [np.ascontiguousarray(x, dtype=np.float32) for x in blocks]
    n = len(blocks[0]) if blocks else 0
    if not blocks or any(x.ndim != 2 or len(x) != n for x in blocks):
        shapes = [x.shape for x in blocks]
        raise ValueError(f"need one or more (N, D) feature blocks with the same N, got shapes {shapes}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N={n}], got {k}")
    if mix is not None:
        mix = np.asarray(mix, dtype=np.float32)
        if mix.shape != (n, len(blocks)):
            raise ValueError(f"mix must have shape (N, blocks) = ({n}, {len(blocks)}), got {mix.shape}")
    if mix is None and mix_only:
        raise ValueError("mix_only names blocks that serve the mix, but there is no mix")
    listed = [b for b in range(len(blocks)) if b not in set(mix_only)]
    found = [_RunningTopK(n, k) for _ in range(len(listed) + (mix is not None))]
    for i in range(0, n, block_rows):
        rows = slice(i, min(i + block_rows, n))
        for j in range(i, n, block_rows):
            columns = slice(j, min(j + block_rows, n))
            sims = [x[rows] @ x[columns].T for x in blocks]
            mixed = [] if mix is None else [_mixed(sims, mix[rows], mix[columns])]
            for running, block in zip(found, [sims[b] for b in listed] + mixed, strict=True):
                running.add(rows, block, j)
                if j != i:  # torch transposes a block ~2x faster than numpy
                    running.add(columns, torch.from_numpy(block).T.contiguous().numpy(), i)
    return [running.result() for running in found]


def knn(features: np.ndarray, k: int, backend: str = "auto", batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), both (N, k): each row's k most similar rows, itself included, best first."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N={n}], got {k}")
    if resolve_backend(backend, self_search=True) == "symmetric":
        return symmetric_knn([features], k)[0]
    return top_k(features, features, k, backend, batch_size)


def resolve_backend(backend: str, self_search: bool = False) -> str:
    """What `backend` searches with here: `auto` is faiss where its GPU index works, torch on any other GPU,
    and on the CPU the backend measured faster on this machine (`knn_choice`); `symmetric` searches a set
    against itself only, so a search of queries against another base takes the measured one of faiss/torch."""
    if backend == "auto":
        if faiss_gpu_usable():
            return "faiss"
        if torch.cuda.is_available():
            return "torch"
        from dsfnet.cluster.knn_choice import cpu_backend, cpu_self_search
        return cpu_self_search() if self_search else cpu_backend()
    if backend == "symmetric" and not self_search:
        return resolve_backend("auto")
    return backend


def top_k(base: np.ndarray, queries: np.ndarray, k: int, backend: str = "auto",
          batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices into `base`), both (Q, k): each query's k largest inner products, best first."""
    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    backend = resolve_backend(backend)
    if backend == "faiss":
        if faiss is None:
            raise RuntimeError("backend 'faiss' requested but faiss is not installed")
        if faiss_gpu_usable():
            try:
                index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(base.shape[1]))
                index.add(base)
                sims, neighbours = index.search(queries, k)
                return sims, neighbours.astype(np.int64)
            except Exception as error:  # noqa: BLE001 - any faiss GPU failure: the torch search gives the same
                reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[-1]}"
                _gpu_failed_at_run_time.append(reason)
                _fall_back(reason)
                return _torch_top_k(base, queries, k, batch_size)
        index = faiss.IndexFlatIP(base.shape[1])
        index.add(base)
        sims, neighbours = index.search(queries, k)
        return sims, neighbours.astype(np.int64)
    if backend == "torch":
        return _torch_top_k(base, queries, k, batch_size)
    raise ValueError(f"unknown kNN backend {backend!r}; use 'auto', 'faiss', 'torch' or 'symmetric'")


def camera_penalised_knn(features: np.ndarray, k: int, camids: np.ndarray, penalty: float,
                         backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """`knn` where a neighbour from the sample's own camera counts `penalty` less similar (the sample itself
    keeps its similarity and stays first); the similarities returned are the penalised ones.

    Exact: each camera's samples are searched against their own camera and against all others separately
    (`top_k`), and the two lists merged. Why: with few cameras, same-camera look-alikes (background, light,
    viewpoint) crowd every k-reciprocal set and clusters never cross cameras (docs/method.md).
    """
    features = np.ascontiguousarray(features, dtype=np.float32)
    camids = np.asarray(camids)
    n = len(features)
    if len(camids) != n:
        raise ValueError(f"camids ({len(camids)}) must match features ({n})")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N={n}], got {k}")
    if penalty == 0:
        return knn(features, k, backend)
    sims = np.empty((n, k), dtype=np.float32)
    neighbours = np.empty((n, k), dtype=np.int64)
    for camid in np.unique(camids):
        own, other = np.flatnonzero(camids == camid), np.flatnonzero(camids != camid)
        candidates_s, candidates_i = [], []
        for pool, shift in ((own, penalty), (other, 0.0)):
            if len(pool) == 0:
                continue
            found_s, found_i = top_k(features[pool], features[own], min(k, len(pool)), backend)
            candidates_s.append(found_s - shift)
            candidates_i.append(pool[found_i])
        s, i = np.concatenate(candidates_s, axis=1), np.concatenate(candidates_i, axis=1)
        s[i == own[:, None]] += penalty  # the sample itself is not penalised
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        sims[own], neighbours[own] = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
    return sims, neighbours


def knn_search(features: np.ndarray, k: int, backend: str = "auto", batch_size: int = 4096) -> np.ndarray:
    """Indices (N, k) of each row's k most similar rows (itself included), most similar first."""
    return knn(features, k, backend, batch_size)[1]
