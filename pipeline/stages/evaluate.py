"""Stage `evaluate`: Market-protocol mAP and CMC of the trained model on query × gallery."""

from __future__ import annotations

import logging

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # the OO API: no pyplot, no GUI backend

from dsfnet.checkpoint import load_checkpoint
from dsfnet.data import read_manifest
from dsfnet.evaluation import compute_map_cmc, cosine_distance
from dsfnet.features import extract_features
from dsfnet.trainer import resolve_device
from pipeline import tracking
from pipeline.cli import run_stage
from pipeline.io import write_csv, write_json
from pipeline.params import Params
from pipeline.paths import CHECKPOINT, CMC_PLOT, CMC_PNG, MANIFEST, metrics_file

log = logging.getLogger(__name__)


def _arrays(records):
    return np.array([r.pid for r in records]), np.array([r.camid for r in records])


def evaluate(params: Params) -> None:
    """Write metrics/evaluate.json (mAP, rank-k in percent) and the CMC curve under reports/evaluate/."""
    dataset = read_manifest(MANIFEST, name=params.dataset.name)
    device = resolve_device(params.train.device)
    model, payload = load_checkpoint(CHECKPOINT, map_location=device)
    height, width = payload["input_size"]
    extract = dict(height=height, width=width, batch_size=params.evaluate.batch_size, device=device,
                   workers=params.train.workers)
    query = extract_features(model, dataset.query, desc="query features", **extract)
    gallery = extract_features(model, dataset.gallery, desc="gallery features", **extract)
    q_pids, q_cams = _arrays(dataset.query)
    g_pids, g_cams = _arrays(dataset.gallery)
    mean_ap, cmc = compute_map_cmc(cosine_distance(query, gallery), q_pids, g_pids, q_cams, g_cams,
                                   max_rank=params.evaluate.max_rank)
    metrics = {"mAP": 100 * mean_ap, **{f"rank{k}": 100 * float(cmc[k - 1]) for k in (1, 5, 10) if k <= len(cmc)},
               "num_query": len(dataset.query), "num_gallery": len(dataset.gallery)}

    curve = pd.DataFrame({"rank": np.arange(1, len(cmc) + 1), "cmc": 100 * cmc})
    write_csv(CMC_PLOT, curve)  # DVC plot (reports/evaluate also holds DVC's .gitignore: no dir swap)
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.plot(curve["rank"], curve["cmc"], marker=".")
    ax.set(xlabel="rank", ylabel="matching rate (%)", ylim=(0, 100),
           title=f"CMC — mAP {metrics['mAP']:.1f}%, rank-1 {metrics['rank1']:.1f}%")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = CMC_PNG.with_name(".cmc.tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(CMC_PNG)
    write_json(metrics_file("evaluate"), metrics)

    tracking.configure(params.mlflow)
    with mlflow.start_run(run_id=tracking.training_run_id()):
        mlflow.log_metrics({f"eval.{k}": v for k, v in tracking.finite(metrics).items()})
        mlflow.log_artifact(str(CMC_PNG), artifact_path="reports")
    log.info("mAP %.1f%%  rank-1 %.1f%%  rank-5 %.1f%%  rank-10 %.1f%%", metrics["mAP"], metrics["rank1"],
             metrics.get("rank5", float("nan")), metrics.get("rank10", float("nan")))


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", evaluate, argv)


if __name__ == "__main__":
    raise SystemExit(main())
