"""Retrieval metrics under the Market-1501 protocol: non-interpolated mAP and CMC."""

from __future__ import annotations

import numpy as np


def cosine_distance(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """1 - cos for L2-normalised features (same ranking as squared Euclidean)."""
    return 1.0 - query.astype(np.float32) @ gallery.astype(np.float32).T


def compute_map_cmc(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
) -> tuple[float, np.ndarray]:
    """(mAP in [0, 1], CMC curve of length max_rank).

    For each query, gallery images of the same identity from the same camera are ignored; queries with
    no remaining true match are skipped (as in torchreid). AP is the mean precision at each true match.
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    num_q, num_g = distmat.shape
    if num_q != len(q_pids) or num_g != len(g_pids):
        raise ValueError(f"distmat shape {distmat.shape} does not match {len(q_pids)} queries × {len(g_pids)} gallery")
    max_rank = min(max_rank, num_g)
    order = np.argsort(distmat, axis=1, kind="stable")
    matches = g_pids[order] == q_pids[:, None]
    cmc_sum = np.zeros(max_rank)
    aps = []
    for q in range(num_q):
        keep = ~((g_pids[order[q]] == q_pids[q]) & (g_camids[order[q]] == q_camids[q]))
        hits = matches[q][keep]
        if not hits.any():
            continue
        first = int(np.argmax(hits))
        if first < max_rank:
            cmc_sum[first:] += 1
        hit_ranks = np.flatnonzero(hits) + 1
        aps.append(np.mean(np.arange(1, hit_ranks.size + 1) / hit_ranks))
    if not aps:
        raise ValueError("no query has a true match in the gallery from another camera")
    return float(np.mean(aps)), cmc_sum / len(aps)
