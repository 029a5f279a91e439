"""Pseudo-labels from DBSCAN on the sparse Jaccard distance, plus statistics of the clustering."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import DBSCAN

from dsfnet.cluster.jaccard import jaccard_distance


@dataclass
class ClusterConfig:
    k1: int = 30
    k2: int = 6
    eps: float = 0.6
    min_samples: int = 4


@dataclass
class PseudoLabels:
    labels: np.ndarray  # (N,) contiguous cluster ids, -1 for outliers
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_clusters(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size and self.labels.max() >= 0 else 0

    @property
    def num_outliers(self) -> int:
        return int((self.labels < 0).sum())


def dbscan_labels(distance, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN on a precomputed (dense or sparse) distance; outliers -1, clusters 0..C-1."""
    # scikit-learn numbers clusters 0..C-1 in order of discovery: already contiguous
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=-1).fit_predict(distance)
    return labels.astype(np.int64)


def cluster_features(features: np.ndarray, config: ClusterConfig) -> PseudoLabels:
    start = time.perf_counter()
    distance = jaccard_distance(features, k1=config.k1, k2=config.k2)
    jaccard_s = time.perf_counter() - start
    start = time.perf_counter()
    labels = dbscan_labels(distance, config.eps, config.min_samples)
    return PseudoLabels(labels, {"jaccard_s": jaccard_s, "dbscan_s": time.perf_counter() - start})
