"""DDO: dual-fusion dynamic optimisation, the path from FINet's features to SCNet's clustering.

Feature fusion: the clustered feature is FINet's integrated one. Distance fusion: the Jaccard distance
is (1 − λ_t)·D_fused + λ_t·mean_p D_part, with λ_t scheduled over epochs or set by how much the fused
and the part neighbourhoods agree; `part_pairs: same_camera` keeps the part term to pairs from one camera.
See docs/method.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from dsfnet.cluster.dbscan import (
    ClusterConfig,
    PseudoLabels,
    check_dbscan_args,
    dbscan_labels,
    neighbours_for,
    within,
)
from dsfnet.cluster.jaccard import check_features, jaccard_distance
from dsfnet.cluster.knn import resolve_backend, symmetric_knn
from dsfnet.config import DDOConfig


def _similarity(distance: sp.spmatrix, weight: float = 1.0) -> sp.csr_matrix:
    """w·(1 − D) on D's stored entries: a sparse distance whose absent entries mean 1 becomes a similarity whose
    absent entries mean 0, so sparse distances can be mixed by adding."""
    similarity = sp.csr_matrix(distance, dtype=np.float64, copy=True)
    similarity.data = weight * (1.0 - similarity.data)
    return similarity


def fuse_distances(distances: Sequence[sp.spmatrix], weights: Sequence[float]) -> sp.csr_matrix:
    """Σ_i w_i·D_i for sparse distances whose absent entries mean 1 (weights summing to 1).

    Mixed as similarities (1 − D, absent = 0) so the sparsity patterns simply add up.
    """
    if len(distances) != len(weights) or not distances:
        raise ValueError(f"need one weight per distance, got {len(distances)} distances, {len(weights)} weights")
    if not np.isclose(sum(weights), 1.0):
        raise ValueError(f"distance weights must sum to 1, got {list(weights)}")
    total = None
    for distance, weight in zip(distances, weights, strict=True):
        similarity = _similarity(distance, weight)
        total = similarity if total is None else total + similarity
    total.data = 1.0 - total.data  # explicit zeros of the sum stay stored: DBSCAN sees them as distance 1
    return total.tocsr()


def same_camera_only(mixed: sp.spmatrix, first: sp.spmatrix, camids: np.ndarray) -> sp.csr_matrix:
    """`mixed` for pairs of one camera, `first` (the part-free distance) for pairs across cameras.

    Both are sparse distances whose absent entries mean 1, mixed as similarities like fuse_distances:
    S = S_first + [same camera]·(S_mixed − S_first).
    """
    camids = np.asarray(camids)
    if camids.shape != (mixed.shape[0],):
        raise ValueError(f"need one camera per sample: {mixed.shape[0]} samples, camids of shape {camids.shape}")
    base = _similarity(first)
    change = (_similarity(mixed) - base).tocoo()
    keep = camids[change.row] == camids[change.col]
    change = sp.csr_matrix((change.data[keep], (change.row[keep], change.col[keep])), shape=change.shape)
    total = (base + change).tocsr()
    total.data = 1.0 - total.data
    return total


def as_concatenation(first: np.ndarray, parts: Sequence[np.ndarray], atol: float = 1e-5
                     ) -> tuple[list[np.ndarray], np.ndarray] | None:
    """(blocks [u, parts...], scales (N, P + 1)) with first = [scales[:, 0]·u, scales[:, 1]·parts[0], ...] row
    by row, u unit-norm, or None where `first` is not such a concatenation of the parts (to `atol`).

    FINet's fused feature is the concatenation of its unit branches scaled by √w, and camera normalisation
    keeps that form when w is the same for every sample (FINet off: DDO's uniform mix); learned per-sample
    weights do not survive the camera mean, and then the fused feature is searched on its own."""
    n, width = first.shape
    dims = [part.shape[1] for part in parts]
    if width <= sum(dims) or any(part.shape[0] != n for part in parts):
        return None
    pieces = np.split(first, np.cumsum([width - sum(dims)] + dims)[:-1], axis=1)
    scales = np.stack([np.sqrt(np.einsum("ij,ij->i", piece, piece)) for piece in pieces], axis=1)
    for piece, scale, part in zip(pieces[1:], scales.T[1:], parts, strict=True):  # piece = scale·part, to atol
        if np.abs(piece - scale[:, None] * part).max() > atol:
            return None
    return [pieces[0] / np.maximum(scales[:, :1], 1e-12), *parts], scales


def branch_neighbours(branches: Sequence[np.ndarray], config: ClusterConfig,
                      camids: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The k1-NN lists of DDO's first-term feature and of each part, in the order of `branches`.

    With the symmetric search (`cluster.knn_backend`) all of them come from one pass over half of each part's
    similarity matrix, and a first feature that concatenates the parts (`as_concatenation`) is found from
    their products instead of a search over its (P + 1)·D floats: 2.0–2.1x sooner than faiss searching the
    branches one by one at 9,914–12,936 images (bench/bench_knn.py --ddo-parts 2)."""
    if config.camera_penalty or resolve_backend(config.knn_backend, self_search=True) != "symmetric":
        return [neighbours_for(x, config, camids) for x in branches]
    first, parts = branches[0], list(branches[1:])
    concatenation = as_concatenation(first, parts)
    if concatenation is None:
        return symmetric_knn(branches, config.k1)
    blocks, scales = concatenation
    found = symmetric_knn(blocks, config.k1, mix=scales, mix_only=[0])  # the global block: no list of its own
    return [found[-1], *found[:-1]]


def neighbourhood_agreement(first: np.ndarray, second: np.ndarray) -> float:
    """Mean share of each sample's k neighbours that two (N, k) neighbour lists have in common."""
    if first.shape != second.shape:
        raise ValueError(f"neighbour lists must have the same shape, got {first.shape} and {second.shape}")
    k = first.shape[1]
    common = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(first, second, strict=True)]
    return float(np.mean(common)) / k if k else 0.0


