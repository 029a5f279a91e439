"""k-reciprocal Jaccard distance (Zhong et al. 2017, as Cluster Contrast computes it), sparse and compiled.

The reference builds three dense N×N matrices with per-sample Python loops (12 GB at MSMT17 size). Here
each step works on per-row neighbour lists in numba-compiled, thread-parallel loops, so memory is
O(N·k) plus the output, and only pairs that share a neighbour ever get a value (all others are 1):

1. kNN (faiss): the k1 nearest neighbours of every sample, itself included, with their similarities;
2. k-reciprocal sets R(i) from the top k1 and R½(i) from the top round(k1/2)+1 (the reference's slice);
3. expansion: E(i) = R(i) ∪ R½(c) for every c ∈ R(i) with |R½(c) ∩ R(i)| > 2/3 |R½(c)|;
4. V(i, j) = softmax over j ∈ E(i) of −(2 − 2 cos(i, j));
5. local query expansion: V ← mean of the V rows of the k2 nearest neighbours;
6. Jaccard(i, j) = 1 − s / (2 − s) with s = Σ_k min(V(i,k), V(j,k)); negatives clipped to 0.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp
from numba import njit, prange

from dsfnet.cluster.knn import knn

NORM_TOLERANCE = 1e-3


def _chunks(n: int) -> np.ndarray:
    """Row ranges for the parallel loops: a few per thread, each owning its scratch arrays."""
    return np.linspace(0, n, min(n, 4 * numba.get_num_threads()) + 1).astype(np.int64)


@njit(parallel=True, cache=True)
def _reciprocal(neighbours, k):
    """R[i, :count[i]] = j in the top-k of i whose own top-k holds i (forward order kept)."""
    n = neighbours.shape[0]
    members = np.full((n, k), -1, np.int64)
    counts = np.zeros(n, np.int64)
    for i in prange(n):
        c = 0
        for a in range(k):
            j = neighbours[i, a]
            for b in range(k):
                if neighbours[j, b] == i:
                    members[i, c] = j
                    c += 1
                    break
        counts[i] = c
    return members, counts


@njit(cache=True)
def _expand(i, rec, rec_n, half, half_n, mark, out):
    """Write E(i) into `out`, return its size. `mark` is all-zero scratch of size N; left all-zero."""
    size = 0
    for a in range(rec_n[i]):
        j = rec[i, a]
        mark[j] = 3  # bit 1: in R(i); bit 2: already in E(i)
        out[size] = j
        size += 1
    for a in range(rec_n[i]):
        c = rec[i, a]
        shared = 0
        for b in range(half_n[c]):
            if mark[half[c, b]] & 1:
                shared += 1
        if shared > 2.0 / 3.0 * half_n[c]:
            for b in range(half_n[c]):
                j = half[c, b]
                if not mark[j] & 2:
                    mark[j] |= 2
                    out[size] = j
                    size += 1
    for a in range(size):
        mark[out[a]] = 0
    return size


@njit(parallel=True, cache=True)
def _weights(x, neighbours, sims, rec, rec_n, half, half_n, bounds, max_size):
    """CSR (indptr, indices, data) of V: softmax(−(2 − 2cos)) over each expanded set, columns sorted."""
    n, k = neighbours.shape
    sizes = np.zeros(n, np.int64)
    for t in prange(len(bounds) - 1):
        mark = np.zeros(n, np.uint8)
        out = np.empty(max_size, np.int64)
        for i in range(bounds[t], bounds[t + 1]):
            sizes[i] = _expand(i, rec, rec_n, half, half_n, mark, out)
    indptr = np.zeros(n + 1, np.int64)
    indptr[1:] = np.cumsum(sizes)
    indices = np.empty(indptr[-1], np.int64)
    data = np.empty(indptr[-1], np.float64)
    for t in prange(len(bounds) - 1):
        mark = np.zeros(n, np.uint8)
        slot = np.zeros(n, np.int64)  # 1 + position of j in i's kNN list, to reuse the search's similarity
        out = np.empty(max_size, np.int64)
        for i in range(bounds[t], bounds[t + 1]):
            size = _expand(i, rec, rec_n, half, half_n, mark, out)
            if size == 0:
                continue
            members = np.sort(out[:size])
            for a in range(k):
                slot[neighbours[i, a]] = a + 1
            logits = np.empty(size, np.float64)
            for a in range(size):
                j = members[a]
                if slot[j]:
                    cos = np.float64(sims[i, slot[j] - 1])
                else:  # outside i's top-k1 (reached through a neighbour): compute the product
                    cos = 0.0
                    for d in range(x.shape[1]):
                        cos += np.float64(x[i, d]) * np.float64(x[j, d])
                logits[a] = -(2.0 - 2.0 * cos)
            for a in range(k):
                slot[neighbours[i, a]] = 0
            weights = np.exp(logits - logits.max())
            weights /= weights.sum()
            start = indptr[i]
            indices[start : start + size] = members
            data[start : start + size] = weights
    return indptr, indices, data


@njit(cache=True)
def _pack(slot, out_ptr, sizes, out_idx, out_val):
    """Move each row from its slot (an upper-bound-sized region) to its packed place, in place.

    A row only ever moves towards the front, past rows already packed, so one forward pass is safe.
    """
    for i in range(len(sizes)):
        src, dst = slot[i], out_ptr[i]
        if src != dst:
            for a in range(sizes[i]):
                out_idx[dst + a] = out_idx[src + a]
                out_val[dst + a] = out_val[src + a]


@njit(parallel=True, cache=True)
def _query_expansion(neighbours, k2, indptr, indices, data, bounds):
    """CSR of the mean of the V rows of each sample's k2 nearest neighbours (columns sorted)."""
    n = neighbours.shape[0]
    bound = np.empty(n, np.int64)
    for i in prange(n):
        total = 0
        for a in range(k2):
            total += indptr[neighbours[i, a] + 1] - indptr[neighbours[i, a]]
        bound[i] = min(total, n)
    slot = np.zeros(n + 1, np.int64)
    slot[1:] = np.cumsum(bound)
    out_idx = np.empty(slot[-1], np.int64)
    out_val = np.empty(slot[-1], np.float64)
    sizes = np.zeros(n, np.int64)
    for t in prange(len(bounds) - 1):
        acc = np.zeros(n, np.float64)
        seen = np.zeros(n, np.uint8)
        touched = np.empty(n, np.int64)
        for i in range(bounds[t], bounds[t + 1]):
            count = 0
            for a in range(k2):
                r = neighbours[i, a]
                for p in range(indptr[r], indptr[r + 1]):
                    j = indices[p]
                    if not seen[j]:
                        seen[j] = 1
                        touched[count] = j
                        count += 1
                    acc[j] += data[p]
            cols = np.sort(touched[:count])
            start = slot[i]
            for a in range(count):
                j = cols[a]
                out_idx[start + a] = j
                out_val[start + a] = acc[j] / k2
                acc[j] = 0.0
                seen[j] = 0
            sizes[i] = count
    out_ptr = np.zeros(n + 1, np.int64)
    out_ptr[1:] = np.cumsum(sizes)
    _pack(slot, out_ptr, sizes, out_idx, out_val)
    return out_ptr, out_idx[: out_ptr[-1]], out_val[: out_ptr[-1]]


