"""How good are the first pseudo-labels? Cluster one network's train features over a grid of clustering
settings and score them against the manifest's (monitoring-only) train ids, without training.

    python bench/real/cluster_probe.py --manifest DIR/cuhk03.csv [--eps 0.4 0.5 0.6] [--k1 20 30] [--size 128x64]
                                       [--checkpoint model.pt]
    python bench/real/cluster_probe.py --manifest DIR/market_val.csv --profile cpu-imagenet --parts scnet ddo \
                                       --checkpoint DIR/imagenet-full-seed4.pt --ddo-part-pairs all same_camera

The first epoch's labels decide what the network learns first; on real images they are the cheapest place
to choose `cluster.eps`, `cluster.k1` and `cluster.camera_norm` (a grid here costs one feature pass).
With `--profile` and `--ddo-part-pairs`, the profile's own clustering (the trainer's `pseudo_labels`: DDO's
fused distance, SCNet's proxies) is scored on the checkpoint's features for each `dsfnet.ddo.part_pairs`,
next to the same clustering with DDO off: what DDO's part term does to the labels of one trained network.
`--parts` names the parts the checkpoint was trained with, each with the profile's settings for it, where the
profile has them off (cpu-imagenet since session 21).
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dsfnet.cluster.dbscan import camera_normalise, dbscan_labels, within
from dsfnet.cluster.jaccard import jaccard_distance
from dsfnet.cluster.knn import camera_penalised_knn
from dsfnet.cluster.scnet import secondary_clustering
from dsfnet.config import DSFNetConfig, ModelConfig
from dsfnet.data import load_dataset
from dsfnet.features import extract_branches, extract_features
from dsfnet.label_stats import cross_camera_pair_quality, label_quality, multi_camera_share
from dsfnet.models import build_model
from dsfnet.trainer import pseudo_labels
from pipeline.profiles import profile_params


def row(labels: np.ndarray, truth: np.ndarray, camids: np.ndarray) -> str:
    q = label_quality(labels, truth)
    p, r = q["pair_precision"], q["pair_recall"]
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    largest = np.bincount(labels[labels >= 0]).max() if (labels >= 0).any() else 0
    cross = cross_camera_pair_quality(labels, truth, camids)
    xp, xr = cross["cross_camera_pair_precision"], cross["cross_camera_pair_recall"]
    return (f"{labels.max() + 1:>8} {(labels < 0).sum():>8} {q['purity']:>6.3f} {p:>9.3f} {r:>6.3f} {f1:>5.3f} "
            f"{multi_camera_share(labels, camids):>8.3f} {largest:>7} {xp:>6.3f} {xr:>6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--pretrained", default="imagenet")
    parser.add_argument("--checkpoint", type=Path, help="a state dict to load (bench_real.py --save-models)")
    parser.add_argument("--variant", choices=["baseline", "full"], default="baseline",
                        help="the network the checkpoint was trained as (full: with FINet's part branches)")
    parser.add_argument("--size", default="128x64")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    parser.add_argument("--k1", type=int, nargs="+", default=[20, 30])
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--min-samples", type=int, default=4)
    parser.add_argument("--camera-norm", type=int, nargs="+", default=[0, 1], choices=[0, 1])
    parser.add_argument("--camera-penalty", type=float, nargs="+", default=[0.0],
                        help="lower same-camera similarities by this much before the k-reciprocal search")
    parser.add_argument("--sub-distances", type=float, nargs="*", default=[],
                        help="also score SCNet's split of each clustering at these sub_distance values")
    parser.add_argument("--profile", help="with --ddo-part-pairs: the network and clustering of profiles/<name>.yaml")
    parser.add_argument("--ddo-part-pairs", nargs="+", choices=["all", "same_camera"],
                        help="score the profile's clustering with each dsfnet.ddo.part_pairs (and with DDO off)")
    parser.add_argument("--parts", nargs="+", choices=["finet", "scnet", "ddo"],
                        help="with --ddo-part-pairs: the DSFNet parts the checkpoint was trained with, each with the "
                             "profile's settings for it (default: the profile's own parts)")
    args = parser.parse_args()
    if args.ddo_part_pairs:
        if not args.profile:
            raise SystemExit("--ddo-part-pairs needs --profile (the network and clustering to score)")
        probe_ddo(args)
        return
    height, width = (int(v) for v in args.size.lower().split("x"))
    data = load_dataset("folder", args.manifest)
    settings = DSFNetConfig.baseline() if args.variant == "baseline" else DSFNetConfig()
    model = build_model(replace(ModelConfig(), arch=args.arch, pretrained=args.pretrained, last_stride=1), settings)
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
    start = time.perf_counter()
    features = extract_features(model, data.train, height, width, progress=False)
    print(f"{len(features)} train features {features.shape[1]}-d in {time.perf_counter() - start:.0f} s")
    truth = np.array([r.pid for r in data.train])
    camids = np.array([r.camid for r in data.train])
    print(f"{'camnorm':>7} {'pen':>4} {'k1':>3} {'eps':>5} {'clusters':>8} {'outliers':>8} {'purity':>6} "
          f"{'precision':>9} {'recall':>6} {'F1':>5} {'multicam':>8} {'largest':>7}")
    for camera_norm, k1, penalty in itertools.product(args.camera_norm, args.k1, args.camera_penalty):
        x = camera_normalise(features, camids) if camera_norm else features
        distance = jaccard_distance(x, k1=k1, k2=args.k2, neighbours=camera_penalised_knn(x, k1, camids, penalty))
        for eps in args.eps:
            labels = dbscan_labels(within(distance, eps), eps, args.min_samples)
            print(f"{camera_norm!s:>7} {penalty:>4.2f} {k1:>3} {eps:>5.2f} {row(labels, truth, camids)}", flush=True)
            for sub_distance in args.sub_distances:
                split = secondary_clustering(x, labels, sub_distance, min_size=4).assignment
                print(f"{'  SCNet':>7} {sub_distance:>4.2f} {'':>9} {row(split, truth, camids)}", flush=True)


def probe_ddo(args: argparse.Namespace) -> None:
    """The profile's pseudo-labels on one network's train branches, per `ddo.part_pairs` and with DDO off."""
    params = profile_params(args.profile)
    method, cluster, train = params.dsfnet, params.cluster, params.train
    if args.parts:
        method = replace(method, **{part: replace(getattr(method, part), enabled=part in args.parts)
                                    for part in ("finet", "scnet", "ddo")})
    if not method.ddo.enabled:
        raise SystemExit(f"--ddo-part-pairs: DDO is off (profile {args.profile} has dsfnet.ddo.enabled false); name "
                         f"the checkpoint's parts, e.g. --parts scnet ddo")
    data = load_dataset("folder", args.manifest)
    model = build_model(params.model, method)
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
    start = time.perf_counter()
    branches = extract_branches(model, data.train, train.height, train.width, progress=False)
    print(f"{len(data.train)} train images, branches in {time.perf_counter() - start:.0f} s; profile "
          f"{args.profile}: eps {cluster.eps}, k1 {cluster.k1}, camera_norm {cluster.camera_norm}")
    truth = np.array([r.pid for r in data.train])
    camids = np.array([r.camid for r in data.train])
    print(f"{'clustering':<27} {'clusters':>8} {'outliers':>8} {'purity':>6} {'precision':>9} {'recall':>6} "
          f"{'F1':>5} {'multicam':>8} {'largest':>7} {'x-cam P':>6} {'x-cam R':>6}")
    variants = {f"DDO part_pairs {pairs}": replace(method, ddo=replace(method.ddo, part_pairs=pairs))
                for pairs in args.ddo_part_pairs}
    variants["DDO off"] = replace(method, ddo=replace(method.ddo, enabled=False))
    for name, settings in variants.items():
        labels = pseudo_labels(branches, cluster, settings, train.epochs - 1, train.epochs, camids)
        extra = f" (lambda_t {labels.extra['lambda_t']:.3f})" if "lambda_t" in labels.extra else ""
        print(f"{name:<27} {row(labels.labels, truth, camids)}{extra}", flush=True)


if __name__ == "__main__":
    main()
