"""DSFNet on real images (Market-1501, CUHK03; bench/real/): untrained, baseline, DSFNet and its leave-one-outs,
over seeds, on a validation split (every choice is made there) or on the official protocol (reported).

    # the official table of a profile (what `make bench-real MARKET=DIR` runs): seeds that informed no choice
    python bench/bench_real.py --dataset market1501 --root DIR/market1501 --protocol official \\
                               --profile cpu-imagenet --variants untrained baseline full --seeds 4 5 6
    # the validation protocol: a manifest of held-out training identities
    python bench/real/market_split.py --root DIR/market1501 --out DIR/market_val.csv      # once
    python bench/bench_real.py --manifest DIR/market_val.csv --protocol validation --profile cpu-imagenet \\
                               --variants baseline full full-finet full-scnet --seeds 1 2 3 [--eps 0.45 ...]

With --profile, the network, the training budget, the clustering and DSFNet's settings are the profile's
(profiles/<name>.yaml on top of the params defaults: what `python -m pipeline.profiles apply <name>` and `dvc
repro` train); --epochs/--iters/--size/--eps/--k1/--camera-norm/--memory-update/--set override single settings.
Variants: `baseline` (every part off), `full` (the parts the profile enables), `full-<part>` (full without one
part: the leave-one-out), `<part>[+<part>...]` (just those parts, each with its profile settings). Without
--profile the CPU recipe of params.yaml is used with --inits random (ResNet-18 from scratch) or imagenet
(MobileNetV2, last stride 1; `make imagenet-weights` first), and `full` means all three parts.

Each row is the last epoch's flip-averaged mAP / rank-1, pseudo-label purity and cross-camera pair recall
(the train ids score the pseudo-labels only; training never reads them), tagged with its dataset and protocol.
Rows already in --out with the same dataset, protocol, settings, enabled parts and memory format (model.memory_format:
a speed choice, but float rounding makes runs diverge, so rows compare on one code path) are skipped, so an
interrupted bench continues (CUHK03 rows: --manifest DIR/cuhk03.csv --out bench/results/real_cuhk03.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml
from bench_ablation import enabled_parts, retrieval, run_one, stored_parts

from dsfnet.cluster.knn import resolve_backend
from dsfnet.config import ClusterConfig, DSFNetConfig, ModelConfig, TrainConfig
from dsfnet.data import load_dataset
from dsfnet.models import build_model
from dsfnet.models.backbone import uses_channels_last
from dsfnet.trainer import seed_everything
from pipeline.profiles import profile_params

INITS = {"random": ModelConfig(arch="resnet18"),
         "imagenet": ModelConfig(arch="mobilenet_v2", pretrained="imagenet", last_stride=1)}
PARTS = ("finet", "scnet", "ddo")


def variant_method(variant: str, base: DSFNetConfig) -> DSFNetConfig:
    """The DSFNet settings of a variant name, each part's settings taken from `base` (the profile's)."""
    if variant == "baseline":
        on: set[str] = set()
    elif variant == "full":
        on = {part for part in PARTS if getattr(base, part).enabled}
    elif variant.startswith("full-") and variant[5:] in PARTS:
        on = {part for part in PARTS if getattr(base, part).enabled} - {variant[5:]}
    elif set(variant.split("+")) <= set(PARTS):
        on = set(variant.split("+"))
    else:
        raise SystemExit(f"variant {variant!r}: expected baseline, full, full-<part> or <part>[+<part>...] "
                         f"with parts {', '.join(PARTS)}")
    method = DSFNetConfig(*(replace(getattr(base, part), enabled=part in on) for part in PARTS))
    method.check()
    return method


def with_overrides(base: DSFNetConfig, overrides: dict[str, object]) -> DSFNetConfig:
    """`base` with {"scnet.sub_distance": 0.6, ...} set on its parts (not their `enabled` switches)."""
    for key, value in overrides.items():
        part, _, name = key.partition(".")
        if part not in PARTS or not hasattr(getattr(base, part), name) or name == "enabled":
            raise SystemExit(f"--set {key}: not a dsfnet.<finet|scnet|ddo>.<setting> (and not `enabled`)")
        base = replace(base, **{part: replace(getattr(base, part), **{name: value})})
    base.check()
    return base


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, by name: two untrained networks with it equal score the same."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def untrained(data, model_config: ModelConfig, seed: int, config: TrainConfig, earlier: list[dict] = ()) -> dict:
    """The network as built for `seed`, evaluated; or, when an `earlier` untrained row had exactly these weights
    (ImageNet weights and no randomly initialised layer: the seed changes nothing), that row under this seed."""
    seed_everything(seed)
    model = build_model(model_config)
    digest = weights_digest(model)
    same = next((r for r in earlier if r.get("weights_sha256") == digest), None)
    if same is not None:
        return {**same, "seed": seed, "same_weights_as_seed": same["seed"]}
    start = time.perf_counter()
    mean_ap, rank1 = retrieval(model, data, config)
    return {"variant": "untrained", "seed": seed, "mAP": mean_ap, "rank1": rank1, "purity": float("nan"),
            "pair_f1": float("nan"), "clusters": 0, "minutes": (time.perf_counter() - start) / 60, "method": None,
            "weights_sha256": digest}


def row_key(row: dict) -> tuple:
    """What a row was measured under, but its seed and variant name: (init, settings, parts, dataset, protocol,
    memory format)."""
    return (row["init"], row["settings"], stored_parts(row["method"]), row.get("dataset"), row.get("protocol"),
            row.get("memory_format", "contiguous"))


def last(row: dict, key: str) -> float:
    values = row.get(f"{key}_per_epoch") or [float("nan")]
    return values[-1]


def spread(values: np.ndarray) -> float:
    """The sample standard deviation over seeds (0 for one row): what the tables' ± means."""
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def table(rows: list[dict], inits: list[str], variants: list[str], seeds: list[int]) -> str:
    lines = [f"{'init':>8} {'variant':>11} {'runs':>4} {'mAP':>13} {'rank-1':>13} {'purity':>7} {'pair F1':>7} "
             f"{'x-cam R':>7} {'clusters':>8} {'min/run':>7}  seed: mAP / min"]
    for init in inits:
        for variant in variants:
            runs = [r for r in rows if (r["init"], r["variant"]) == (init, variant) and r["seed"] in seeds]
            if not runs:
                continue
            m, r1 = np.array([r["mAP"] for r in runs]), np.array([r["rank1"] for r in runs])
            lines.append(f"{init:>8} {variant:>11} {len(runs):>4} {m.mean():>6.2f} ± {spread(m):<5.2f} "
                         f"{r1.mean():>6.2f} ± {spread(r1):<5.2f} {np.mean([r['purity'] for r in runs]):>7.3f} "
                         f"{np.mean([r['pair_f1'] for r in runs]):>7.3f} "
                         f"{np.mean([last(r, 'cross_camera_pair_recall') for r in runs]):>7.3f} "
                         f"{np.mean([r['clusters'] for r in runs]):>8.0f} "
                         f"{np.mean([r['minutes'] for r in runs]):>7.1f}  "
                         + ", ".join(f"{r['seed']}: {r['mAP']:.2f} / {r['minutes']:.1f}"
                                     for r in sorted(runs, key=lambda r: r["seed"])))
    return "\n".join(lines)


