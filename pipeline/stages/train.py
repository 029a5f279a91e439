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
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from dsfnet.checkpoint import save_checkpoint
from dsfnet.cluster import NoClusterError
from dsfnet.cluster.knn import resolve_backend
from dsfnet.data import read_manifest
from dsfnet.distributed import init_from_environment, is_main_process
from dsfnet.models import build_model
from dsfnet.trainer import EpochStats, load_resume_state, resolve_device, train
from pipeline import lineage, tracking
from pipeline.cli import StageFailed, run_stage
from pipeline.io import atomic_path, write_csv, write_json
from pipeline.params import Params, ParamsError, flatten, load_params
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
MONITOR_ROWS = 2000  # embeddings kept for drift monitoring: a fixed random subset of the train images


def fingerprint(params: Params) -> str:
    """What a resumable state must match: the training parameters and the exact manifest."""
    relevant = {k: v for k, v in flatten(params).items()
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
    with warnings.catch_warnings():
        # MLflow's hint for model schemas: identities and cameras are never missing
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning, "mlflow")
        dataset = mlflow.data.from_pandas(manifest[manifest["split"] == "train"], source=source,
                                          name=params.dataset.name, digest=digest[:36])
        mlflow.log_input(dataset, context="training")


def monitor_rows(num_samples: int, seed: int) -> np.ndarray:
    """The sorted sample indices whose embeddings are kept (independent of the training RNG streams)."""
    if num_samples <= MONITOR_ROWS:
        return np.arange(num_samples)
    return np.sort(np.random.default_rng(seed).choice(num_samples, MONITOR_ROWS, replace=False))


def epoch_logger(rows: np.ndarray, kept: dict[str, np.ndarray]):
    """The trainer's epoch callback: metrics to MLflow, the first and last epoch's sampled embeddings into `kept`
    (which the trainer saves with its resumable state)."""

    def on_epoch_end(stats: EpochStats, labels: np.ndarray, features: np.ndarray) -> None:
        mlflow.log_metrics(tracking.finite(stats.as_dict()), step=stats.epoch)
        kept.setdefault("first", features[rows].astype(np.float16))
        kept["last"] = features[rows].astype(np.float16)

    return on_epoch_end


def start_tracking(params: Params) -> None:
    flat = flatten(params)
    mlflow.set_tags({"dataset": params.dataset.name, "stage": "train", "method": method_tag(params),
                     # what `auto` means here for the clustering's search
                     "knn_backend": resolve_backend(params.cluster.knn_backend, self_search=True),
                     **lineage.lineage_tags(flat, params.dataset.name, params.dataset.root),
                     **lineage.system_tags(str(resolve_device(params.train.device)))})
    mlflow.log_params(flat)
    log_dataset_input(params)


def write_outputs(dataset, result, rows: np.ndarray, embeddings: dict[str, np.ndarray]) -> None:
    write_csv(EPOCH_STATS, pd.DataFrame([s.as_dict() for s in result.history]))
    truth = np.array([r.pid for r in dataset.train])
    with atomic_path(EPOCH_LABELS) as tmp:
        np.savez_compressed(tmp, truth=truth, **{f"epoch_{e}": labels for e, labels in enumerate(result.labels)})
    with atomic_path(EPOCH_EMBEDDINGS) as tmp:
        np.savez_compressed(tmp, rows=rows, **embeddings)


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
    # a bad model.pretrained path fails here, before any training; same seed, same initial weights
    model = build_model(params.model, params.dsfnet, seed=params.train.seed)
    init_from_environment()
    key = fingerprint(params)
    resumed = load_resume_state(RESUME_STATE, key)
    # every rank resumes from the same saved state (only rank 0 writes it), or they would fall out of step
    run = dict(model=model, records=dataset.train, config=params.train, cluster_config=params.cluster,
               method=params.dsfnet, state_path=RESUME_STATE, fingerprint=key, resume=resumed)
    try:
        if is_main_process():
            train_with_tracking(params, dataset, run, resumed)
        else:
            train(**run, progress=False)
    except NoClusterError as error:  # DBSCAN found nothing: the message says which setting to change
        raise StageFailed(str(error)) from None


def train_with_tracking(params: Params, dataset, run: dict, resumed: dict | None) -> None:
    """Rank 0: train inside the MLflow run, then write models/, reports/train/ and metrics/train.json."""
    start = time.perf_counter()
    extra = resumed["extra"] if resumed else {"embeddings": {}}
    rows = monitor_rows(len(dataset.train), params.train.seed)
    tracking.configure(params.mlflow)
    with mlflow.start_run(run_id=extra.get("run_id"), run_name=f"{params.dataset.name}-{params.model.arch}") as mlrun:
        if resumed is None:
            start_tracking(params)
        extra["run_id"] = mlrun.info.run_id
        result = train(**run, on_epoch_end=epoch_logger(rows, extra["embeddings"]), extra=extra)
        total_s = time.perf_counter() - start
        save_checkpoint(CHECKPOINT, run["model"], params.model, params.train.height, params.train.width,
                        extra={"dataset": params.dataset.name, "epochs": len(result.history),
                               "method": method_tag(params)})
        mlflow.log_metric("train_minutes", total_s / 60.0)
    write_outputs(dataset, result, rows, extra["embeddings"])
    write_json(RUN_INFO, {"run_id": mlrun.info.run_id, "experiment_id": mlrun.info.experiment_id})
    last = result.history[-1].as_dict()
    write_json(metrics_file("train"), {
        **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in last.items()},
        "train_minutes": total_s / 60.0, "resumed_at_epoch": resumed["next_epoch"] if resumed else None,
        "method": method_tag(params)})
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
