"""Stage `monitor`: pseudo-label gates that `register` obeys, and an evidently report of them and of drift.

Writes reports/monitor/ (pseudo_labels.html, epochs.png, and the current/reference data the report was
built from, so a result can be reproduced from the DVC cache) and metrics/monitor.json (every statistic,
every gate, the drift scores with their methods, and `passed`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.cli import StageFailed, run_stage
from pipeline.io import read_json, staged_dir, write_json
from pipeline.monitoring import MonitorData, monitored_statistics, run_monitor_report
from pipeline.params import Params
from pipeline.paths import EPOCH_EMBEDDINGS, EPOCH_LABELS, EPOCH_STATS, MONITOR_REPORTS, RUN_INFO, metrics_file

log = logging.getLogger(__name__)
CURRENT_ARTIFACT = "monitor/current.npz"  # logged with every run: a later run's reference when this one is champion

CURVES = [  # (title, columns) of reports/monitor/epochs.png
    ("clusters", ["num_clusters"]),
    ("outliers and churn", ["outlier_ratio", "label_churn"]),
    ("agreement with ground truth", ["purity", "nmi", "ari", "cross_camera_pair_recall"]),
    ("cluster shape", ["size_gini", "multi_camera_share"]),
]


def load_run(params: Params) -> tuple[MonitorData, MonitorData, pd.DataFrame]:
    """(last epoch, first epoch, per-epoch table) of this run, from the train stage's outputs."""
    for path in (EPOCH_LABELS, EPOCH_STATS, EPOCH_EMBEDDINGS):
        if not path.is_file():
            raise StageFailed(f"{path} missing; run the train stage first (dvc repro train)")
    stored = np.load(EPOCH_LABELS)
    epochs = sorted((k for k in stored.files if k.startswith("epoch_")), key=lambda k: int(k.split("_")[1]))
    truth = stored["truth"]
    has_truth = bool((truth >= 0).all())
    table = pd.read_csv(EPOCH_STATS)
    embedded = np.load(EPOCH_EMBEDDINGS)
    rows = embedded["rows"]
    keep = np.sort(np.random.default_rng(0).choice(len(rows), params.monitor.embedding_rows, replace=False)) \
        if len(rows) > params.monitor.embedding_rows else np.arange(len(rows))

    def side(position: int, key: str) -> MonitorData:
        labels = stored[epochs[position]]
        row = table.iloc[position].to_dict()
        return MonitorData(monitored_statistics(row, labels, has_truth), labels, truth if has_truth else None,
                           rows[keep], embedded[key][keep].astype(np.float32),
                           f"this run, epoch {int(row['epoch'])}")

    return side(-1, "last"), side(0, "first"), table


def champion_reference(params: Params) -> tuple[MonitorData | None, str]:
    """The champion's monitored last epoch (None, and why, when there is none to use)."""
    name, alias = params.register.model_name, params.register.alias
    client = MlflowClient()
    try:
        champion = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, f"no {name}@{alias} yet"
    if RUN_INFO.is_file() and champion.run_id == read_json(RUN_INFO)["run_id"]:
        return None, f"{name}@{alias} is this run"
    if champion.tags.get("dataset") != params.dataset.name:
        return None, f"{name}@{alias} was trained on {champion.tags.get('dataset')!r}, not {params.dataset.name!r}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=champion.run_id, artifact_path=CURRENT_ARTIFACT,
                                                       dst_path=tmp)
        except (MlflowException, OSError):
            return None, f"{name}@{alias} (v{champion.version}) has no {CURRENT_ARTIFACT}"
        data = MonitorData.load(Path(path))
    data.source = f"{name}@{alias} v{champion.version} (run {champion.run_id})"
    return data, ""


def plot_epochs(table: pd.DataFrame, path: Path) -> None:
    figure = Figure(figsize=(10, 6.5), dpi=100)
    for i, (title, columns) in enumerate(CURVES):
        axes = figure.add_subplot(2, 2, i + 1)
        for column in columns:
            if column in table and table[column].notna().any():
                axes.plot(table["epoch"], table[column], marker="o", label=column)
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def monitor(params: Params) -> None:
    """Write reports/monitor/ and metrics/monitor.json; fail the stage on a failed gate only when asked to."""
    current, first, table = load_run(params)
    tracking.configure(params.mlflow)
    reference, why_not = champion_reference(params)
    if reference is None or reference.embeddings.shape[1] != current.embeddings.shape[1]:
        if reference is not None:
            why_not = f"{reference.source} has {reference.embeddings.shape[1]}-d embeddings, this run " \
                      f"{current.embeddings.shape[1]}-d"
        reference = first
        reference.source += f" ({why_not})"
    with staged_dir(MONITOR_REPORTS) as out:
        outcome = run_monitor_report(current, reference, params.monitor, out / "pseudo_labels.html")
        plot_epochs(table, out / "epochs.png")
        current.save(out / "current.npz")
        reference.save(out / "reference.npz")
    write_json(metrics_file("monitor"), {**outcome.as_dict(), **current.statistics,
                                         "epoch": int(table["epoch"].iloc[-1])})
    with mlflow.start_run(run_id=tracking.training_run_id()):
        mlflow.log_metrics({f"monitor.{k}": v for k, v in tracking.finite(
            {**current.statistics, **outcome.drift, "passed": float(outcome.passed)}).items()})
        mlflow.set_tags({f"monitor.{k}": v for k, v in outcome.drift.items() if isinstance(v, str)})  # methods
        mlflow.log_artifact(str(MONITOR_REPORTS / "pseudo_labels.html"), artifact_path="reports")
        mlflow.log_artifact(str(MONITOR_REPORTS / "epochs.png"), artifact_path="reports")
        mlflow.log_artifact(str(MONITOR_REPORTS / "current.npz"), artifact_path="monitor")
    for gate in outcome.gates:
        (log.info if gate.passed else log.warning)("%s", gate.message)
    log.info("reference: %s; report: %s", outcome.reference, MONITOR_REPORTS / "pseudo_labels.html")
    if not outcome.passed and params.monitor.stop_on_failure:
        raise StageFailed("pseudo-label gates failed (monitor.stop_on_failure is true): "
                          + "; ".join(outcome.failures))


def main(argv: list[str] | None = None) -> int:
    return run_stage("monitor", monitor, argv)


if __name__ == "__main__":
    raise SystemExit(main())
