"""Pseudo-label quality monitoring with evidently: the last epoch's clustering against the first's.

Each training sample becomes a row (its cluster, the share of samples in that cluster, whether it is an
outlier, whether its ground-truth id is its cluster's majority). The gate is a set of evidently tests,
so the HTML report shows exactly the checks that passed or failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import MaxValue, MeanValue
from evidently.presets import DataDriftPreset
from evidently.tests import gte, lte

from pipeline.params import MonitorParams

COLUMNS = ["cluster_id", "cluster_share", "is_outlier", "label_agrees"]


def sample_frame(labels: np.ndarray, truth: np.ndarray) -> pd.DataFrame:
    """One row per training sample describing its pseudo-label (label_agrees is NaN for outliers)."""
    n = len(labels)
    clustered = labels >= 0
    num_clusters = int(labels.max()) + 1 if clustered.any() else 0
    sizes = np.bincount(labels[clustered], minlength=num_clusters)
    share = np.where(clustered, sizes[np.maximum(labels, 0)] / max(n, 1) if num_clusters else 0.0, 0.0)
    agrees = np.full(n, np.nan)
    if num_clusters:
        _, truth_idx = np.unique(truth, return_inverse=True)
        table = np.zeros((num_clusters, truth_idx.max() + 1), dtype=np.int64)
        np.add.at(table, (labels[clustered], truth_idx[clustered]), 1)
        majority = table.argmax(axis=1)
        agrees[clustered] = (truth_idx[clustered] == majority[labels[clustered]]).astype(float)
    return pd.DataFrame({
        "cluster_id": labels.astype(float),
        "cluster_share": share.astype(float),
        "is_outlier": (~clustered).astype(float),
        "label_agrees": agrees,
    })


@dataclass
class MonitorOutcome:
    passed: bool
    tests_total: int
    failures: list[str]


def run_monitor_report(current: pd.DataFrame, reference: pd.DataFrame, gate: MonitorParams,
                       html_path: Path) -> MonitorOutcome:
    report = Report(
        [
            MeanValue(column="is_outlier", tests=[lte(gate.max_outlier_ratio)]),
            MaxValue(column="cluster_share", tests=[lte(gate.max_largest_cluster_ratio)]),
            # cluster ids are contiguous from 0, so the largest id + 1 is the number of clusters
            MaxValue(column="cluster_id", tests=[gte(gate.min_clusters - 1)]),
            MeanValue(column="label_agrees", tests=[gte(gate.min_purity)]),
            # shows how far the clustering moved since the first epoch; moving is expected, not a failure
            DataDriftPreset(columns=["cluster_share", "is_outlier"], include_tests=False),
        ],
        include_tests=False,  # only the explicit gate tests above; no auto-generated ones
    )
    definition = DataDefinition(numerical_columns=COLUMNS)
    snapshot = report.run(Dataset.from_pandas(current, data_definition=definition),
                          Dataset.from_pandas(reference, data_definition=definition))
    html_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html_path))
    tests = snapshot.dict()["tests"]
    failures = [t["description"] for t in tests if t["status"] != "SUCCESS"]
    return MonitorOutcome(passed=not failures, tests_total=len(tests), failures=failures)
