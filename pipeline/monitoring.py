"""Pseudo-label quality monitoring with evidently: this run's last epoch against a reference.

The reference is the current champion's monitored last epoch when there is one (same dataset, same
embedding size), else this run's own first epoch. Each sampled training image is a row: its embedding,
the size of its cluster, whether it is an outlier, whether it carries its cluster's majority identity;
the last epoch's statistics ride along as constant columns, so one report shows every gate as an
evidently test next to the reference value. Gates are evaluated here from the same numbers, so the
failure messages can name the params.yaml key and the value that broke it.
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import EmbeddingsDrift, MeanValue, ValueDrift
from evidently.metrics.embeddings import DistanceDriftMethod
from evidently.tests import gte, lte

from pipeline.params import MonitorParams

# the last epoch's statistics shown in the report (ground-truth ones only when the dataset has identities)
STATISTICS = ["num_clusters", "outlier_ratio", "largest_cluster_ratio", "median_cluster_size", "size_gini",
              "multi_camera_share", "label_churn", "hard_samples", "purity", "nmi", "ari", "pair_precision",
              "pair_recall"]
GROUND_TRUTH = {"purity", "nmi", "ari", "pair_precision", "pair_recall"}


@dataclass(frozen=True)
class Gate:
    statistic: str
    param: str  # the monitor.* key holding the threshold
    op: str  # "<=" or ">="
    ground_truth_only: bool = False


GATES = [
    Gate("outlier_ratio", "max_outlier_ratio", "<="),
    Gate("num_clusters", "min_clusters", ">="),
    Gate("largest_cluster_ratio", "max_largest_cluster_ratio", "<="),
    Gate("label_churn", "max_label_churn", "<="),
    Gate("nmi", "min_nmi", ">=", ground_truth_only=True),
    Gate("purity", "min_purity", ">=", ground_truth_only=True),
]
_OPS = {"<=": operator.le, ">=": operator.ge}


@dataclass
class MonitorData:
    """One side of the comparison: an epoch's statistics, its labels and a sample of embeddings."""

    statistics: dict[str, float]
    labels: np.ndarray  # (N,) pseudo-labels of every training sample
    truth: np.ndarray | None  # (N,) ground-truth ids, None when the dataset has none
    rows: np.ndarray  # (R,) sample indices whose embeddings are kept
    embeddings: np.ndarray  # (R, D)
    source: str = ""

    def save(self, path: Path) -> None:
        np.savez_compressed(path, labels=self.labels, truth=self.truth if self.truth is not None else np.zeros(0),
                            rows=self.rows, embeddings=self.embeddings.astype(np.float16),
                            statistics=np.array(list(self.statistics.items()), dtype=object),
                            source=np.array(self.source))

    @classmethod
    def load(cls, path: Path) -> MonitorData:
        stored = np.load(path, allow_pickle=True)  # our own file: the statistics are a (key, value) table
        truth = stored["truth"]
        return cls({str(k): float(v) for k, v in stored["statistics"]}, stored["labels"],
                   truth if truth.size else None, stored["rows"], stored["embeddings"].astype(np.float32),
                   str(stored["source"]))


def monitored_statistics(epoch_row: dict, labels: np.ndarray, has_truth: bool) -> dict[str, float]:
    """The monitored statistics of one epoch (from the trainer's epochs.csv row, plus the largest share)."""
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0)
    stats = {key: float(epoch_row[key]) for key in STATISTICS if key in epoch_row}
    stats["largest_cluster_ratio"] = float(sizes.max() / len(labels)) if sizes.size else 0.0
    if not has_truth:
        stats = {k: v for k, v in stats.items() if k not in GROUND_TRUTH}
    return stats