@njit(parallel=True, cache=True)
def _jaccard(indptr, indices, data, col_ptr, col_rows, col_vals, bounds):
    """CSR of 1 − s/(2 − s), s(i, j) = Σ_k min(V[i,k], V[j,k]), for every j sharing a column with i.

    One pass over the (i, k, j) triples: each row writes into a slot as large as the triples it visits
    (an upper bound of its distinct j), then `_pack` closes the gaps.
    """
    n = len(indptr) - 1
    bound = np.empty(n, np.int64)
    for i in prange(n):
        total = 0
        for p in range(indptr[i], indptr[i + 1]):
            total += col_ptr[indices[p] + 1] - col_ptr[indices[p]]
        bound[i] = min(total, n)
    slot = np.zeros(n + 1, np.int64)
    slot[1:] = np.cumsum(bound)
    out_idx = np.empty(slot[-1], np.int32)
    out_val = np.empty(slot[-1], np.float32)
    sizes = np.zeros(n, np.int64)
    for t in prange(len(bounds) - 1):
        acc = np.zeros(n, np.float64)
        seen = np.zeros(n, np.uint8)
        touched = np.empty(n, np.int64)
        for i in range(bounds[t], bounds[t + 1]):
            count = 0
            for p in range(indptr[i], indptr[i + 1]):
                k = indices[p]
                v = data[p]
                for q in range(col_ptr[k], col_ptr[k + 1]):
                    j = col_rows[q]
                    if not seen[j]:
                        seen[j] = 1
                        touched[count] = j
                        count += 1
                    w = col_vals[q]
                    acc[j] += v if v < w else w
            start = slot[i]
            for a in range(count):  # in discovery order: sorting ~N·3000 columns would cost more than the rest
                j = touched[a]
                s = acc[j]
                out_idx[start + a] = j
                out_val[start + a] = max(0.0, 1.0 - s / (2.0 - s))
                acc[j] = 0.0
                seen[j] = 0
            sizes[i] = count
    out_ptr = np.zeros(n + 1, np.int64)
    out_ptr[1:] = np.cumsum(sizes)
    _pack(slot, out_ptr, sizes, out_idx, out_val)
    return out_ptr, out_idx[: out_ptr[-1]], out_val[: out_ptr[-1]]


