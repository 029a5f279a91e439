"""k-reciprocal Jaccard distance (Zhong et al. 2017, as computed by Cluster Contrast), kept sparse.

The reference builds dense N×N matrices with per-sample Python loops. Here every set operation is a
sparse matrix operation, so only pairs that share a neighbour ever get a value; all others are 1.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from dsfnet.cluster.knn import knn_search


def _membership(neighbours: np.ndarray, n: int) -> sp.csr_matrix:
    """Boolean (N, N): row i marks the columns listed in neighbours[i]."""
    rows = np.repeat(np.arange(n), neighbours.shape[1])
    return sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, neighbours.ravel())), shape=(n, n))


def _reciprocal(neighbours: np.ndarray, k: int, n: int) -> sp.csr_matrix:
    """R[i, j] = 1 iff j is in i's top-(k+1) and i is in j's top-(k+1), self included.

    k+1 because the reference slices ``initial_rank[i, :k+1]``; for k = k1 the search returned only
    k1 columns, so that slice is k1 wide, while the half set (k = round(k1/2)) really gets k+1.
    """
    forward = _membership(neighbours[:, : k + 1], n)
    return forward.multiply(forward.T).tocsr()


def _min_sum(v: sp.csr_matrix, max_triples: int = 20_000_000) -> sp.csr_matrix:
    """S[i, j] = Σ_k min(V[i,k], V[j,k]) over columns both rows touch, in column chunks."""
    n = v.shape[0]
    csc = v.tocsc()
    csc.sort_indices()
    lengths = np.diff(csc.indptr)
    squares = lengths.astype(np.int64) ** 2
    result = sp.csr_matrix((n, n), dtype=np.float64)
    col = 0
    while col < n:
        end = col + 1
        budget = squares[col]
        while end < n and budget + squares[end] <= max_triples:
            budget += squares[end]
            end += 1
        lens = lengths[col:end]
        starts = csc.indptr[col:end]
        per_col = lens.astype(np.int64) ** 2
        total = int(per_col.sum())
        if total:
            col_of_triple = np.repeat(np.arange(end - col), per_col)
            offset = np.arange(total) - np.repeat(np.cumsum(per_col) - per_col, per_col)
            length = lens[col_of_triple]
            a = starts[col_of_triple] + offset // length
            b = starts[col_of_triple] + offset % length
            values = np.minimum(csc.data[a], csc.data[b])
            chunk = sp.coo_matrix((values, (csc.indices[a], csc.indices[b])), shape=(n, n)).tocsr()
            result = result + chunk
        col = end
    return result


def jaccard_distance(features, k1: int = 30, k2: int = 6, backend: str = "auto") -> sp.csr_matrix:
    """Sparse (N, N) k-reciprocal Jaccard distance of L2-normalised `features`.

    Stored entries are the pairs whose distance is < 1 (self-distances are stored as explicit 0);
    absent pairs mean 1.0. Matches the dense reference algorithm entry for entry.
    """
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    n = x.shape[0]
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    k1 = min(k1, n)
    neighbours = knn_search(x, k1, backend=backend)  # includes self, most similar first

    reciprocal = _reciprocal(neighbours, k1, n)
    half = _reciprocal(neighbours, int(np.around(k1 / 2)), n)
    half_sizes = np.asarray(half.sum(axis=1)).ravel()

    # Expansion: add candidate c's half-set when it overlaps i's k-reciprocal set by more than 2/3.
    overlap = reciprocal @ half.T  # |R(i) ∩ R_half(c)|
    overlap = overlap.multiply(reciprocal).tocoo()  # only candidates c in R(i)
    accepted = overlap.data > (2.0 / 3.0) * half_sizes[overlap.col]
    candidates = sp.csr_matrix(
        (np.ones(int(accepted.sum()), dtype=np.float32), (overlap.row[accepted], overlap.col[accepted])),
        shape=(n, n),
    )
    expanded = (reciprocal + candidates @ half).tocoo()

    # Gaussian-kernel weights over each expanded set: softmax(-(2 - 2 cos)).
    rows, cols = expanded.row, expanded.col
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    cos = np.einsum("ij,ij->i", x[rows], x[cols]).astype(np.float64)
    logits = -(2.0 - 2.0 * cos)
    row_max = np.full(n, -np.inf)
    np.maximum.at(row_max, rows, logits)
    weights = np.exp(logits - row_max[rows])
    weights /= np.bincount(rows, weights=weights, minlength=n)[rows]
    v = sp.csr_matrix((weights, (rows, cols)), shape=(n, n))

    if k2 != 1:  # local query expansion: average the rows of the k2 nearest neighbours
        qe_rows = np.repeat(np.arange(n), k2)
        qe = sp.csr_matrix((np.full(qe_rows.size, 1.0 / k2), (qe_rows, neighbours[:, :k2].ravel())), shape=(n, n))
        v = (qe @ v).tocsr()

    shared = _min_sum(v)
    distance = shared.copy()
    distance.data = 1.0 - shared.data / (2.0 - shared.data)
    np.clip(distance.data, 0.0, None, out=distance.data)
    distance.data = distance.data.astype(np.float32)
    return distance.astype(np.float32)
