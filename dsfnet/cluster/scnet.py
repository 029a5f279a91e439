"""SCNet: find each cluster's hard samples and re-cluster them into sub-clusters (hard proxies).

A single centroid averages a cluster's modes away (other viewpoints, occlusions); the sub-cluster
centroids of its hard samples keep them in the dictionary. See docs/method.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import AgglomerativeClustering


@dataclass
class HardProxies:
    proxies: np.ndarray  # (M, D) L2-normalised proxy centroids
    owners: np.ndarray  # (M,) primary cluster of each proxy
    assignment: np.ndarray  # (N,) proxy of each sample, -1 for outliers
    intra_hard: np.ndarray  # (N,) bool: among its cluster's least centroid-similar share
    inter_hard: np.ndarray  # (N,) bool: another centroid within the margin of its own

    @property
    def hard(self) -> np.ndarray:
        return self.intra_hard | self.inter_hard

    def stats(self) -> dict[str, int]:
        return {"hard_samples": int(self.hard.sum()), "intra_hard": int(self.intra_hard.sum()),
                "inter_hard": int(self.inter_hard.sum()), "hard_proxies": int(len(self.proxies))}


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cluster_centroids(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    keep = labels >= 0
    num = int(labels[keep].max()) + 1
    sums = np.zeros((num, features.shape[1]), dtype=np.float64)
    np.add.at(sums, labels[keep], features[keep])
    return _normalise(sums).astype(np.float32)


def find_hard_samples(features: np.ndarray, labels: np.ndarray, centroids: np.ndarray, intra_quantile: float,
                      inter_margin: float, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(intra_hard, inter_hard) masks over all samples; outliers are never hard."""
    n = len(labels)
    own = np.full(n, np.nan, dtype=np.float32)
    best_other = np.full(n, -np.inf, dtype=np.float32)
    for start in range(0, n, chunk):  # memory O(chunk × C), not O(N × C)
        rows = np.arange(start, min(start + chunk, n))
        rows = rows[labels[rows] >= 0]
        sims = features[rows] @ centroids.T
        own[rows] = sims[np.arange(len(rows)), labels[rows]]
        sims[np.arange(len(rows)), labels[rows]] = -np.inf
        best_other[rows] = sims.max(axis=1) if sims.shape[1] > 1 else -np.inf
    clustered = labels >= 0
    inter = clustered & (best_other > own - inter_margin)
    intra = np.zeros(n, dtype=bool)
    for members in _members_by_cluster(labels):
        count = int(np.floor(intra_quantile * len(members)))
        if count:
            order = np.argsort(own[members], kind="stable")  # least similar to the centroid first
            intra[members[order[:count]]] = True
    return intra, inter


def _members_by_cluster(labels: np.ndarray) -> list[np.ndarray]:
    kept = np.flatnonzero(labels >= 0)
    order = kept[np.argsort(labels[kept], kind="stable")]
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return np.split(order, bounds) if len(order) else []


def secondary_clustering(features: np.ndarray, labels: np.ndarray, intra_quantile: float = 0.2,
                         inter_margin: float = 0.0, sub_distance: float = 0.3) -> HardProxies:
    """Hard proxies of every cluster: the centroid of its easy members plus one per hard sub-cluster.

    Hard members are grouped by average-linkage agglomerative clustering on cosine distance, merging
    until `sub_distance`; a cluster whose members are all hard has only sub-cluster proxies.
    """
    features = np.ascontiguousarray(features, dtype=np.float32)
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features (N, D) and labels (N,) must match, got {features.shape} and {labels.shape}")
    if not (labels >= 0).any():
        raise ValueError("secondary clustering needs at least one cluster; every label is -1")
    centroids = cluster_centroids(features, labels)
    intra, inter = find_hard_samples(features, labels, centroids, intra_quantile, inter_margin)
    hard = intra | inter
    assignment = np.full(len(labels), -1, dtype=np.int64)
    proxies: list[np.ndarray] = []
    owners: list[int] = []

    def add_proxy(members: np.ndarray, owner: int) -> None:
        assignment[members] = len(proxies)
        proxies.append(features[members].mean(axis=0))
        owners.append(owner)

    for members in _members_by_cluster(labels):
        owner = int(labels[members[0]])
        easy, difficult = members[~hard[members]], members[hard[members]]
        if len(easy):
            add_proxy(easy, owner)
        if len(difficult) == 1:
            add_proxy(difficult, owner)
        elif len(difficult) > 1:
            sub = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                          distance_threshold=sub_distance).fit_predict(features[difficult])
            for s in np.unique(sub):
                add_proxy(difficult[sub == s], owner)
    return HardProxies(_normalise(np.stack(proxies)).astype(np.float32), np.array(owners, dtype=np.int64),
                       assignment, intra, inter)
