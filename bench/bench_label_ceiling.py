"""Why the offline default needs camera-normalised clustering, and what perfect pseudo-labels would give.

    python bench/bench_label_ceiling.py [--epochs 12]

1. Pseudo-label quality of a randomly initialised network (seed 1) on the synthetic default train split:
   purity / pairwise precision / recall at eps 0.4–0.6, on raw and on camera-normalised features.
2. The ceiling: the baseline trained for the same budget on ground-truth identities instead of pseudo-labels
   (the trainer's pseudo-label step replaced), evaluated like bench_ablation.py.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

import dsfnet.trainer as trainer
from dsfnet.cluster import ClusterConfig, cluster_features
from dsfnet.cluster.dbscan import camera_normalise
from dsfnet.config import DSFNetConfig
from dsfnet.data import SyntheticConfig, generate_synthetic
from dsfnet.evaluation import compute_map_cmc, cosine_distance
from dsfnet.features import extract_branches, extract_features
from dsfnet.label_stats import label_quality
from dsfnet.models import ModelConfig, build_model


def arrays(records):
    return np.array([r.pid for r in records]), np.array([r.camid for r in records])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        data = generate_synthetic(root, SyntheticConfig(profile="default"), progress=False)
        truth, camids = arrays(data.train)
        torch.manual_seed(1)
        model = build_model(ModelConfig())
        features = extract_branches(model, data.train, 64, 32, progress=False)["global"]
        print(f"{'features':>16} {'eps':>4} {'clusters':>8} {'outliers':>8} {'purity':>7} {'pair P':>7} {'pair R':>7}")
        for name, x in (("raw", features), ("camera-normalised", camera_normalise(features, camids))):
            for eps in (0.4, 0.5, 0.6):
                labels = cluster_features(x, ClusterConfig(eps=eps)).labels
                q = label_quality(labels, truth)
                print(f"{name:>16} {eps:>4} {labels.max() + 1:>8} {(labels < 0).sum():>8} {q['purity']:>7.3f} "
                      f"{q['pair_precision']:>7.3f} {q['pair_recall']:>7.3f}")

        _, ids = np.unique(truth, return_inverse=True)
        trainer.pseudo_labels = lambda *_, **__: trainer.EpochLabels(ids.copy(), {"knn_s": 0.0, "jaccard_s": 0.0,
                                                                                   "dbscan_s": 0.0}, None, {})
        trainer.seed_everything(1)
        model = build_model(ModelConfig())
        config = trainer.TrainConfig(epochs=args.epochs, iters=40, batch_size=64, height=64, width=32, workers=0,
                                     device="cpu")
        trainer.train(model, data.train, config, ClusterConfig(eps=0.5), DSFNetConfig.baseline(), progress=False)
        q = extract_features(model, data.query, 64, 32, flip=True, progress=False)
        g = extract_features(model, data.gallery, 64, 32, flip=True, progress=False)
        (qp, qc), (gp, gc) = arrays(data.query), arrays(data.gallery)
        mean_ap, cmc = compute_map_cmc(cosine_distance(q, g), qp, gp, qc, gc)
        print(f"ground-truth labels, {args.epochs} epochs × 40 iters: mAP {100 * mean_ap:.2f} "
              f"rank-1 {100 * cmc[0]:.2f}")


if __name__ == "__main__":
    main()
