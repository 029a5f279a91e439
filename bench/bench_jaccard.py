"""Pseudo-label engine figures: kNN vs k-reciprocal Jaccard vs DBSCAN time, and peak memory.

    python bench/bench_jaccard.py 12936 32621      # one subprocess per N, so peak RSS is per size

Features: L2-normalised, 2048-d, identities as centres plus noise (~17 images an identity, like
Market-1501), so neighbourhoods look like ReID. "ratio" is Jaccard time (kNN included) / bare kNN time.
"Jaccard MB" / "peak MB": peak RSS above the features after the Jaccard step / after DBSCAN (which, as in
training, gets only the pairs within eps).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import numpy as np


def clustered(n: int, dim: int = 2048, per_id: int = 17, noise: float = 1.2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // per_id), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(len(centres), size=n)]
    x += noise / np.sqrt(dim) * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def measure(n: int, k1: int = 30, k2: int = 6) -> dict:
    from dsfnet.cluster import dbscan_labels, jaccard_distance, knn_search
    from dsfnet.cluster.dbscan import within

    jaccard_distance(clustered(200), k1=k1, k2=k2)  # compile (or load) the kernels before measuring
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    x = clustered(n)
    base_mb += x.nbytes / 2**20  # "above the features": what the engine adds to the array it is given
    repeats = 2 if n <= 40_000 else 1  # best of two where affordable: both timings equally warm
    knn_s = jaccard_s = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        knn_search(x, k1)
        knn_s = min(knn_s, time.perf_counter() - start)
        distance = None  # free the previous result before measuring the next one
        start = time.perf_counter()
        distance = jaccard_distance(x, k1=k1, k2=k2)
        jaccard_s = min(jaccard_s, time.perf_counter() - start)
    jaccard_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    nnz_per_row = distance.nnz / n
    start = time.perf_counter()
    pruned = within(distance, 0.6)  # as training does: DBSCAN only needs the pairs within eps
    del distance
    labels = dbscan_labels(pruned, eps=0.6, min_samples=4)
    dbscan_s = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "knn_s": knn_s, "jaccard_s": jaccard_s, "dbscan_s": dbscan_s, "ratio": jaccard_s / knn_s,
            "features_mb": x.nbytes / 2**20, "jaccard_peak_mb": jaccard_peak_mb - base_mb,
            "peak_above_features_mb": peak_mb - base_mb, "nnz_per_row": nnz_per_row,
            "clusters": int(labels.max() + 1)}


def main(sizes: list[int]) -> None:
    print(f"{'N':>7} {'kNN s':>7} {'Jaccard s':>9} {'ratio':>6} {'DBSCAN s':>8} {'Jaccard MB':>10} {'peak MB':>8} "
          f"{'nnz/row':>8} {'clusters':>8}")
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['n']:>7} {r['knn_s']:>7.2f} {r['jaccard_s']:>9.2f} {r['ratio']:>6.2f} {r['dbscan_s']:>8.2f} "
              f"{r['jaccard_peak_mb']:>10.0f} {r['peak_above_features_mb']:>8.0f} {r['nnz_per_row']:>8.0f} "
              f"{r['clusters']:>8}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(measure(int(sys.argv[2]))))
    else:
        main([int(a) for a in sys.argv[1:]] or [2000, 12936])
