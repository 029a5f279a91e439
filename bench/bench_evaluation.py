"""Market-protocol evaluation speed and memory at benchmark sizes.

    python bench/bench_evaluation.py              # Market-1501 (3,368 × 15,913) and MSMT17 (11,659 × 82,161)
    python bench/bench_evaluation.py market       # one of them

One subprocess per size, so peak RSS is per size. "peak MB" is above the distance matrix itself.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import numpy as np

SIZES = {"market": (3368, 15913, 751, 6), "msmt": (11659, 82161, 3060, 15)}


def measure(name: str) -> dict:
    from dsfnet.evaluation import compute_map_cmc

    num_q, num_g, ids, cams = SIZES[name]
    rng = np.random.default_rng(0)
    q_pids, g_pids = rng.integers(0, ids, num_q), rng.integers(0, ids, num_g)
    q_cams, g_cams = rng.integers(0, cams, num_q), rng.integers(0, cams, num_g)
    distmat = np.empty((num_q, num_g), dtype=np.float32)
    for start in range(0, num_q, 512):  # identities closer than strangers, plus noise: a realistic ranking
        rows = slice(start, start + 512)
        distmat[rows] = rng.random((len(distmat[rows]), num_g), dtype=np.float32)
        distmat[rows] -= 0.5 * (q_pids[rows, None] == g_pids[None, :])
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    mean_ap, cmc = compute_map_cmc(distmat, q_pids, g_pids, q_cams, g_cams)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_mb
    return {"name": name, "queries": num_q, "gallery": num_g, "seconds": seconds, "peak_mb": peak,
            "distmat_mb": distmat.nbytes / 2**20, "mAP": 100 * mean_ap, "rank1": 100 * cmc[0]}


def main(names: list[str]) -> None:
    print(f"{'size':>7} {'queries':>8} {'gallery':>8} {'seconds':>8} {'distmat MB':>10} {'peak MB':>8}")
    for name in names:
        out = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['name']:>7} {r['queries']:>8} {r['gallery']:>8} {r['seconds']:>8.2f} {r['distmat_mb']:>10.0f} "
              f"{r['peak_mb']:>8.0f}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(measure(sys.argv[2])))
    else:
        main(sys.argv[1:] or list(SIZES))
