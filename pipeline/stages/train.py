"""Stage `train`: unsupervised training on the manifest's train split, tracked in MLflow."""

from __future__ import annotations

import logging
import math
import time

import mlflow
import numpy as np
import pandas as pd

from dsfnet.checkpoint import save_checkpoint
from dsfnet.data import read_manifest
from dsfnet.models import build_model
from dsfnet.trainer import EpochStats, train
from pipeline import tracking
from pipeline.cli import StageFailed, run_stage
from pipeline.io import write_csv, write_json
from pipeline.params import Params
from pipeline.paths import CHECKPOINT, EPOCH_LABELS, EPOCH_STATS, MANIFEST, RUN_INFO, metrics_file

log = logging.getLogger(__name__)


def train_stage(params: Params) -> None:
    """Train the model; write models/, reports/train/ and metrics/train.json."""
    dataset = read_manifest(MANIFEST, name=params.dataset.name)
    if len(dataset.train) < params.cluster.min_samples:
        raise StageFailed(f"train split has {len(dataset.train)} images, fewer than "
                          f"cluster.min_samples={params.cluster.min_samples}")
    model = build_model(params.model)
    tracking.configure(params.mlflow)
    labels_per_epoch: dict[str, np.ndarray] = {}

    def on_epoch_end(stats: EpochStats, labels: np.ndarray) -> None:
        mlflow.log_metrics(tracking.finite(stats.as_dict()), step=stats.epoch)
        labels_per_epoch[f"epoch_{stats.epoch}"] = labels

    start = time.perf_counter()
    with mlflow.start_run(run_name=f"{params.dataset.name}-{params.model.arch}") as run:
        mlflow.set_tags({"dataset": params.dataset.name, "stage": "train", "method": "cluster-contrast"})
        mlflow.log_params(tracking.flatten(params))
        history = train(model, dataset.train, params.train, params.cluster, on_epoch_end=on_epoch_end)
        total_s = time.perf_counter() - start
        save_checkpoint(CHECKPOINT, model, params.model, params.train.height, params.train.width,
                        extra={"dataset": params.dataset.name, "epochs": len(history)})
        last = history[-1].as_dict()
        metrics = {
            **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in last.items()},
            "train_minutes": total_s / 60.0,
        }
        mlflow.log_metric("train_minutes", metrics["train_minutes"])

    EPOCH_STATS.parent.mkdir(parents=True, exist_ok=True)
    write_csv(EPOCH_STATS, pd.DataFrame([s.as_dict() for s in history]))
    truth = np.array([r.pid for r in dataset.train])
    tmp = EPOCH_LABELS.with_name(".labels.tmp.npz")
    np.savez_compressed(tmp, truth=truth, **labels_per_epoch)
    tmp.replace(EPOCH_LABELS)
    write_json(RUN_INFO, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id})
    write_json(metrics_file("train"), metrics)
    log.info("trained %d epochs in %.1f min; last epoch: %d clusters, purity %.3f",
             len(history), total_s / 60, last["num_clusters"], last["purity"])


def main(argv: list[str] | None = None) -> int:
    return run_stage("train", train_stage, argv)


if __name__ == "__main__":
    raise SystemExit(main())