def check_features(features) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be a non-empty 2-D array (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1)
    if np.abs(norms - 1.0).max() > NORM_TOLERANCE:
        raise ValueError(f"features must be L2-normalised (row norms are {norms.min():.4f}..{norms.max():.4f})")
    return x


def jaccard_distance(features, k1: int = 30, k2: int = 6,
                     neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> sp.csr_matrix:
    """Sparse (N, N) k-reciprocal Jaccard distance of L2-normalised `features`.

    Stored entries are the pairs whose distance is < 1 (self-distances are stored as explicit 0);
    absent pairs mean 1.0. Equals the dense reference algorithm entry for entry. `neighbours` takes a
    precomputed `knn(features, k1)` result (similarities, indices) so callers can time the search alone.
    """
    x = check_features(features)
    n = x.shape[0]
    if not 1 <= k1 <= n:
        raise ValueError(f"k1 must be in [1, N={n}], got k1={k1}")
    if not 1 <= k2 <= k1:
        raise ValueError(f"k2 must be in [1, k1={k1}], got k2={k2}")
    sims, idx = neighbours if neighbours is not None else knn(x, k1)
    if idx.shape != (n, k1):
        raise ValueError(f"neighbours must have shape (N, k1) = ({n}, {k1}), got {idx.shape}")
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    sims = np.ascontiguousarray(sims, dtype=np.float32)
    half = min(int(np.around(k1 / 2)) + 1, k1)  # the reference slices initial_rank[i, :k + 1]
    rec, rec_n = _reciprocal(idx, k1)
    rec_half, half_n = _reciprocal(idx, half)
    bounds = _chunks(n)
    v_ptr, v_idx, v_val = _weights(x, idx, sims, rec, rec_n, rec_half, half_n, bounds, k1 + k1 * half)
    if k2 != 1:
        v_ptr, v_idx, v_val = _query_expansion(idx, k2, v_ptr, v_idx, v_val, bounds)
    # the hot loop streams these arrays: 32-bit entries halve its memory traffic (the reference is float32 too)
    v_idx, v_val = v_idx.astype(np.int32), v_val.astype(np.float32)
    columns = sp.csr_matrix((v_val, v_idx, v_ptr), shape=(n, n)).tocsc()
    out_ptr, out_idx, out_val = _jaccard(v_ptr, v_idx, v_val, columns.indptr.astype(np.int64),
                                         columns.indices.astype(np.int32), columns.data, bounds)
    distance = sp.csr_matrix((out_val, out_idx, out_ptr), shape=(n, n))
    distance.has_sorted_indices = False  # rows are complete but not column-sorted
    return distance
