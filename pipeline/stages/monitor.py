"""Stage `monitor`: an evidently report on pseudo-label quality, with a pass/fail gate."""

from __future__ import annotations

import logging

import mlflow
import numpy as np
import pandas as pd

from pipeline import tracking
from pipeline.cli import StageFailed, run_stage
from pipeline.io import staged_dir, write_json
from pipeline.monitoring import run_monitor_report, sample_frame
from pipeline.params import Params
from pipeline.paths import EPOCH_LABELS, EPOCH_STATS, MONITOR_REPORTS, metrics_file

log = logging.getLogger(__name__)


def monitor(params: Params) -> None:
    """Write reports/monitor/pseudo_labels.html and metrics/monitor.json (gate: `passed`)."""
    if not EPOCH_LABELS.is_file() or not EPOCH_STATS.is_file():
        raise StageFailed(f"{EPOCH_LABELS} / {EPOCH_STATS} missing; run the train stage first")
    stored = np.load(EPOCH_LABELS)
    epochs = sorted((k for k in stored.files if k.startswith("epoch_")), key=lambda k: int(k.split("_")[1]))
    truth = stored["truth"]
    current = sample_frame(stored[epochs[-1]], truth)
    reference = sample_frame(stored[epochs[0]], truth)
    with staged_dir(MONITOR_REPORTS) as out:
        outcome = run_monitor_report(current, reference, params.monitor, out / "pseudo_labels.html")
    last = pd.read_csv(EPOCH_STATS).iloc[-1]
    metrics = {
        "passed": outcome.passed,
        "tests_total": outcome.tests_total,
        "tests_failed": len(outcome.failures),
        "failures": outcome.failures,
        "epoch": int(last["epoch"]),
        "num_clusters": int(last["num_clusters"]),
        "outlier_ratio": float(last["outlier_ratio"]),
        "largest_cluster_ratio": float(current["cluster_share"].max()),
        "purity": float(last["purity"]),
        "nmi": float(last["nmi"]),
    }
    write_json(metrics_file("monitor"), metrics)
    tracking.configure(params.mlflow)
    with mlflow.start_run(run_id=tracking.training_run_id()):
        mlflow.log_metrics({f"monitor.{k}": v for k, v in tracking.finite(metrics).items()})
        mlflow.log_artifact(str(MONITOR_REPORTS / "pseudo_labels.html"), artifact_path="reports")
    status = "passed" if outcome.passed else "FAILED: " + "; ".join(outcome.failures)
    log.info("pseudo-label gate %s (report: %s)", status, MONITOR_REPORTS / "pseudo_labels.html")


def main(argv: list[str] | None = None) -> int:
    return run_stage("monitor", monitor, argv)


if __name__ == "__main__":
    raise SystemExit(main())
