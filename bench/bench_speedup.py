"""The cpu-imagenet training run on the old and the new code path, side by side: wall time and mAP.

    python bench/bench_speedup.py [--seeds 1 2 3] [--paths old new] [--synthetic market] [--manifest CSV]
                                  [--parts finet scnet] [--out bench/results/speedup.json]

`old`: contiguous memory, PyTorch feature passes and faiss's CPU kNN (`model.memory_format: contiguous`,
`train.feature_runtime: torch`, `cluster.knn_backend: faiss`); `new`: the defaults (`auto`: channels-last MobileNetV2,
ONNX Runtime feature passes of 2,048+ images when the onnx extra is installed, torch's matrix-product kNN on the
CPU, or faiss's where `python -m dsfnet.warmup` measured it faster on this machine). Rows are keyed by their kNN
setting and by the backend it searched with, so rows of the new path from before the kNN switch, or from before
the per-machine choice, are not reused.
The switchable part of issue 27 only: the earlier speed-ups that are not switches
(glibc keeping freed memory, feature passes from the image cache, the numba warm-up) are in both paths, so the
ratio understates the gain over the code before the issue. Everything else is profile cpu-imagenet (ImageNet
MobileNetV2 at 128×64, its DSFNet parts and clustering; `--epochs 12` for the issue's 12 × 40, since the profile
trains 24 epochs from session 19 on), trained on the synthetic `market` profile (750
train identities, ~13k images; generated once into a temp folder) or on a folder-reader --manifest. Rows (minutes
of training, minutes of evaluation, mAP, rank-1, per-epoch phase seconds) are appended to --out and skipped when
already there (a row is keyed by its DSFNet parts too: `--parts` trains other parts than the profile's), so
the bench resumes; it prints, per path, mean ± std over the seeds and the new/old ratio of
training minutes. Run it on idle cores: one training at a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from bench_ablation import run_one
from bench_real import PARTS, variant_method

from dsfnet.cluster.knn import resolve_backend
from dsfnet.data import SyntheticConfig, generate_synthetic, load_dataset
from dsfnet.inference import resolve_runtime
from dsfnet.models.backbone import uses_channels_last
from pipeline.profiles import profile_params

# rows written before rows named their parts trained cpu-imagenet as it then was: FINet and SCNet
UNNAMED_PARTS = ["finet", "scnet"]
PATHS = {"old": {"memory_format": "contiguous", "feature_runtime": "torch", "knn_backend": "faiss"},
         "new": {"memory_format": "auto", "feature_runtime": "auto", "knn_backend": "auto"}}
UNNAMED_KNN = "faiss"  # rows written before rows named their kNN searched with faiss on the CPU


def knn_ran(row: dict) -> str:
    """The backend a row's kNN searched with: stored since the per-machine choice; before it `auto` was torch."""
    setting = row.get("knn_backend", UNNAMED_KNN)
    return row.get("knn_ran", "torch" if setting == "auto" else setting)


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS))
    parser.add_argument("--synthetic", default="market", help="synthetic profile to train on (tiny for a check)")
    parser.add_argument("--manifest", type=Path, help="a folder-reader CSV instead of synthetic images")
    parser.add_argument("--profile", default="cpu-imagenet")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--iters", type=int)
    parser.add_argument("--arch", help="another network than the profile's (e.g. for a quick check)")
    parser.add_argument("--parts", nargs="*", choices=PARTS,
                        help="the DSFNet parts to train (default: the profile's; none: the baseline)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/speedup.json"))
    args = parser.parse_args()
    params = profile_params(args.profile)
    if args.arch:
        params.model = replace(params.model, arch=args.arch)
    settings = params.dsfnet  # --parts: the profile's part settings with only those parts on (as bench_real)
    if args.parts is not None:
        settings = variant_method("+".join(args.parts) or "baseline", settings)
    parts = [p for p in PARTS if getattr(settings, p).enabled]
    config = replace(params.train, device="cpu", **{k: v for k, v in (("epochs", args.epochs), ("iters", args.iters))
                                                    if v is not None})
    dataset = args.manifest.stem if args.manifest else f"synthetic-{args.synthetic}"
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    mine_key = (dataset, args.profile, params.model.arch, config.epochs, config.iters, parts)

    def key(row: dict) -> tuple:
        return (row["dataset"], row["profile"], row["arch"], row["epochs"], row["iters"],
                row.get("parts", UNNAMED_PARTS), row.get("knn_backend", UNNAMED_KNN), knn_ran(row), row["seed"],
                row["path"])
    # the clustering's search on this machine, now
    searches = {path: resolve_backend(PATHS[path]["knn_backend"], self_search=True) for path in PATHS}
    with tempfile.TemporaryDirectory() as tmp:
        data = (load_dataset("folder", args.manifest) if args.manifest else
                generate_synthetic(tmp, SyntheticConfig(profile=args.synthetic, height=128, width=64), progress=False))
        print(f"{dataset}: {len(data.train)} train, {len(data.query)} query, {len(data.gallery)} gallery; "
              f"profile {args.profile}, {config.epochs} x {config.iters}, parts {'+'.join(parts) or 'none'}",
              flush=True)
        for seed in args.seeds:
            for path in args.paths:
                if any(key(r) == (*mine_key, PATHS[path]["knn_backend"], searches[path], seed, path) for r in rows):
                    continue
                model_config = replace(params.model, memory_format=PATHS[path]["memory_format"])
                path_config = replace(config, feature_runtime=PATHS[path]["feature_runtime"])
                cluster_config = replace(params.cluster, knn_backend=PATHS[path]["knn_backend"])
                row = run_one(data, "full", seed, path_config, cluster_config, model_config=model_config,
                              settings=settings)
                ran = {"channels_last": uses_channels_last(model_config),  # what `auto` resolved to here
                       "runtime": resolve_runtime(path_config.feature_runtime, model_config.arch,
                                                  images=len(data.train)),
                       "knn_ran": searches[path]}
                rows.append({**row, "dataset": dataset, "profile": args.profile, "arch": model_config.arch,
                             "epochs": config.epochs, "iters": config.iters, "parts": parts, "path": path,
                             **PATHS[path], **ran})
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(rows, indent=1))
                print(f"seed {seed} {path} (channels-last {ran['channels_last']}, {ran['runtime']}, "
                      f"kNN {ran['knn_ran']}): "
                      f"{row['minutes']:.1f} min training, mAP {row['mAP']:.2f}, "
                      f"rank-1 {row['rank1']:.2f}, evaluation {row['eval_minutes']:.1f} min", flush=True)
    mine = [r for r in rows if key(r)[:-4] == mine_key and key(r)[-4:-2] == (PATHS[r["path"]]["knn_backend"],
                                                                            searches[r["path"]])]
    print("\n| path | seeds | training minutes | evaluation minutes | mAP | rank-1 |\n|---|---|---|---|---|---|")
    minutes = {}
    for path in PATHS:
        done = [r for r in mine if r["path"] == path and r["seed"] in args.seeds]
        minutes[path] = [r["minutes"] for r in done]
        print(f"| {path} | {len(done)} | {mean_std(minutes[path])} | {mean_std([r['eval_minutes'] for r in done])} | "
              f"{mean_std([r['mAP'] for r in done])} | "
              f"{mean_std([r['rank1'] for r in done])} |")
    if minutes["old"] and minutes["new"]:
        print(f"new / old training time: {statistics.mean(minutes['new']) / statistics.mean(minutes['old']):.2f}")


if __name__ == "__main__":
    main()
