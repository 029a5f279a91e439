"""Compile the numba kernels ahead and pick this CPU's kNN search: `python -m dsfnet.warmup` (run by `make install`).

numba caches compiled kernels next to their source (`__pycache__`, or NUMBA_CACHE_DIR), so after this a fresh
clone's first epoch loads the k-reciprocal Jaccard kernels instead of compiling them inside its clock
(about 20 s on 2 cores), and its first evaluation loads the ranking kernel. The inputs have the dtypes the
pipeline passes, since numba compiles (and caches) one version per argument type.

It also times faiss's, torch's and the symmetric exact kNN once on this machine (`dsfnet.cluster.knn_choice`,
~10 s) so that `cluster.knn_backend: auto` searches with the fastest from then on; `--remeasure` times them again.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def warm_up() -> dict[str, float]:
    """Seconds spent in each group of kernels (compiling on the first run, loading from the cache after)."""
    from dsfnet.cluster import jaccard_distance
    from dsfnet.evaluation import compute_map_cmc

    rng = np.random.default_rng(0)
    features = rng.standard_normal((64, 16)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    seconds = {}
    start = time.perf_counter()
    jaccard_distance(features, k1=10, k2=3)
    seconds["jaccard"] = time.perf_counter() - start
    pids, camids = rng.integers(0, 4, 24), rng.integers(0, 3, 24)
    start = time.perf_counter()
    for dtype in (np.float32, np.float64):  # the pipeline passes float32; user code may pass float64
        compute_map_cmc(rng.random((8, 16)).astype(dtype), pids[:8], pids[8:], camids[:8], camids[8:])
    seconds["evaluation"] = time.perf_counter() - start
    return seconds


def choose_knn_backend(remeasure: bool = False) -> str:
    """Measure faiss against torch here unless this machine's choice is stored; say what `auto` uses."""
    from dsfnet.cluster import knn_choice

    record = None if remeasure else knn_choice.stored_choice()
    verb = "kept"
    if record is None:
        record, verb = knn_choice.measure(), "measured"
    times = ", ".join(f"{name} {s:.2f} s" for name, s in record["seconds"].items())
    n, dim, k = record["shape"]
    return (f"kNN backend for cluster.knn_backend auto on this CPU: {record['backend']}, and for a set against "
            f"itself (the clustering's search) {record['self_search']} ({verb}: {times} for {n} x {dim} floats, "
            f"k {k}; {knn_choice.choice_path()})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--remeasure", action="store_true", help="time the kNN backends again")
    args = parser.parse_args(argv)
    timings = warm_up()
    print("numba kernels ready: " + ", ".join(f"{name} {s:.1f} s" for name, s in timings.items()))
    print(choose_knn_backend(args.remeasure))


if __name__ == "__main__":
    main()