def dynamic_lambda(config: DDOConfig, epoch: int, epochs: int, agreement: float) -> float:
    """λ_t: linear from lambda_start to lambda_end over the epochs, or lambda_max × agreement."""
    if config.lambda_mode == "schedule":
        progress = epoch / max(epochs - 1, 1)
        return config.lambda_start + (config.lambda_end - config.lambda_start) * progress
    return config.lambda_max * agreement


@dataclass
class FusedClustering:
    pseudo: PseudoLabels
    lambda_t: float
    agreement: float


def cluster_fused(fused: np.ndarray, parts: np.ndarray, config: ClusterConfig, ddo: DDOConfig, epoch: int,
                  epochs: int, camids: np.ndarray | None = None) -> FusedClustering:
    """DBSCAN pseudo-labels on the DDO distance of fused (N, D) and part (N, P, D) features."""
    check_dbscan_args(config.eps, config.min_samples)
    branches = [check_features(fused)] + [check_features(parts[:, p]) for p in range(parts.shape[1])]
    n = len(branches[0])
    if not 1 <= config.k1 <= n:
        raise ValueError(f"cluster.k1={config.k1} must be in [1, N={n}] (fewer samples than neighbours)")
    start = time.perf_counter()
    neighbours = branch_neighbours(branches, config, camids)
    knn_s = time.perf_counter() - start
    agreement = float(np.mean([neighbourhood_agreement(neighbours[0][1], nb[1]) for nb in neighbours[1:]]))
    lambda_t = dynamic_lambda(ddo, epoch, epochs, agreement)
    start = time.perf_counter()
    distances = [jaccard_distance(x, config.k1, config.k2, neighbours=nb) for x, nb in zip(branches, neighbours,
                                                                                            strict=True)]
    num_parts = len(branches) - 1
    distance = fuse_distances(distances, [1.0 - lambda_t] + [lambda_t / num_parts] * num_parts)
    if ddo.part_pairs == "same_camera":
        if camids is None:
            raise ValueError("dsfnet.ddo.part_pairs: same_camera needs the camera of every sample")
        distance = same_camera_only(distance, distances[0], camids)
    jaccard_s = time.perf_counter() - start
    start = time.perf_counter()
    labels = dbscan_labels(within(distance, config.eps), config.eps, config.min_samples)
    timings = {"knn_s": knn_s, "jaccard_s": jaccard_s, "dbscan_s": time.perf_counter() - start}
    return FusedClustering(PseudoLabels(labels, timings), lambda_t, agreement)
