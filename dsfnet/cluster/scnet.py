"""SCNet: secondary clustering of each cluster, so its hard samples get proxies (and labels) of their own.

DBSCAN links samples through chains of neighbours, so one cluster can hold several identities that
only touch at its edges. Complete-linkage clustering inside each cluster does not chain: the members
that stay with the cluster's largest (core) sub-cluster are its easy samples, the rest are intra-class
hard samples, grouped into sub-clusters. Each sub-cluster becomes a proxy of the hard-proxy memory and,
with `split`, a pseudo-label of its own. See docs/method.md.

With `camids`, a sub-cluster whose cameras are all cameras the core sub-cluster never saw rejoins the core:
one person seen from another camera (front and back, another light) is a view, not a second identity, and
cutting there removes exactly the cross-camera pairs that retrieval is scored on.

`by_camera` reads the secondary clustering as camera-aware (CAP, ICE): each cluster's sub-clusters are its
members per camera, the largest first. The proxies then hold the views a cluster's identity has across
cameras, and a loss that takes every own proxy as a positive pulls each sample towards its other views.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from dsfnet.config import LINKAGES


@dataclass
class HardProxies:
    proxies: np.ndarray  # (M, D) L2-normalised proxy centroids (each cluster's core sub-cluster first)
    owners: np.ndarray  # (M,) primary cluster of each proxy
    assignment: np.ndarray  # (N,) proxy of each sample, -1 for outliers
    intra_hard: np.ndarray  # (N,) bool: outside its cluster's core sub-cluster
    inter_hard: np.ndarray  # (N,) bool: another centroid within the margin of its own

    @property
    def hard(self) -> np.ndarray:
        return self.intra_hard | self.inter_hard

    @property
    def split_clusters(self) -> int:
        """Primary clusters that secondary clustering divided into two or more sub-clusters."""
        return int((np.bincount(self.owners) > 1).sum()) if len(self.owners) else 0

    def stats(self) -> dict[str, int]:
        return {"hard_samples": int(self.hard.sum()), "intra_hard": int(self.intra_hard.sum()),
                "inter_hard": int(self.inter_hard.sum()), "hard_proxies": int(len(self.proxies)),
                "split_clusters": self.split_clusters}


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cluster_centroids(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    keep = labels >= 0
    num = int(labels[keep].max()) + 1
    sums = np.zeros((num, features.shape[1]), dtype=np.float64)
    np.add.at(sums, labels[keep], features[keep])
    return _normalise(sums).astype(np.float32)


def find_inter_hard(features: np.ndarray, labels: np.ndarray, centroids: np.ndarray, margin: float,
                    chunk: int = 8192) -> np.ndarray:
    """Samples with another cluster's centroid within `margin` of their own's similarity; outliers never."""
    n = len(labels)
    hard = np.zeros(n, dtype=bool)
    if len(centroids) < 2:
        return hard
    for start in range(0, n, chunk):  # memory O(chunk × C), not O(N × C)
        rows = np.arange(start, min(start + chunk, n))
        rows = rows[labels[rows] >= 0]
        sims = features[rows] @ centroids.T
        own = sims[np.arange(len(rows)), labels[rows]].copy()
        sims[np.arange(len(rows)), labels[rows]] = -np.inf
        hard[rows] = sims.max(axis=1) > own - margin
    return hard


def sub_clusters(features: np.ndarray, distance: float, min_size: int, linkage: str = "complete") -> list[np.ndarray]:
    """Row indices of each sub-cluster of one cluster, the largest (the core) first.

    Sub-clusters smaller than `min_size` are not kept: their members join the kept sub-cluster whose
    centroid is most similar. A cluster that cannot yield two kept sub-clusters stays whole.
    """
    n = len(features)
    whole = [np.arange(n)]
    if n < 2 * min_size:
        return whole
    sub = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage=linkage,
                                  distance_threshold=distance).fit_predict(features)
    sizes = np.bincount(sub)
    kept = np.flatnonzero(sizes >= min_size)
    if len(kept) < 2:
        return whole
    kept = kept[np.argsort(-sizes[kept], kind="stable")]
    centroids = _normalise(np.stack([features[sub == s].mean(axis=0) for s in kept]))
    position = np.full(len(sizes), -1)
    position[kept] = np.arange(len(kept))
    group = position[sub]
    small = group < 0
    group[small] = np.argmax(_normalise(features[small]) @ centroids.T, axis=1)
    return [np.flatnonzero(group == g) for g in range(len(kept))]


def rejoin_views(groups: list[np.ndarray], camids: np.ndarray) -> list[np.ndarray]:
    """Merge into the core (groups[0]) every other group whose cameras the core has none of."""
    core_cameras = np.unique(camids[groups[0]])
    views = [g for g in groups[1:] if not np.isin(camids[g], core_cameras).any()]
    if not views:
        return groups
    return [np.sort(np.concatenate([groups[0], *views])),
            *(g for g in groups[1:] if np.isin(camids[g], core_cameras).any())]


def camera_groups(camids: np.ndarray) -> list[np.ndarray]:
    """Row indices of one cluster's members per camera, the largest group first (ties: lower camid)."""
    _, inverse, counts = np.unique(camids, return_inverse=True, return_counts=True)
    return [np.flatnonzero(inverse == i) for i in np.argsort(-counts, kind="stable")]


