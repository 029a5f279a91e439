"""How hard is the synthetic benchmark? Prints, per profile, generation time and training-free baselines.

    python bench/bench_synthetic_hardness.py [tiny default market]

colour-hist mAP / rank-1: retrieval with joint RGB histograms (no learning) on query × gallery.
camera confusion: P(d(same id, other camera) > d(other id, same camera)) on the train split.
"""

from __future__ import annotations

import sys
import tempfile
import time

import numpy as np

from dsfnet.baselines import camera_confusion, colour_histogram_features
from dsfnet.data import SyntheticConfig, generate_synthetic
from dsfnet.evaluation import compute_map_cmc, cosine_distance


def arrays(records):
    return np.array([r.pid for r in records]), np.array([r.camid for r in records])


def main(profiles: list[str]) -> None:
    print(f"{'profile':>8} {'train':>6} {'query':>6} {'gallery':>7} {'gen s':>6} {'hist mAP':>8} {'hist r1':>7} "
          f"{'cam confusion':>13}")
    for profile in profiles:
        with tempfile.TemporaryDirectory() as root:
            start = time.perf_counter()
            data = generate_synthetic(root, SyntheticConfig(profile=profile), progress=False)
            seconds = time.perf_counter() - start
            (qp, qc), (gp, gc) = arrays(data.query), arrays(data.gallery)
            q, g = colour_histogram_features(data.query), colour_histogram_features(data.gallery)
            mean_ap, cmc = compute_map_cmc(cosine_distance(q, g), qp, gp, qc, gc)
            train = data.train[:6000]  # the pairwise confusion is O(N²) in memory
            tp, tc = arrays(train)
            confusion = camera_confusion(colour_histogram_features(train), tp, tc)
            print(f"{profile:>8} {len(data.train):>6} {len(data.query):>6} {len(data.gallery):>7} {seconds:>6.1f} "
                  f"{100 * mean_ap:>7.1f}% {100 * cmc[0]:>6.1f}% {confusion:>13.3f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["tiny", "default"])
