"""DSFNet on real images (Market-1501, CUHK03; bench/real/): untrained, baseline, +each part and full DSFNet,
from random and from ImageNet initialisation, over seeds.

    # official protocol: train on bounding_box_train, query vs bounding_box_test (seeds that informed no choice)
    python bench/bench_real.py --dataset market1501 --root DIR/market1501 --protocol official --seeds 2 3 4
    # validation protocol (every choice is made here): a manifest of held-out training identities
    python bench/real/market_split.py --root DIR/market1501 --out DIR/market_val.csv      # once
    python bench/bench_real.py --manifest DIR/market_val.csv --protocol validation [--inits random imagenet]
                               [--variants untrained baseline finet scnet ddo full] [--epochs 12 --iters 40]
                               [--size 128x64] [--eps 0.6] [--camera-norm] [--set scnet.sub_distance=0.7 ...]
                               [--out bench/results/real_market.json]

random: ResNet-18 from scratch (the CPU default's network); imagenet: MobileNetV2 with ImageNet weights and
last stride 1 (`make imagenet-weights` first). Both use the CPU recipe of params.yaml otherwise. Each row
is the last epoch's flip-averaged mAP / rank-1 and pseudo-label purity (the train ids score the pseudo-labels
only; training never reads them), tagged with its dataset and protocol. Rows already in --out with the same
dataset, protocol and settings are skipped, so an interrupted bench continues. Tune on the validation protocol,
report on the official one with other seeds. (CUHK03 rows: --manifest DIR/cuhk03.csv --out
bench/results/real_cuhk03.json.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml
from bench_ablation import VARIANTS, enabled_parts, method, retrieval, run_one

from dsfnet.config import ClusterConfig, ModelConfig, TrainConfig
from dsfnet.data import load_dataset
from dsfnet.models import build_model
from dsfnet.trainer import seed_everything

INITS = {"random": ModelConfig(arch="resnet18"),
         "imagenet": ModelConfig(arch="mobilenet_v2", pretrained="imagenet", last_stride=1)}


def untrained(data, init: str, seed: int, config: TrainConfig) -> dict:
    seed_everything(seed)
    start = time.perf_counter()
    mean_ap, rank1 = retrieval(build_model(INITS[init]), data, config)
    return {"variant": "untrained", "seed": seed, "mAP": mean_ap, "rank1": rank1, "purity": float("nan"),
            "pair_f1": float("nan"), "clusters": 0, "minutes": (time.perf_counter() - start) / 60, "method": None}


def table(rows: list[dict], inits: list[str], variants: list[str], seeds: list[int]) -> str:
    lines = [f"{'init':>8} {'variant':>11} {'runs':>4} {'mAP':>13} {'rank-1':>13} {'purity':>7} {'pair F1':>7} "
             f"{'clusters':>8} {'min/run':>7}"]
    for init in inits:
        for variant in variants:
            runs = [r for r in rows if (r["init"], r["variant"]) == (init, variant) and r["seed"] in seeds]
            if not runs:
                continue
            m, r1 = np.array([r["mAP"] for r in runs]), np.array([r["rank1"] for r in runs])
            lines.append(f"{init:>8} {variant:>11} {len(runs):>4} {m.mean():>6.2f} ± {m.std():<5.2f} "
                         f"{r1.mean():>6.2f} ± {r1.std():<5.2f} {np.mean([r['purity'] for r in runs]):>7.3f} "
                         f"{np.mean([r['pair_f1'] for r in runs]):>7.3f} "
                         f"{np.mean([r['clusters'] for r in runs]):>8.0f} "
                         f"{np.mean([r['minutes'] for r in runs]):>7.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path,
                        help="a folder-reader CSV (bench/real/market_split.py, cuhk03_manifest.py)")
    source.add_argument("--root", type=Path, help="a dataset folder, read by --dataset's reader")
    parser.add_argument("--dataset", default="market1501", help="the reader for --root (any dsfnet.data reader)")
    parser.add_argument("--protocol", choices=["validation", "official"], required=True,
                        help="validation: held-out training identities (tuning); official: the dataset's test split")
    parser.add_argument("--inits", nargs="+", default=list(INITS), choices=list(INITS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", default=["untrained", "baseline", "finet", "scnet", "ddo", "full"],
                        choices=["untrained", *VARIANTS])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--size", default="128x64", help="training and test input HEIGHTxWIDTH")
    parser.add_argument("--eps", type=float, default=0.6)
    parser.add_argument("--k1", type=int, default=30, help="k-reciprocal neighbourhood size of the clustering")
    parser.add_argument("--camera-norm", action="store_true", help="cluster on camera-normalised features")
    parser.add_argument("--camera-penalty", type=float, default=0.0, help="cluster.camera_penalty")
    parser.add_argument("--set", nargs="*", default=[], metavar="PART.KEY=VALUE",
                        help="DSFNet settings for the variants that enable PART, e.g. scnet.sub_distance=0.7")
    parser.add_argument("--out", type=Path, default=Path("bench/results/real_market.json"))
    parser.add_argument("--save-models", type=Path, metavar="DIR",
                        help="keep each trained state dict as DIR/<init>-<variant>-seed<N>.pt")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.lower().split("x"))
    config = TrainConfig(epochs=args.epochs, iters=args.iters, height=height, width=width, device="cpu")
    cluster = ClusterConfig(eps=args.eps, camera_norm=args.camera_norm, k1=args.k1,
                            camera_penalty=args.camera_penalty)
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    method("full", overrides)  # a bad --set fails now, not after the first runs
    settings = " ".join([f"e{args.epochs}x{args.iters} {height}x{width} eps{args.eps} camera_norm={args.camera_norm}",
                         *([f"k1={args.k1}"] if args.k1 != 30 else []),
                         *([f"camera_penalty={args.camera_penalty}"] if args.camera_penalty else []),
                         *(f"{k}={v}" for k, v in sorted(overrides.items()))])
    data = load_dataset("folder", args.manifest) if args.manifest else load_dataset(args.dataset, args.root)
    dataset = args.manifest.stem if args.manifest else args.dataset  # e.g. market_val: the split rows were tuned on
    print(f"{args.manifest or args.root} ({dataset}, {args.protocol}): {len(data.train)} train, "
          f"{len(data.query)} query, {len(data.gallery)} gallery; "
          f"{settings}", flush=True)
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for init in args.inits:
        for seed in args.seeds:
            for variant in args.variants:
                parts = None if variant == "untrained" else enabled_parts(method(variant, overrides))
                if any((r["init"], r["variant"], r["seed"], r["settings"], r["method"], r.get("dataset"),
                        r.get("protocol")) == (init, variant, seed, settings, parts, dataset, args.protocol)
                       for r in rows):
                    continue
                row = (untrained(data, init, seed, config) if variant == "untrained" else
                       run_one(data, variant, seed, config, cluster, overrides, INITS[init],
                               save_to=args.save_models and args.save_models / f"{init}-{variant}-seed{seed}.pt"))
                rows.append({**row, "init": init, "settings": settings, "dataset": dataset,
                             "protocol": args.protocol})
                args.out.write_text(json.dumps(rows, indent=1))
                print(f"{init:>8} {variant:>11} seed {seed}: mAP {row['mAP']:.2f} rank-1 {row['rank1']:.2f} "
                      f"purity {row['purity']:.3f} ({row['minutes']:.1f} min)", flush=True)
    print(settings)
    print(table([r for r in rows if (r["settings"], r.get("dataset"), r.get("protocol")) ==
                 (settings, dataset, args.protocol)], args.inits, args.variants, args.seeds))


if __name__ == "__main__":
    main()