def _members_by_cluster(labels: np.ndarray) -> list[np.ndarray]:
    kept = np.flatnonzero(labels >= 0)
    order = kept[np.argsort(labels[kept], kind="stable")]
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return np.split(order, bounds) if len(order) else []


def split_oversized(labels: np.ndarray, proxies: HardProxies, factor: float) -> tuple[np.ndarray, HardProxies, int]:
    """(labels, proxies, clusters split): every cluster larger than `factor` × the median cluster size replaced by
    its sub-clusters (SCNet's proxies), the proxies re-owned by the new labels; the other clusters keep theirs.

    Why: DBSCAN's chaining leaves a few giant clusters of many identities (Market, 12 epochs: 400-1,140 images,
    where no identity has more than 72). Splitting every cluster cost mAP on real images; these are the
    clusters whose labels are wrong whatever the split does.
    """
    labels = np.asarray(labels)
    sizes = np.bincount(labels[labels >= 0])
    oversized = sizes > factor * np.median(sizes)
    if not oversized.any():
        return labels, proxies, 0
    # one key per proxy: its cluster's label, or for a proxy of an oversized cluster a key of its own
    keys = np.where(oversized[proxies.owners], len(sizes) + np.arange(len(proxies.owners)), proxies.owners)
    kept = labels >= 0
    new = np.full(len(labels), -1, dtype=np.int64)
    order, new[kept] = np.unique(keys[proxies.assignment[kept]], return_inverse=True)
    owners = np.searchsorted(order, keys).astype(np.int64)
    return new, replace(proxies, owners=owners), int(oversized.sum())


def secondary_clustering(features: np.ndarray, labels: np.ndarray, sub_distance: float = 0.6, min_size: int = 4,
                         linkage: str = "complete", inter_margin: float = 0.0,
                         camids: np.ndarray | None = None, by_camera: bool = False) -> HardProxies:
    """Every cluster's sub-clusters (see `sub_clusters`, or `camera_groups` with `by_camera`) as proxies owned
    by the cluster.

    `assignment` maps each sample to its proxy; used as labels it is SCNet's refined pseudo-labelling.
    `camids` (N,): sub-clusters from cameras their core never saw rejoin it (`rejoin_views`); with
    `by_camera` they are what the members are grouped by.
    """
    features = np.ascontiguousarray(features, dtype=np.float32)
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features (N, D) and labels (N,) must match, got {features.shape} and {labels.shape}")
    if not (labels >= 0).any():
        raise ValueError("secondary clustering needs at least one cluster; every label is -1")
    if linkage not in LINKAGES:
        raise ValueError(f"dsfnet.scnet.linkage must be one of {LINKAGES}, got {linkage!r}")
    if camids is not None and len(camids) != len(labels):
        raise ValueError(f"camids ({len(camids)}) must match labels ({len(labels)})")
    if by_camera and camids is None:
        raise ValueError("camera-aware secondary clustering needs the camera of every sample")
    features = _normalise(features)
    inter = find_inter_hard(features, labels, cluster_centroids(features, labels), inter_margin)
    intra = np.zeros(len(labels), dtype=bool)
    assignment = np.full(len(labels), -1, dtype=np.int64)
    proxies: list[np.ndarray] = []
    owners: list[int] = []
    for members in _members_by_cluster(labels):
        if by_camera:
            groups = camera_groups(np.asarray(camids)[members])
        else:
            groups = sub_clusters(features[members], sub_distance, min_size, linkage)
        if camids is not None and not by_camera and len(groups) > 1:
            groups = rejoin_views(groups, np.asarray(camids)[members])
        for rank, group in enumerate(groups):
            assignment[members[group]] = len(proxies)
            proxies.append(features[members[group]].mean(axis=0))
            owners.append(int(labels[members[0]]))
            intra[members[group]] = rank > 0
    return HardProxies(_normalise(np.stack(proxies)).astype(np.float32), np.array(owners, dtype=np.int64),
                       assignment, intra, inter)
