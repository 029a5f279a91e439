"""Pseudo-label quality monitoring: this run's last epoch against a reference.

The reference is the current champion's monitored last epoch when there is one (same dataset, same
embedding size), else this run's own first epoch. The gates are decided here, in Python (`evaluate_gates`),
with messages naming the params.yaml key and the value that broke it; the evidently report shows that
decision as a table (each statistic, the reference's value, the gate's rule and verdict) and does what
evidently is for: drift of the cluster sizes (ValueDrift) and of the embeddings (EmbeddingsDrift), one row per
sampled training image.
"""

from __future__ import annotations

import math
import operator
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.container import MetricContainer
from evidently.legacy.renderers.html_widgets import table_data
from evidently.metrics import EmbeddingsDrift, ValueDrift
from evidently.metrics.embeddings import DistanceDriftMethod

from dsfnet.label_stats import GROUND_TRUTH_KEYS
from pipeline.params import MonitorParams

# the last epoch's statistics shown in the report (ground-truth ones only when the dataset has identities)
STATISTICS = ["num_clusters", "outlier_ratio", "largest_cluster_ratio", "median_cluster_size", "size_gini",
              "multi_camera_share", "label_churn", "hard_samples", "purity", "nmi", "ari", "pair_precision",
              "pair_recall", "cross_camera_pair_precision", "cross_camera_pair_recall"]
GROUND_TRUTH = set(GROUND_TRUTH_KEYS)
GATE_TABLE_HEADER = ["statistic", "this run", "reference", "gate (params.yaml)", "rule", "verdict"]


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


def sample_frame(labels: np.ndarray, rows: np.ndarray, embeddings: np.ndarray) -> pd.DataFrame:
    """One row per sampled training image (`rows` index `labels`): its cluster's size (0 for an outlier) and
    its embedding (columns emb_0..emb_{D-1})."""
    labels = np.asarray(labels)
    sizes = np.bincount(labels[labels >= 0], minlength=1)
    frame = pd.DataFrame(embeddings.astype(np.float64), columns=[f"emb_{i}" for i in range(embeddings.shape[1])])
    frame.insert(0, "cluster_size", np.where(labels >= 0, sizes[np.maximum(labels, 0)], 0)[rows].astype(float))
    return frame


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
    reference: str
    statistics: dict[str, float]
    reference_statistics: dict[str, float] = field(default_factory=dict)
    drift: dict[str, float | str] = field(default_factory=dict)  # evidently's scores, with the method they used

    @property
    def failures(self) -> list[str]:
        return [g.message for g in self.gates if not g.passed]

    def as_dict(self) -> dict:
        return {**asdict(self), "failures": self.failures}


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


class GateTable(MetricContainer):
    """A report item that computes nothing: it shows the gate decision taken in Python as a table widget."""

    title: str
    rows: list[list[str]]

    def generate_metrics(self, context) -> list:
        return []

    def render(self, context, child_widgets=None) -> list:
        return [table_data(title=self.title, column_names=GATE_TABLE_HEADER, data=self.rows)]


def gate_table(outcome: MonitorOutcome, gate: MonitorParams) -> GateTable:
    """Every statistic next to the reference's value; for the gated ones the monitor.* key, rule and verdict."""
    decided = {g.statistic: g for g in outcome.gates}
    gated = {g.statistic: g for g in GATES if g.statistic in outcome.statistics}
    rows = []
    for key in [*gated, *(k for k in outcome.statistics if k not in gated)]:
        row = [key, f"{outcome.statistics[key]:.4g}", f"{outcome.reference_statistics.get(key, math.nan):.4g}"]
        if key in gated:
            g, result = gated[key], decided.get(key)
            verdict = "not judged (no value)" if result is None else "ok" if result.passed else "FAILED"
            row += [f"monitor.{g.param}", f"{g.op} {float(getattr(gate, g.param)):g}", verdict]
        rows.append(row + [""] * (len(GATE_TABLE_HEADER) - len(row)))
    failed = len(outcome.failures)
    title = (f"Pseudo-label gates: {'PASSED' if outcome.passed else 'FAILED'} ({failed} of {len(outcome.gates)} "
             f"failed; decided by pipeline.monitoring.evaluate_gates). Reference: {outcome.reference}")
    return GateTable(title=title, rows=rows)


def drift_scores(result: dict) -> dict[str, float | str]:
    """The drift scores of a snapshot's dict; ValueDrift's meaning depends on the method evidently chose
    (a K-S p-value under 1000 rows, a normed Wasserstein distance above, chi-square for few distinct sizes)."""
    drift: dict[str, float | str] = {}
    for metric in result["metrics"]:
        config = metric["config"]
        if config["type"].endswith(":ValueDrift"):
            drift.update(cluster_size_drift=float(metric["value"]), cluster_size_drift_method=config["method"],
                         cluster_size_drift_threshold=float(config["threshold"]))
        elif config["type"].endswith(":EmbeddingsDrift"):
            drift["embedding_drift"] = float(metric["value"])
    return drift


def run_monitor_report(current: MonitorData, reference: MonitorData, gate: MonitorParams,
                       html_path: Path) -> MonitorOutcome:
    """The gate verdict, and the evidently report (gate table and drift against `reference`) at `html_path`."""
    if reference.embeddings.shape[1] != current.embeddings.shape[1]:
        raise ValueError(f"monitor: reference embeddings are {reference.embeddings.shape[1]}-d, "
                         f"this run's {current.embeddings.shape[1]}-d")
    gates = evaluate_gates(current.statistics, gate)
    outcome = MonitorOutcome(all(g.passed for g in gates), gates, reference.source, current.statistics,
                             {k: v for k, v in reference.statistics.items() if k in current.statistics})
    cur, ref = (sample_frame(d.labels, d.rows, d.embeddings) for d in (current, reference))
    definition = DataDefinition(numerical_columns=["cluster_size"],
                                embeddings={"reid": [c for c in cur if c.startswith("emb_")]})
    report = Report([gate_table(outcome, gate), ValueDrift(column="cluster_size"),
                     EmbeddingsDrift(embeddings_name="reid",
                                     drift_method=DistanceDriftMethod(dist="cosine", bootstrap=True))],
                    include_tests=False)
    with warnings.catch_warnings():
        # a cluster size the reference never has (e.g. one cluster of everything) gives scipy's chi-square an
        # expected count of 0: the p-value is a correct 0 (drifted), the division warning is noise
        warnings.filterwarnings("ignore", "divide by zero encountered in divide", RuntimeWarning,
                                "scipy.stats._stats_py")
        snapshot = report.run(Dataset.from_pandas(cur, data_definition=definition),
                              Dataset.from_pandas(ref, data_definition=definition))
    html_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html_path))
    outcome.drift = drift_scores(snapshot.dict())
    return outcome