def sample_frame(labels: np.ndarray, truth: np.ndarray | None, rows: np.ndarray | None = None,
                 embeddings: np.ndarray | None = None, statistics: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per sampled training image (all images without `rows`); label_agrees is NaN for outliers."""
    labels = np.asarray(labels)
    n = len(labels)
    clustered = labels >= 0
    sizes = np.bincount(labels[clustered]) if clustered.any() else np.zeros(1, dtype=np.int64)
    size = np.where(clustered, sizes[np.maximum(labels, 0)], 0).astype(float)
    frame = {"cluster_id": labels.astype(float), "cluster_size": size, "cluster_share": size / max(n, 1),
             "is_outlier": (~clustered).astype(float)}
    if truth is not None:
        agrees = np.full(n, np.nan)
        if clustered.any():
            _, truth_idx = np.unique(truth, return_inverse=True)
            table = np.zeros((sizes.size, truth_idx.max() + 1), dtype=np.int64)
            np.add.at(table, (labels[clustered], truth_idx[clustered]), 1)
            majority = table.argmax(axis=1)
            agrees[clustered] = (truth_idx[clustered] == majority[labels[clustered]]).astype(float)
        frame["label_agrees"] = agrees
    out = pd.DataFrame(frame)
    if rows is not None:
        out = out.iloc[rows].reset_index(drop=True)
    if embeddings is not None:
        out = pd.concat([out, pd.DataFrame(embeddings.astype(np.float64),
                                           columns=[f"emb_{i}" for i in range(embeddings.shape[1])])], axis=1)
    for key, value in (statistics or {}).items():
        out[f"stat_{key}"] = value
    return out


@dataclass
class GateResult:
    gate: str
    statistic: str
    value: float
    threshold: float
    passed: bool
    message: str


@dataclass
class MonitorOutcome:
    passed: bool
    gates: list[GateResult]
    tests: list[dict]  # every evidently test: name, status, description
    drift: dict[str, float]
    reference: str
    statistics: dict[str, float]
    reference_statistics: dict[str, float] = field(default_factory=dict)

    @property
    def failures(self) -> list[str]:
        return [g.message for g in self.gates if not g.passed]

    def as_dict(self) -> dict:
        return {"passed": self.passed, "failures": self.failures, "gates": [asdict(g) for g in self.gates],
                "tests": self.tests, "tests_total": len(self.tests),
                "tests_failed": sum(t["status"] != "SUCCESS" for t in self.tests), "drift": self.drift,
                "reference": self.reference, "statistics": self.statistics,
                "reference_statistics": self.reference_statistics}


def evaluate_gates(statistics: dict[str, float], gate: MonitorParams) -> list[GateResult]:
    """Each applicable gate, with a message naming the statistic, its value and the monitor.* param."""
    results = []
    for g in GATES:
        if g.statistic not in statistics:
            if g.ground_truth_only:
                continue
            raise KeyError(f"monitor: statistic {g.statistic} missing from the training statistics")
        value, threshold = statistics[g.statistic], float(getattr(gate, g.param))
        if isinstance(value, float) and math.isnan(value):  # e.g. churn with a single epoch: nothing to judge
            continue
        passed = _OPS[g.op](value, threshold)
        verdict = "ok" if passed else "FAILED"
        results.append(GateResult(g.param, g.statistic, value, threshold, passed,
                                  f"gate monitor.{g.param} {verdict}: {g.statistic} = {value:.4g}, "
                                  f"must be {g.op} {threshold:g}"))
    return results


def run_monitor_report(current: MonitorData, reference: MonitorData, gate: MonitorParams,
                       html_path: Path) -> MonitorOutcome:
    """The evidently report (HTML at `html_path`) and the gate verdict."""
    gates = evaluate_gates(current.statistics, gate)
    checked = {g.statistic: g for g in gates}
    ref_stats = {k: v for k, v in reference.statistics.items() if k in current.statistics}
    cur_frame = sample_frame(current.labels, current.truth, current.rows, current.embeddings, current.statistics)
    ref_frame = sample_frame(reference.labels, reference.truth, reference.rows, reference.embeddings,
                             {k: ref_stats.get(k, np.nan) for k in current.statistics})
    stat_columns = [f"stat_{k}" for k in current.statistics]
    embedding_columns = [c for c in cur_frame.columns if c.startswith("emb_")]
    metrics = []
    for key in current.statistics:
        tests = []
        if key in checked:
            g = next(x for x in GATES if x.statistic == key)
            tests = [(lte if g.op == "<=" else gte)(checked[key].threshold)]
        metrics.append(MeanValue(column=f"stat_{key}", tests=tests))  # a constant column: its mean is the value
    metrics.append(ValueDrift(column="cluster_size"))
    same_dim = embedding_columns and reference.embeddings.shape[1] == current.embeddings.shape[1]
    if same_dim:
        metrics.append(EmbeddingsDrift(embeddings_name="reid",
                                       drift_method=DistanceDriftMethod(dist="cosine", bootstrap=True)))
    numerical = ["cluster_size", "cluster_share", "is_outlier", *stat_columns]
    if "label_agrees" in cur_frame:
        numerical.append("label_agrees")
        metrics.append(MeanValue(column="label_agrees"))
    definition = DataDefinition(numerical_columns=numerical,
                                embeddings={"reid": embedding_columns} if same_dim else None)
    if not same_dim:
        ref_frame = ref_frame.drop(columns=[c for c in ref_frame.columns if c.startswith("emb_")])
        cur_frame = cur_frame.drop(columns=embedding_columns)
    snapshot = Report(metrics, include_tests=False).run(Dataset.from_pandas(cur_frame, data_definition=definition),
                                                        Dataset.from_pandas(ref_frame, data_definition=definition))
    html_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html_path))
    result = snapshot.dict()
    tests = [{"name": t["name"], "status": str(getattr(t["status"], "value", t["status"])),
              "description": t["description"]} for t in result["tests"]]
    drift = {}
    for metric in result["metrics"]:
        name = metric["metric_name"]
        if name.startswith("ValueDrift(column=cluster_size"):
            drift["cluster_size_drift"] = float(metric["value"])
        elif name.startswith("EmbeddingsDrift"):
            drift["embedding_drift"] = float(metric["value"])
    # the evidently tests and our gates judge the same numbers; disagreeing would be a bug worth stopping for
    evidently_failed = sum(t["status"] != "SUCCESS" for t in tests)
    if evidently_failed != sum(not g.passed for g in gates):
        raise RuntimeError(f"monitor: evidently failed {evidently_failed} tests but the gates say "
                           f"{[g.message for g in gates]}")
    return MonitorOutcome(passed=all(g.passed for g in gates), gates=gates, tests=tests, drift=drift,
                          reference=reference.source, statistics=current.statistics,
                          reference_statistics=ref_stats)
