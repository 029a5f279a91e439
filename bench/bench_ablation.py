"""DSFNet ablation on the synthetic benchmark: baseline, +FINet, +SCNet, +DDO and full DSFNet over seeds.

    python bench/bench_ablation.py [--seeds 1 2 3] [--variants baseline finet scnet ddo full scnet+ddo scnet+finet]
                                   [--epochs 12] [--iters 40] [--profile default] [--camera-norm]
                                   [--size 64x32]
                                   [--set scnet.own_negatives=true ...] [--out bench/results/ablation.json]

Every run trains from scratch (ResNet-18, 64×32 unless --size, the CPU-default settings of params.yaml) on the
same generated data and reports last-epoch mAP / rank-1 (flip-averaged features) and the last epoch's
pseudo-label purity. Runs already in --out with the same settings (every enabled part's, defaults included) are
skipped, so an interrupted bench continues and a changed default is rerun.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from dsfnet.cluster import ClusterConfig
from dsfnet.config import DDOConfig, DSFNetConfig, FINetConfig, SCNetConfig
from dsfnet.data import SyntheticConfig, generate_synthetic
from dsfnet.evaluation import compute_map_cmc, cosine_distance
from dsfnet.features import extract_features
from dsfnet.models import ModelConfig, build_model
from dsfnet.trainer import TrainConfig, seed_everything, train

VARIANTS = {
    "baseline": (False, False, False),
    "finet": (True, False, False),
    "scnet": (False, True, False),
    "ddo": (False, False, True),
    "full": (True, True, True),
    "scnet+ddo": (False, True, True),  # full minus FINet (not in the default table)
    "scnet+finet": (True, True, False),  # full minus DDO (not in the default table)
}
MAIN_VARIANTS = ["baseline", "finet", "scnet", "ddo", "full"]


def method(variant: str, overrides: dict[str, object] | None = None) -> DSFNetConfig:
    """The variant's switches, then `overrides` ({"scnet.sub_distance": 0.6, ...}) on the part settings."""
    finet, scnet, ddo = VARIANTS[variant]
    config = DSFNetConfig(FINetConfig(enabled=finet), SCNetConfig(enabled=scnet), DDOConfig(enabled=ddo))
    for key, value in (overrides or {}).items():
        part, name = key.split(".")
        if not hasattr(getattr(config, part, None), name) or name == "enabled":
            raise SystemExit(f"--set {key}: not a dsfnet.<finet|scnet|ddo>.<setting> (and not `enabled`)")
        setattr(getattr(config, part), name, value)
    config.check()
    return config


def enabled_parts(settings: DSFNetConfig) -> dict[str, object]:
    """The settings of each enabled part: what a stored run is matched on, so a changed default reruns it."""
    return {name: asdict(part) if part.enabled else False
            for name, part in (("finet", settings.finet), ("scnet", settings.scnet), ("ddo", settings.ddo))}


PART_DEFAULTS = {"finet": FINetConfig, "scnet": SCNetConfig, "ddo": DDOConfig}


def stored_parts(method: dict | None) -> dict | None:
    """A stored row's `method` with the settings added since it was written at their defaults: a new switch's
    default is the old behaviour, so a row from before the switch is the same run as one at its default."""
    if not method:
        return method
    return {name: {**asdict(PART_DEFAULTS[name]()), **value} if isinstance(value, dict) else value
            for name, value in method.items()}


def arrays(records):
    return np.array([r.pid for r in records]), np.array([r.camid for r in records])


def retrieval(model, data, config: TrainConfig) -> tuple[float, float]:
    """(mAP, rank-1) in percent of flip-averaged features on the query × gallery protocol."""
    q, g = (extract_features(model, records, config.height, config.width, flip=True, progress=False,
                             runtime=config.feature_runtime) for records in (data.query, data.gallery))
    (qp, qc), (gp, gc) = arrays(data.query), arrays(data.gallery)
    mean_ap, cmc = compute_map_cmc(cosine_distance(q, g), qp, gp, qc, gc)
    return 100 * mean_ap, 100 * float(cmc[0])


