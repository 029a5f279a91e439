"""SCNet's secondary clustering scored on trained features: does splitting beat a smaller DBSCAN eps?

    python bench/bench_scnet_split.py [--variant full] [--seed 1] [--epochs 12] [--iters 40]
                                      [--distances 0.4 0.5 0.6 0.7] [--eps 0.4 0.45 0.5]

Trains one ablation variant (the settings of bench/bench_ablation.py), embeds the training images with the
trained model, clusters them the way that variant's pseudo-labelling does (DDO's fused distance when DDO is
on), then scores against the ground-truth identities (which training never sees):
- DBSCAN alone at each --eps (the obvious alternative to splitting: a tighter radius),
- SCNet's split of the eps-0.5 clusters at each --distances (complete and average linkage).
This is the analysis behind SCNet's design choices in docs/method.md: complete linkage and its distance.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace

import numpy as np
from bench_ablation import VARIANTS, method  # bench/ is the script directory

from dsfnet.cluster import ClusterConfig
from dsfnet.data import SyntheticConfig, generate_synthetic
from dsfnet.features import extract_branches
from dsfnet.label_stats import label_quality
from dsfnet.models import ModelConfig, build_model
from dsfnet.trainer import TrainConfig, pseudo_labels, seed_everything, train


def score(name: str, labels: np.ndarray, truth: np.ndarray) -> str:
    q = label_quality(labels, truth)
    p, r = q["pair_precision"], q["pair_recall"]
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return (f"{name:<28} {labels.max() + 1:>8} {int((labels < 0).sum()):>8} {q['purity']:>7.3f} {p:>7.3f} "
            f"{r:>7.3f} {f1:>7.3f} {q['nmi']:>6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="full", choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--distances", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7])
    parser.add_argument("--eps", type=float, nargs="+", default=[0.4, 0.45, 0.5])
    args = parser.parse_args()
    settings = method(args.variant)
    config = TrainConfig(epochs=args.epochs, iters=args.iters, batch_size=64, num_instances=4, height=64, width=32,
                         workers=0, device="cpu", seed=args.seed)
    cluster = ClusterConfig(k1=30, k2=6, eps=0.5, min_samples=4, camera_norm=True)
    with tempfile.TemporaryDirectory() as root:
        data = generate_synthetic(root, SyntheticConfig(profile="default", height=128, width=64), progress=False)
        seed_everything(args.seed)
        model = build_model(ModelConfig(arch="resnet18"), settings)
        train(model, data.train, config, cluster, settings, progress=False)
        branches = extract_branches(model, data.train, config.height, config.width, progress=False)
    truth = np.array([r.pid for r in data.train])
    camids = np.array([r.camid for r in data.train])
    primary = replace(settings, scnet=replace(settings.scnet, enabled=False))
    last = args.epochs - 1  # DDO's λ schedule at the last epoch
    print(f"{args.variant} seed {args.seed}: {len(truth)} training images of {len(np.unique(truth))} identities")
    print(f"{'labels':<28} {'clusters':>8} {'outliers':>8} {'purity':>7} {'pair P':>7} {'pair R':>7} "
          f"{'pair F1':>7} {'NMI':>6}")
    for eps in args.eps:
        labels = pseudo_labels(branches, replace(cluster, eps=eps), primary, last, args.epochs, camids).labels
        print(score(f"DBSCAN eps {eps}", labels, truth))
    for linkage in ("complete", "average"):  # SCNet as training runs it: the eps-0.5 clusters, then the split
        for distance in args.distances:
            split = replace(settings, scnet=replace(settings.scnet, enabled=True, split=True, linkage=linkage,
                                                    sub_distance=distance))
            labels = pseudo_labels(branches, cluster, split, last, args.epochs, camids).labels
            print(score(f"eps 0.5 + {linkage} split {distance}", labels, truth))


if __name__ == "__main__":
    main()
