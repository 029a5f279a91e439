"""Pseudo-label statistics against independent computations, and the monitor's gates and evidently report."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pandas as pd
import pytest
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import ValueDrift
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from dsfnet.label_stats import cross_camera_pair_quality, epoch_statistics, gini, label_churn, multi_camera_share
from pipeline.monitoring import (
    MonitorData,
    drift_scores,
    evaluate_gates,
    monitored_statistics,
    run_monitor_report,
    sample_frame,
)
from pipeline.params import MonitorParams
from tests.test_trainer import records, uninterrupted  # noqa: F401 - fixtures

GATE = MonitorParams(max_outlier_ratio=0.3, min_clusters=3, max_largest_cluster_ratio=0.5, max_label_churn=0.5,
                     min_nmi=0.3, min_purity=0.5)


def mean_abs_difference_gini(sizes) -> float:
    x = np.asarray(sizes, dtype=float)
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean()))


def test_gini_matches_the_mean_absolute_difference_definition():
    rng = np.random.default_rng(0)
    for sizes in (rng.integers(1, 50, 30), np.array([5, 5, 5, 5]), np.array([1, 1, 1, 97]), np.array([7])):
        assert gini(sizes) == pytest.approx(mean_abs_difference_gini(sizes))
    assert gini(np.array([5, 5, 5, 5])) == 0.0


def test_multi_camera_share_counts_clusters_seen_by_two_cameras():
    rng = np.random.default_rng(1)
    labels = rng.integers(-1, 12, 300)
    camids = rng.integers(0, 6, 300)
    camids[labels == 3] = 2  # cluster 3 seen by one camera only
    clusters = [c for c in range(12) if (labels == c).any()]
    expected = np.mean([len(set(camids[(labels == c)])) >= 2 for c in clusters])
    assert multi_camera_share(labels, camids) == pytest.approx(expected)
    assert multi_camera_share(labels, camids) < 1.0


def test_label_churn_is_one_minus_ari_on_samples_clustered_in_both_epochs():
    rng = np.random.default_rng(2)
    previous = rng.integers(-1, 8, 200)
    assert np.isnan(label_churn(None, previous))  # the first epoch has nothing to compare with
    renamed = np.where(previous >= 0, (previous + 3) % 8, -1)
    assert label_churn(previous, renamed) == pytest.approx(0.0)  # same partition, other cluster ids
    current = np.where(rng.random(200) < 0.3, rng.integers(-1, 8, 200), previous)
    both = (previous >= 0) & (current >= 0)
    assert label_churn(previous, current) == pytest.approx(1 - adjusted_rand_score(previous[both], current[both]))


def test_cross_camera_pair_scores_match_a_brute_force_count_over_pairs():
    rng = np.random.default_rng(0)
    truth, camids = rng.integers(0, 6, 60) * 7 + 3, rng.integers(0, 3, 60)  # ids need not be 0..n-1
    labels = np.where(rng.random(60) < 0.2, -1, (truth + (rng.random(60) < 0.3)) % 5)
    together = predicted = actual = 0
    for i, j in itertools.combinations(range(60), 2):
        if camids[i] == camids[j]:
            continue
        actual += truth[i] == truth[j]
        if labels[i] >= 0 and labels[i] == labels[j]:
            predicted += 1
            together += truth[i] == truth[j]
    scores = epoch_statistics(labels, camids, None, truth)
    assert together and predicted > together and actual > together  # the draw exercises every count
    assert scores["cross_camera_pair_precision"] == pytest.approx(together / predicted)
    assert scores["cross_camera_pair_recall"] == pytest.approx(together / actual)
    # clusters that never cross a camera ("one person in one camera") teach nothing about cross-camera pairs
    camera_local = cross_camera_pair_quality(truth * 3 + camids, truth, camids)
    assert camera_local == {"cross_camera_pair_precision": 0.0, "cross_camera_pair_recall": 0.0}
    assert epoch_statistics(truth * 3 + camids, camids, None, truth)["purity"] == 1.0


def test_epoch_statistics_leave_ground_truth_scores_out_without_identities():
    labels = np.array([0, 0, 1, 1, 1, -1])
    stats = epoch_statistics(labels, np.array([0, 1, 0, 0, 0, 1]), None, None)
    assert stats["median_cluster_size"] == 2.5 and stats["multi_camera_share"] == 0.5
    assert np.isnan(stats["nmi"]) and np.isnan(stats["purity"])


def test_monitored_statistics_of_a_tiny_labelled_epoch_by_hand():
    # clusters {0,1,2} (ids 5,5,6) and {3,4} (ids 7,7); sample 5 (id 7) is an outlier
    labels, truth = np.array([0, 0, 0, 1, 1, -1]), np.array([5, 5, 6, 7, 7, 7])
    row = {"epoch": 3, "num_clusters": 2, "outlier_ratio": 1 / 6, "loss": 0.1,
           **epoch_statistics(labels, np.array([0, 1, 0, 1, 1, 0]), None, truth)}
    stats = monitored_statistics(row, labels, has_truth=True)
    assert stats["purity"] == pytest.approx(4 / 5)  # majority ids: 2 of 3, 2 of 2, of 5 clustered
    assert stats["pair_precision"] == pytest.approx(2 / 4)  # same-cluster pairs 3 + 1, of which same id 1 + 1
    assert stats["pair_recall"] == pytest.approx(2 / 4)  # same-id pairs 1 (id 5) + 3 (id 7), 2 of them together
    assert stats["nmi"] == pytest.approx(normalized_mutual_info_score([5, 5, 6, 7, 7], [0, 0, 0, 1, 1]))
    # cross-camera pairs: in cluster 0, (0,1) and (1,2), one of them the same id; cluster 1 is camera 1 only;
    # same-id cross-camera pairs: (0,1) of id 5, (3,5) and (4,5) of id 7
    assert stats["cross_camera_pair_precision"] == pytest.approx(1 / 2)
    assert stats["cross_camera_pair_recall"] == pytest.approx(1 / 3)
    assert stats["largest_cluster_ratio"] == pytest.approx(3 / 6)
    assert stats["median_cluster_size"] == 2.5 and stats["multi_camera_share"] == 0.5  # cluster 1: camera 1 only
    assert "loss" not in stats and "epoch" not in stats
    assert set(monitored_statistics(row, labels, has_truth=False)) == {
        "num_clusters", "outlier_ratio", "largest_cluster_ratio", "median_cluster_size", "size_gini",
        "multi_camera_share", "label_churn"}


def test_the_trainer_records_churn_and_cluster_shape_every_epoch(records, uninterrupted):  # noqa: F811
    _, result = uninterrupted
    camids = np.array([r.camid for r in records])
    assert np.isnan(result.history[0].label_churn)
    for epoch in range(1, len(result.history)):
        previous, current, stats = result.labels[epoch - 1], result.labels[epoch], result.history[epoch]
        both = (previous >= 0) & (current >= 0)
        assert stats.label_churn == pytest.approx(1 - adjusted_rand_score(previous[both], current[both]))
        members = {}  # cluster -> its samples, by literal counting
        for i, label in enumerate(current.tolist()):
            if label >= 0:
                members.setdefault(label, []).append(i)
        assert stats.num_clusters == len(members)
        assert stats.outlier_ratio == pytest.approx(sum(label < 0 for label in current) / len(current))
        assert stats.multi_camera_share == pytest.approx(
            sum(len({camids[i] for i in m}) >= 2 for m in members.values()) / len(members))
        sizes = [len(m) for m in members.values()]
        assert stats.size_gini == pytest.approx(mean_abs_difference_gini(sizes))
        assert stats.median_cluster_size == np.median(sizes)


def test_sample_frame_gives_each_sampled_image_its_cluster_size():
    labels = np.array([0, 0, 1, -1, 1, 1, 2])
    embeddings = np.arange(8, dtype=np.float32).reshape(4, 2)
    frame = sample_frame(labels, np.array([0, 2, 3, 6]), embeddings)
    assert list(frame.columns) == ["cluster_size", "emb_0", "emb_1"]
    assert frame["cluster_size"].tolist() == [2, 3, 0, 1]  # an outlier's size is 0
    np.testing.assert_array_equal(frame[["emb_0", "emb_1"]].to_numpy(), embeddings)


def monitor_data(labels, truth, embeddings, previous=None, source="") -> MonitorData:
    stats = epoch_statistics(labels, np.arange(len(labels)) % 3, previous, truth)
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(1)
    stats = {"num_clusters": float((sizes > 0).sum()), "outlier_ratio": float((labels < 0).mean()),
             "largest_cluster_ratio": float(sizes.max() / len(labels)), **stats}
    return MonitorData(stats, labels, truth, np.arange(len(labels)), embeddings, source)


def gate_table(html: str) -> dict:
    """The gate table widget of a saved report (evidently embeds its widgets as one JSON object)."""
    widgets = json.loads(re.search(r"var metric_\w+ = (.*);\n\s*var additional_graphs", html).group(1))["widgets"]
    tables = [w for group in widgets for w in group["widgets"] if w["title"].startswith("Pseudo-label gates")]
    assert len(tables) == 1
    return {"title": tables[0]["title"], "rows": {row[0]: row[1:] for row in tables[0]["params"]["data"]}}


@pytest.fixture(scope="module")
def healthy(request):
    from tests.conftest import clustered_features

    features, truth = clustered_features(10, 12, 32, noise=0.4, seed=0)
    labels = truth.copy()
    labels[::15] = -1
    return monitor_data(labels, truth, features, previous=labels, source="reference run")


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_healthy_run_passes_and_the_report_shows_each_gate(healthy, tmp_path):
    outcome = run_monitor_report(healthy, healthy, GATE, tmp_path / "ok.html")
    assert outcome.passed and outcome.failures == []
    assert {g.gate for g in outcome.gates} == {"max_outlier_ratio", "min_clusters", "max_largest_cluster_ratio",
                                               "max_label_churn", "min_nmi", "min_purity"}
    assert outcome.drift["embedding_drift"] == pytest.approx(0.0, abs=1e-6)  # identical embeddings
    assert outcome.drift["cluster_size_drift_method"] == "chi-square p_value"  # 3 distinct sizes: 0, 11, 12
    assert outcome.drift["cluster_size_drift"] == pytest.approx(1.0)  # identical sizes
    html = (tmp_path / "ok.html").read_text()
    table = gate_table(html)
    assert table["title"].startswith("Pseudo-label gates: PASSED (0 of 6 failed") and "reference run" in table["title"]
    assert table["rows"]["num_clusters"] == ["10", "10", "monitor.min_clusters", ">= 3", "ok"]
    assert table["rows"]["outlier_ratio"] == ["0.06667", "0.06667", "monitor.max_outlier_ratio", "<= 0.3", "ok"]
    assert table["rows"]["size_gini"][2:] == ["", "", ""]  # shown next to the reference, not gated
    assert "Drift in embeddings" in html and "chi-square p_value" in html
    json.dumps(outcome.as_dict())  # metrics/monitor.json must be writable as is


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_churn_without_value_is_shown_but_not_judged(healthy, tmp_path):
    first = monitor_data(healthy.labels, healthy.truth, healthy.embeddings, previous=None, source="epoch 0")
    assert np.isnan(first.statistics["label_churn"])  # a single epoch, or a first-epoch reference
    outcome = run_monitor_report(first, first, GATE, tmp_path / "single.html")
    assert outcome.passed and "max_label_churn" not in {g.gate for g in outcome.gates}
    row = gate_table((tmp_path / "single.html").read_text())["rows"]["label_churn"]
    assert row == ["nan", "nan", "monitor.max_label_churn", "<= 0.5", "not judged (no value)"]


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize(("broken", "failed_gates"), [
    ("one_cluster", {"min_clusters", "max_largest_cluster_ratio", "min_nmi", "min_purity"}),
    ("all_but_few_outliers", {"max_outlier_ratio"}),
    ("unsettled", {"max_label_churn"}),
])
def test_a_broken_clustering_fails_the_gates_naming_gate_and_value(healthy, tmp_path, broken, failed_gates):
    truth, n = healthy.truth, len(healthy.truth)
    rng = np.random.default_rng(3)
    if broken == "one_cluster":
        labels, previous = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    elif broken == "all_but_few_outliers":
        labels = np.where(np.arange(n) < 36, truth % 3, -1)  # three pure-ish clusters, 70 % outliers
        previous = labels
    else:
        labels, previous = truth.copy(), rng.permutation(truth)
    current = monitor_data(labels, truth, healthy.embeddings[rng.permutation(n)] * 0.5 + 0.5, previous)
    outcome = run_monitor_report(current, healthy, GATE, tmp_path / "bad.html")
    assert not outcome.passed
    assert {g.gate for g in outcome.gates if not g.passed} == failed_gates
    table = gate_table((tmp_path / "bad.html").read_text())
    assert table["title"].startswith(f"Pseudo-label gates: FAILED ({len(failed_gates)} of 6 failed")
    assert {row[2].removeprefix("monitor.") for row in table["rows"].values() if row[-1] == "FAILED"} == failed_gates
    if broken == "one_cluster":
        assert "gate monitor.min_clusters FAILED: num_clusters = 1, must be >= 3" in outcome.failures
        assert table["rows"]["num_clusters"] == ["1", "10", "monitor.min_clusters", ">= 3", "FAILED"]
        assert outcome.drift["cluster_size_drift"] == pytest.approx(0.0)  # one size the reference never has
    if broken == "all_but_few_outliers":
        assert outcome.failures == ["gate monitor.max_outlier_ratio FAILED: outlier_ratio = 0.7, must be <= 0.3"]
    assert outcome.drift["embedding_drift"] > 0.01  # moved and shifted embeddings


def test_cluster_size_drift_names_the_method_evidently_chose_for_the_row_count():
    rng = np.random.default_rng(4)
    definition = DataDefinition(numerical_columns=["cluster_size"])
    for n, method in ((300, "K-S p_value"), (1500, "Wasserstein distance (normed)")):
        current, reference = (Dataset.from_pandas(pd.DataFrame({"cluster_size": rng.integers(1, 100, n) * 1.0}),
                                                  data_definition=definition) for _ in range(2))
        drift = drift_scores(Report([ValueDrift(column="cluster_size")]).run(current, reference).dict())
        assert drift["cluster_size_drift_method"] == method
        assert 0 <= drift["cluster_size_drift"] <= 1 and drift["cluster_size_drift_threshold"] > 0


def test_ground_truth_gates_are_skipped_when_the_data_has_no_identities(healthy):
    stats = {k: v for k, v in healthy.statistics.items() if k not in ("nmi", "purity")}
    gates = evaluate_gates(stats, MonitorParams(min_nmi=0.99, min_purity=0.99))
    assert {g.gate for g in gates} == {"max_outlier_ratio", "min_clusters", "max_largest_cluster_ratio",
                                       "max_label_churn"}


def test_monitor_data_round_trips_through_its_file(healthy, tmp_path):
    healthy.save(tmp_path / "data.npz")
    loaded = MonitorData.load(tmp_path / "data.npz")
    assert loaded.statistics == healthy.statistics and loaded.source == "reference run"
    np.testing.assert_array_equal(loaded.labels, healthy.labels)
    np.testing.assert_allclose(loaded.embeddings, healthy.embeddings, atol=1e-3)  # stored as float16