def run_one(data, variant: str, seed: int, config: TrainConfig, cluster: ClusterConfig,
            overrides: dict[str, object] | None = None, model_config: ModelConfig | None = None,
            save_to: Path | None = None, settings: DSFNetConfig | None = None) -> dict:
    """Train one variant and score it; `save_to` keeps the trained state dict (for bench/real/cluster_probe.py).

    `settings`, when given, is the variant's DSFNet configuration as is (else `method(variant, overrides)`).
    """
    settings = settings or method(variant, overrides)
    seed_everything(seed)
    model = build_model(model_config or ModelConfig(arch="resnet18"), settings)
    start = time.perf_counter()
    result = train(model, data.train, replace(config, seed=seed), cluster, settings, progress=False)
    minutes = (time.perf_counter() - start) / 60
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), save_to)
    start = time.perf_counter()
    mean_ap, rank1 = retrieval(model, data, config)
    eval_minutes = (time.perf_counter() - start) / 60
    last = result.history[-1]
    return {"variant": variant, "seed": seed, "mAP": mean_ap, "rank1": rank1,
            "purity": last.purity, "clusters": last.num_clusters, "pair_f1": _f1(last), "minutes": minutes,
            "eval_minutes": eval_minutes,
            "purity_per_epoch": [h.purity for h in result.history],
            "pair_precision_per_epoch": [h.pair_precision for h in result.history],
            "pair_recall_per_epoch": [h.pair_recall for h in result.history],
            "cross_camera_pair_recall_per_epoch": [h.cross_camera_pair_recall for h in result.history],
            "clusters_per_epoch": [h.num_clusters for h in result.history],
            "largest_cluster_per_epoch": [h.max_cluster_size for h in result.history],
            "outliers_per_epoch": [h.num_outliers for h in result.history], "method": enabled_parts(settings),
            **{f"{phase}_per_epoch": [getattr(h, phase) for h in result.history]
               for phase in ("extract_s", "knn_s", "jaccard_s", "dbscan_s", "train_s")}}


def _f1(stats) -> float:
    p, r = stats.pair_precision, stats.pair_recall
    return 2 * p * r / (p + r) if p + r else 0.0


def table(rows: list[dict], variants: list[str], seeds: list[int]) -> str:
    lines = [f"{'variant':>11} {'runs':>4} {'mAP':>12} {'rank-1':>12} {'purity':>7} {'pair F1':>7} {'min/run':>7}"]
    for variant in variants:
        runs = [r for r in rows if r["variant"] == variant and r["seed"] in seeds]
        if not runs:
            continue
        m, r1 = np.array([r["mAP"] for r in runs]), np.array([r["rank1"] for r in runs])
        lines.append(f"{variant:>11} {len(runs):>4} {m.mean():>6.2f} ± {m.std():<4.2f} {r1.mean():>6.2f} ± "
                     f"{r1.std():<4.2f} {np.mean([r['purity'] for r in runs]):>7.3f} "
                     f"{np.mean([r['pair_f1'] for r in runs]):>7.3f} {np.mean([r['minutes'] for r in runs]):>7.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", default=MAIN_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--eps", type=float, default=0.5)
    parser.add_argument("--size", default="64x32", help="training and test input HEIGHTxWIDTH (the images are 128x64)")
    parser.add_argument("--camera-norm", action="store_true", help="cluster on camera-normalised features")
    parser.add_argument("--set", nargs="*", default=[], metavar="PART.KEY=VALUE",
                        help="DSFNet settings for the variants that enable PART, e.g. scnet.own_negatives=true")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ablation.json"))
    args = parser.parse_args()
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size {args.size}: expected HEIGHTxWIDTH, e.g. 128x64") from None
    config = TrainConfig(epochs=args.epochs, iters=args.iters, batch_size=64, num_instances=4, height=height,
                         width=width, workers=0, device="cpu")
    cluster = ClusterConfig(k1=30, k2=6, eps=args.eps, min_samples=4, camera_norm=args.camera_norm)
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    method("full", overrides)  # a bad --set fails now, not after the first runs
    size = "" if args.size == "64x32" else f" size={height}x{width}"  # stored runs before --size were 64x32
    settings = " ".join([f"{args.profile} e{args.epochs}x{args.iters} eps{args.eps} "
                         f"camera_norm={args.camera_norm}{size}",
                         *(f"{k}={v}" for k, v in sorted(overrides.items()))])
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []  # every setting's runs stay in the file
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def done(variant: str, seed: int) -> bool:
        parts = enabled_parts(method(variant, overrides))
        return any((r["variant"], r["seed"], r.get("settings"), stored_parts(r.get("method")))
                   == (variant, seed, settings, parts)
                   for r in rows)

    # baseline and full over every seed first: the comparison that matters lands first
    first = [v for v in ("baseline", "full") if v in args.variants]
    plan = [(v, s) for v in first for s in args.seeds]
    plan += [(v, s) for s in args.seeds for v in args.variants if v not in first]
    with tempfile.TemporaryDirectory() as root:
        data = generate_synthetic(root, SyntheticConfig(profile=args.profile, height=128, width=64), progress=False)
        print(f"synthetic/{args.profile}: {len(data.train)} train, {len(data.query)} query, "
              f"{len(data.gallery)} gallery; {settings}", flush=True)
        for variant, seed in plan:
            if done(variant, seed):
                continue
            row = run_one(data, variant, seed, config, cluster, overrides)
            row["settings"] = settings
            rows.append(row)
            args.out.write_text(json.dumps(rows, indent=1))
            print(f"{variant:>9} seed {seed}: mAP {row['mAP']:.2f} rank-1 {row['rank1']:.2f} "
                  f"purity {row['purity']:.3f} ({row['minutes']:.1f} min)", flush=True)
    print(settings)
    print(table([r for r in rows if r.get("settings") == settings], args.variants, args.seeds))

if __name__ == "__main__":
    main()