def labelled(rows: list[dict], methods: dict[str, DSFNetConfig | None]) -> list[dict]:
    """Each row under every variant name whose parts it ran (a `full` with every part off is the baseline's
    row, which was trained once); untrained rows keep their name."""
    out = []
    for row in rows:
        names = [v for v, m in methods.items() if m is not None and enabled_parts(m) == stored_parts(row["method"])]
        out += [dict(row, variant=name) for name in names] or [row]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path,
                        help="a folder-reader CSV (bench/real/market_split.py, cuhk03_manifest.py)")
    source.add_argument("--root", type=Path, help="a dataset folder, read by --dataset's reader")
    parser.add_argument("--dataset", default="market1501", help="the reader for --root (any dsfnet.data reader)")
    parser.add_argument("--protocol", choices=["validation", "official"], required=True,
                        help="validation: held-out training identities (tuning); official: the dataset's test split")
    parser.add_argument("--profile", help="train as profiles/<name>.yaml does (e.g. cpu-imagenet)")
    parser.add_argument("--inits", nargs="+", choices=list(INITS), help="without --profile (default: both)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", default=["untrained", "baseline", "full"])
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--iters", type=int)
    parser.add_argument("--size", help="training and test input HEIGHTxWIDTH")
    parser.add_argument("--eps", type=float)
    parser.add_argument("--k1", type=int, help="k-reciprocal neighbourhood size of the clustering")
    parser.add_argument("--camera-norm", action=argparse.BooleanOptionalAction,
                        help="cluster on camera-normalised features")
    parser.add_argument("--camera-penalty", type=float, help="cluster.camera_penalty")
    parser.add_argument("--memory-update", choices=["momentum", "hardest"], help="train.memory_update")
    parser.add_argument("--set", nargs="*", default=[], metavar="PART.KEY=VALUE",
                        help="DSFNet settings for the variants that enable PART, e.g. scnet.sub_distance=0.7")
    parser.add_argument("--out", type=Path, default=Path("bench/results/real_market.json"))
    parser.add_argument("--save-models", type=Path, metavar="DIR",
                        help="keep each trained state dict as DIR/<init>-<variant>-seed<N>.pt")
    args = parser.parse_args()
    if args.profile:
        if args.inits:
            raise SystemExit("--inits: with --profile the network is the profile's (model.*)")
        params = profile_params(args.profile)
        model_configs = {"imagenet" if params.model.pretrained == "imagenet" else params.model.arch: params.model}
        config, cluster, base = params.train, params.cluster, params.dsfnet
    else:
        model_configs = {init: INITS[init] for init in args.inits or INITS}
        # the settings of the rows stored before --profile: 128x64, eps 0.6, no camera_norm unless asked
        config, cluster, base = TrainConfig(height=128, width=64), ClusterConfig(eps=0.6, camera_norm=False), \
            DSFNetConfig()
    if args.size:
        try:
            height, width = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--size {args.size}: expected HEIGHTxWIDTH, e.g. 128x64") from None
        config = replace(config, height=height, width=width)
    config = replace(config, device="cpu", **{k: v for k, v in (("epochs", args.epochs), ("iters", args.iters),
                                                                ("memory_update", args.memory_update))
                                               if v is not None})
    cluster = replace(cluster, **{k: v for k, v in (("eps", args.eps), ("k1", args.k1),
                                                    ("camera_norm", args.camera_norm),
                                                    ("camera_penalty", args.camera_penalty)) if v is not None})
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    base = with_overrides(base, overrides)
    methods = {v: None if v == "untrained" else variant_method(v, base) for v in args.variants}  # bad names: now
    settings = " ".join([f"e{config.epochs}x{config.iters} {config.height}x{config.width} eps{cluster.eps} "
                         f"camera_norm={cluster.camera_norm}",
                         *([f"k1={cluster.k1}"] if cluster.k1 != 30 else []),
                         *([f"camera_penalty={cluster.camera_penalty}"] if cluster.camera_penalty else []),
                         *([f"memory_update={config.memory_update}"] if config.memory_update != "momentum" else []),
                         *(f"{k}={v}" for k, v in sorted(overrides.items()))])
    data = load_dataset("folder", args.manifest) if args.manifest else load_dataset(args.dataset, args.root)
    dataset = args.manifest.stem if args.manifest else args.dataset  # e.g. market_val: the split rows were tuned on
    print(f"{args.manifest or args.root} ({dataset}, {args.protocol}): {len(data.train)} train, "
          f"{len(data.query)} query, {len(data.gallery)} gallery; {settings}"
          + (f"; profile {args.profile}" if args.profile else ""), flush=True)
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for init, model_config in model_configs.items():
        for seed in args.seeds:
            for variant, method in methods.items():
                parts = None if method is None else enabled_parts(method)
                memory_format = "channels_last" if uses_channels_last(model_config) else "contiguous"
                where = (init, settings, parts, dataset, args.protocol, memory_format)
                alike = [r for r in rows if row_key(r) == where and (method is not None or r["variant"] == "untrained")]
                if any(r["seed"] == seed for r in alike):
                    continue
                row = (untrained(data, model_config, seed, config, alike) if method is None else
                       run_one(data, variant, seed, config, cluster, model_config=model_config, settings=method,
                               save_to=args.save_models and args.save_models / f"{init}-{variant}-seed{seed}.pt"))
                rows.append({**row, "init": init, "settings": settings, "dataset": dataset,
                             "protocol": args.protocol, "profile": args.profile, "memory_format": memory_format,
                             # the clustering's search; rows before it: faiss
                             "knn_backend": resolve_backend(cluster.knn_backend, self_search=True)})
                args.out.write_text(json.dumps(rows, indent=1))
                print(f"{init:>8} {variant:>11} seed {seed}: mAP {row['mAP']:.2f} rank-1 {row['rank1']:.2f} "
                      f"purity {row['purity']:.3f} ({row['minutes']:.1f} min"
                      + (f"; the weights of seed {row['same_weights_as_seed']}, not re-evaluated)"
                         if "same_weights_as_seed" in row else ")"), flush=True)
    mine = labelled([r for r in rows if (r["settings"], r.get("dataset"), r.get("protocol")) ==
                     (settings, dataset, args.protocol)], methods)
    print(settings)
    print(table(mine, list(model_configs), list(methods), args.seeds))
    for variant, method in methods.items():
        if variant != "baseline" and method is not None and not any(enabled_parts(method).values()):
            print(f"{variant} enables no DSFNet part here (the profile's parts are off): its rows are the baseline's")


if __name__ == "__main__":
    main()
