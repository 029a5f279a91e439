"""Pseudo-labels from DBSCAN on the sparse Jaccard distance, with per-step timings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import DBSCAN

from dsfnet.cluster.jaccard import check_features, jaccard_distance
from dsfnet.cluster.knn import camera_penalised_knn, knn
from dsfnet.config import ClusterConfig


class NoClusterError(ValueError):
    """DBSCAN left every sample an outlier: training cannot continue on these pseudo-labels."""


@dataclass
class PseudoLabels:
    labels: np.ndarray  # (N,) contiguous cluster ids, -1 for outliers
    timings: dict[str, float] = field(default_factory=dict)  # knn_s, jaccard_s, dbscan_s

    @property
    def num_clusters(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size and self.labels.max() >= 0 else 0

    @property
    def num_outliers(self) -> int:
        return int((self.labels < 0).sum())


def neighbours_for(x: np.ndarray, config: ClusterConfig, camids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The k1-NN lists the Jaccard distance starts from, camera-penalised when `cluster.camera_penalty` > 0."""
    config.check()
    if config.camera_penalty and camids is None:
        raise ValueError("cluster.camera_penalty needs the camera of every sample")
    if not config.camera_penalty:
        return knn(x, config.k1, backend=config.knn_backend)
    return camera_penalised_knn(x, config.k1, camids, config.camera_penalty, backend=config.knn_backend)


def check_dbscan_args(eps: float, min_samples: int) -> None:
    if not 0.0 < eps <= 1.0:
        raise ValueError(f"eps must be in (0, 1] (a Jaccard distance), got eps={eps}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1, got min_samples={min_samples}")


def dbscan_labels(distance, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN on a precomputed (dense or sparse) distance; outliers -1, clusters 0..C-1."""
    check_dbscan_args(eps, min_samples)
    # scikit-learn numbers clusters 0..C-1 in order of discovery: already contiguous
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=-1).fit_predict(distance)
    return labels.astype(np.int64)


def camera_normalise(features: np.ndarray, camids: np.ndarray) -> np.ndarray:
    """Subtract each camera's mean feature and re-normalise, so clusters form across cameras, not per camera.

    `features` is (N, D) or (N, P, D) (one feature per part); the last axis is the one normalised.
    """
    features = np.asarray(features, dtype=np.float32)
    camids = np.asarray(camids)
    if len(camids) != len(features):
        raise ValueError(f"camids ({len(camids)}) must match features ({len(features)})")
    out = features.copy()
    for camid in np.unique(camids):
        rows = camids == camid
        out[rows] -= features[rows].mean(axis=0)
    norms = np.linalg.norm(out, axis=-1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def within(distance: sp.csr_matrix, eps: float) -> sp.csr_matrix:
    """Only the entries DBSCAN can use (≤ eps), explicit zeros kept: far smaller, identical labels."""
    coo = distance.tocoo()
    keep = coo.data <= eps
    return sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=distance.shape)


def cluster_features(features: np.ndarray, config: ClusterConfig, camids: np.ndarray | None = None) -> PseudoLabels:
    """kNN → k-reciprocal Jaccard → DBSCAN, timing each step (`camids`: for `cluster.camera_penalty`)."""
    check_dbscan_args(config.eps, config.min_samples)
    x = check_features(features)
    if not 1 <= config.k1 <= len(x):
        raise ValueError(f"cluster.k1={config.k1} must be in [1, N={len(x)}] (fewer samples than neighbours)")
    start = time.perf_counter()
    neighbours = neighbours_for(x, config, camids)
    knn_s = time.perf_counter() - start
    start = time.perf_counter()
    distance = jaccard_distance(x, k1=config.k1, k2=config.k2, neighbours=neighbours)
    jaccard_s = time.perf_counter() - start
    start = time.perf_counter()
    labels = dbscan_labels(within(distance, config.eps), config.eps, config.min_samples)
    return PseudoLabels(labels, {"knn_s": knn_s, "jaccard_s": jaccard_s, "dbscan_s": time.perf_counter() - start})
