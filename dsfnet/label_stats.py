"""Pseudo-label statistics per epoch: how the clustering looks, how much it moved, and (monitoring only)
how it agrees with ground truth. The trainer records them; the monitor stage gates on them."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def cluster_sizes(labels: np.ndarray) -> np.ndarray:
    """Members of each cluster 0..C-1 (outliers, label -1, not counted)."""
    labels = np.asarray(labels)
    return np.bincount(labels[labels >= 0])


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values: 0 when all are equal, towards 1 when one holds everything."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float(2 * np.sum(np.arange(1, n + 1) * x) / (n * total) - (n + 1) / n)


def size_statistics(labels: np.ndarray) -> dict[str, float]:
    sizes = cluster_sizes(labels)
    if sizes.size == 0:
        return {"median_cluster_size": 0.0, "size_gini": 0.0}
    return {"median_cluster_size": float(np.median(sizes)), "size_gini": gini(sizes)}


def multi_camera_share(labels: np.ndarray, camids: np.ndarray) -> float:
    """Share of clusters whose members come from two or more cameras (single-camera clusters are
    usually one camera's look, not one person)."""
    labels, camids = np.asarray(labels), np.asarray(camids)
    kept = labels >= 0
    if not kept.any():
        return 0.0
    pairs = np.unique(np.stack([labels[kept], camids[kept]], axis=1), axis=0)
    cameras_per_cluster = np.bincount(pairs[:, 0])
    present = cameras_per_cluster > 0
    return float((cameras_per_cluster[present] >= 2).mean())


def label_churn(previous: np.ndarray | None, current: np.ndarray) -> float:
    """1 − ARI between two epochs' labels on the samples clustered in both (0 = same partition).
    NaN for the first epoch or when fewer than two samples are clustered in both."""
    if previous is None:
        return float("nan")
    previous, current = np.asarray(previous), np.asarray(current)
    both = (previous >= 0) & (current >= 0)
    if both.sum() < 2:
        return float("nan")
    return float(1.0 - adjusted_rand_score(previous[both], current[both]))


GROUND_TRUTH_KEYS = ("purity", "nmi", "ari", "pair_precision", "pair_recall", "cross_camera_pair_precision",
                     "cross_camera_pair_recall")


def _pairs(counts: np.ndarray) -> float:
    return float((counts.astype(np.float64) * (counts - 1) / 2).sum())


def label_quality(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Purity, NMI, ARI and pairwise precision of the clustered samples against ground-truth ids;
    pairwise recall over all samples (an identity left as outliers is a miss). Monitoring only."""
    kept = labels >= 0
    if not kept.any():
        return {"purity": 0.0, "nmi": 0.0, "ari": 0.0, "pair_precision": 0.0, "pair_recall": 0.0}
    lab, tru = labels[kept], truth[kept]
    _, tru_idx = np.unique(tru, return_inverse=True)
    table = np.zeros((lab.max() + 1, tru_idx.max() + 1), dtype=np.int64)
    np.add.at(table, (lab, tru_idx), 1)
    together = _pairs(table)
    predicted, actual = _pairs(table.sum(axis=1)), _pairs(np.unique(truth, return_counts=True)[1])
    return {
        "purity": float(table.max(axis=1).sum() / kept.sum()),
        "nmi": float(normalized_mutual_info_score(tru, lab)),
        "ari": float(adjusted_rand_score(tru, lab)),
        "pair_precision": together / predicted if predicted else 0.0,
        "pair_recall": together / actual if actual else 0.0,
    }


def cross_camera_pair_quality(labels: np.ndarray, truth: np.ndarray, camids: np.ndarray) -> dict[str, float]:
    """Pairwise precision and recall over pairs of images from different cameras only. Retrieval is scored
    on other cameras' images, so these pairs are what it learns from: clusters that are "one person in one
    camera" can score high purity and overall pair recall, and 0 here (CUHK03, docs/method.md)."""
    def cross_pairs(group: np.ndarray, rows: np.ndarray) -> float:  # pairs within group − within group × camera
        return _pairs(_group_sizes(group[rows])) - _pairs(_group_sizes(np.column_stack([group, camids])[rows]))

    kept = np.flatnonzero(labels >= 0)
    _, truth_idx = np.unique(truth, return_inverse=True)
    together = cross_pairs(np.column_stack([labels, truth_idx.ravel()]), kept)
    predicted, actual = cross_pairs(labels, kept), cross_pairs(truth_idx.ravel(), np.arange(len(truth)))
    return {"cross_camera_pair_precision": together / predicted if predicted else 0.0,
            "cross_camera_pair_recall": together / actual if actual else 0.0}


def _group_sizes(keys: np.ndarray) -> np.ndarray:
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(keys.reshape(len(keys), -1), axis=0, return_counts=True)[1]


def epoch_statistics(labels: np.ndarray, camids: np.ndarray, previous: np.ndarray | None,
                     truth: np.ndarray | None) -> dict[str, float]:
    """Everything label-derived that one epoch records; ground-truth scores only when `truth` is given."""
    stats = {**size_statistics(labels), "multi_camera_share": multi_camera_share(labels, camids),
             "label_churn": label_churn(previous, labels)}
    quality = ({**label_quality(labels, truth), **cross_camera_pair_quality(labels, truth, camids)}
               if truth is not None else dict.fromkeys(GROUND_TRUTH_KEYS, float("nan")))
    return {**stats, **quality}
