"""Stage `train`: unsupervised training on the manifest's train split, tracked in MLflow."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from dsfnet.checkpoint import save_checkpoint
from dsfnet.data import read_manifest
from dsfnet.distributed import init_from_environment, is_main_process
from dsfnet.models import build_model
from dsfnet.trainer import (
    EpochStats,
    load_resume_state,
    model_config_for,
    resolve_device,
    seed_everything,
    train,
)
from pipeline import lineage, tracking
from pipeline.cli import StageFailed, run_stage
from pipeline.io import write_csv, write_json
from pipeline.params import Params, ParamsError, load_params
from pipeline.paths import (
    CHECKPOINT,
    EPOCH_EMBEDDINGS,
    EPOCH_LABELS,
    EPOCH_STATS,
    MANIFEST,
    PREPARED_DIR,
    RESUME_STATE,
    RUN_INFO,
    metrics_file,
)

log = logging.getLogger(__name__)


def fingerprint(params: Params) -> str:
    """What a resumable state must match: the training parameters and the exact manifest."""
    relevant = {k: v for k, v in tracking.flatten(params).items()
                if k.split(".")[0] in ("dataset", "model", "train", "cluster", "dsfnet")}
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode())
    digest.update(MANIFEST.read_bytes())
    return digest.hexdigest()


def method_tag(params: Params) -> str:
    on = [name for name in ("finet", "scnet", "ddo") if getattr(params.dsfnet, name).enabled]
    return "dsfnet" if len(on) == 3 else ("cluster-contrast" + "".join(f"+{n}" for n in on))


def log_dataset_input(params: Params) -> None:
    """The training split as an MLflow dataset input whose digest is DVC's hash of the prepared data."""
    manifest = pd.read_csv(MANIFEST)
    digest = lineage.dvc_data_hash() or lineage.sha256_file(MANIFEST)
    source = str(Path(params.dataset.root or PREPARED_DIR).resolve())  # a local path: MLflow resolves it
    dataset = mlflow.data.from_pandas(manifest[manifest["split"] == "train"], source=source,
                                      name=params.dataset.name, digest=digest[:36])
    mlflow.log_input(dataset, context="training")


def train_stage(params: Params) -> None:
    """Train the model; write models/, reports/train/ and metrics/train.json.

    The state after every epoch goes to checkpoints/train/last.pt (outside DVC's outputs, which DVC
    deletes before a stage runs): re-running after a crash resumes there, in the same MLflow run.
    Under `torchrun --nproc_per_node N -m pipeline.stages.train` every rank trains (DDP) and only
    rank 0 tracks, checkpoints and writes outputs.
    """
    dataset = read_manifest(MANIFEST, name=params.dataset.name)
    if len(dataset.train) < params.cluster.min_samples:
        raise StageFailed(f"train split has {len(dataset.train)} images, fewer than "
                          f"cluster.min_samples={params.cluster.min_samples}")
    params.dsfnet.check()
    model_config = model_config_for(params.model, params.dsfnet)
    seed_everything(params.train.seed)  # the initial weights too: same seed, same run
    model = build_model(model_config)  # a bad model.pretrained path fails here, before any training
    init_from_environment()
    main_process = is_main_process()
    key = fingerprint(params)
    resumed = load_resume_state(RESUME_STATE, key)
    run_id = resumed["extra"].get("run_id") if resumed else None

    def on_epoch_end(stats: EpochStats, labels: np.ndarray) -> None:
        mlflow.log_metrics(tracking.finite(stats.as_dict()), step=stats.epoch)

    start = time.perf_counter()
    if not main_process:
        # every rank resumes from the same saved state (only rank 0 writes it), or they would fall out of step
        train(model, dataset.train, params.train, params.cluster, params.dsfnet, progress=False,
              resume_path=RESUME_STATE, fingerprint=key)
        return
    tracking.configure(params.mlflow)
    with mlflow.start_run(run_id=run_id, run_name=f"{params.dataset.name}-{params.model.arch}") as run:
        if resumed is None:
            flat = tracking.flatten(params)
            mlflow.set_tags({"dataset": params.dataset.name, "stage": "train", "method": method_tag(params),
                             **lineage.lineage_tags(flat, params.dataset.name, params.dataset.root),
                             **lineage.system_tags(str(resolve_device(params.train.device)))})
            mlflow.log_params(flat)
            log_dataset_input(params)
        result = train(model, dataset.train, params.train, params.cluster, params.dsfnet, on_epoch_end=on_epoch_end,
                       resume_path=RESUME_STATE, fingerprint=key, extra={"run_id": run.info.run_id})
        total_s = time.perf_counter() - start
        save_checkpoint(CHECKPOINT, model, model_config, params.train.height, params.train.width,
                        extra={"dataset": params.dataset.name, "epochs": len(result.history),
                               "method": method_tag(params)})
        last = result.history[-1].as_dict()
        metrics = {
            **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in last.items()},
            "train_minutes": total_s / 60.0,
            "resumed_at_epoch": resumed["next_epoch"] if resumed else None,
            "method": method_tag(params),
        }
        mlflow.log_metric("train_minutes", metrics["train_minutes"])

    EPOCH_STATS.parent.mkdir(parents=True, exist_ok=True)
    write_csv(EPOCH_STATS, pd.DataFrame([s.as_dict() for s in result.history]))
    truth = np.array([r.pid for r in dataset.train])
    tmp = EPOCH_LABELS.with_name(".labels.tmp.npz")
    np.savez_compressed(tmp, truth=truth, **{f"epoch_{e}": labels for e, labels in enumerate(result.labels)})
    tmp.replace(EPOCH_LABELS)
    tmp = EPOCH_EMBEDDINGS.with_name(".embeddings.tmp.npz")
    np.savez_compressed(tmp, rows=result.embedding_rows, **result.embeddings)
    tmp.replace(EPOCH_EMBEDDINGS)
    write_json(RUN_INFO, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id})
    write_json(metrics_file("train"), metrics)
    RESUME_STATE.unlink(missing_ok=True)  # finished: the next run starts afresh
    log.info("trained %d epochs in %.1f min; last epoch: %d clusters, purity %.3f",
             len(result.history), total_s / 60, last["num_clusters"], last["purity"])


def launch_distributed(gpus: int, argv: list[str]) -> int:
    """Re-run this stage under torchrun with `gpus` processes (DDP); rank 0 writes the outputs."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
               "-m", "pipeline.stages.train", *argv]
    log.info("train.gpus=%d: %s", gpus, " ".join(command[1:]))
    return subprocess.run(command, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "LOCAL_RANK" not in os.environ:  # not yet under torchrun: start it when more than one process is asked for
        try:
            gpus = load_params(_params_path(argv)).train.gpus
        except ParamsError:
            gpus = 1  # run_stage reports the params error
        if gpus > 1:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s [train] %(levelname)s %(message)s")
            return launch_distributed(gpus, argv)
    return run_stage("train", train_stage, argv)


def _params_path(argv: list[str]) -> str:
    return argv[argv.index("--params") + 1] if "--params" in argv[:-1] else "params.yaml"


if __name__ == "__main__":
    raise SystemExit(main())
