"""Pseudo-label statistics against literal definitions, and the evidently monitor report with its gates."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from dsfnet.label_stats import epoch_statistics, gini, label_churn, multi_camera_share
from dsfnet.trainer import label_quality
from pipeline.monitoring import MonitorData, evaluate_gates, run_monitor_report, sample_frame
from pipeline.params import MonitorParams
from tests.test_trainer import CLUSTER, CONFIG, fresh_model, records, uninterrupted  # noqa: F401 - fixtures

GATE = MonitorParams(max_outlier_ratio=0.3, min_clusters=3, max_largest_cluster_ratio=0.5, max_label_churn=0.5,
                     min_nmi=0.3, min_purity=0.5)


def test_gini_matches_the_mean_absolute_difference_definition():
    rng = np.random.default_rng(0)
    for sizes in (rng.integers(1, 50, 30), np.array([5, 5, 5, 5]), np.array([1, 1, 1, 97]), np.array([7])):
        x = sizes.astype(float)
        reference = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())
        assert gini(sizes) == pytest.approx(reference)
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


def test_epoch_statistics_leave_ground_truth_scores_out_without_identities():
    labels = np.array([0, 0, 1, 1, 1, -1])
    stats = epoch_statistics(labels, np.array([0, 1, 0, 0, 0, 1]), None, None)
    assert stats["median_cluster_size"] == 2.5 and stats["multi_camera_share"] == 0.5
    assert np.isnan(stats["nmi"]) and np.isnan(stats["purity"])


def test_the_trainer_records_churn_and_cluster_shape_every_epoch(records, uninterrupted):  # noqa: F811
    _, result = uninterrupted
    camids = np.array([r.camid for r in records])
    assert np.isnan(result.history[0].label_churn)
    for epoch in range(1, len(result.history)):
        previous, current = result.labels[epoch - 1], result.labels[epoch]
        assert result.history[epoch].label_churn == pytest.approx(label_churn(previous, current))
        assert result.history[epoch].multi_camera_share == pytest.approx(multi_camera_share(current, camids))
        assert result.history[epoch].size_gini == pytest.approx(gini(np.bincount(current[current >= 0])))
    assert result.embeddings["first"].shape == result.embeddings["last"].shape == (len(records), 512)
    assert not np.array_equal(result.embeddings["first"], result.embeddings["last"])


def test_sample_frame_agrees_with_trainer_purity():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 8, 200)
    labels = np.where(rng.random(200) < 0.1, -1, (truth + (rng.random(200) < 0.3)) % 8)
    frame = sample_frame(labels, truth)
    assert frame["label_agrees"].mean() == pytest.approx(label_quality(labels, truth)["purity"])
    assert frame["is_outlier"].mean() == pytest.approx((labels < 0).mean())
    sizes = np.bincount(labels[labels >= 0])
    assert frame["cluster_share"].max() == pytest.approx(sizes.max() / 200)


def monitor_data(labels, truth, embeddings, previous=None, source="") -> MonitorData:
    stats = epoch_statistics(labels, np.arange(len(labels)) % 3, previous, truth)
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(1)
    stats = {"num_clusters": float((sizes > 0).sum()), "outlier_ratio": float((labels < 0).mean()),
             "largest_cluster_ratio": float(sizes.max() / len(labels)), **stats}
    return MonitorData(stats, labels, truth, np.arange(len(labels)), embeddings, source)


@pytest.fixture(scope="module")
def healthy(request):
    from tests.conftest import clustered_features

    features, truth = clustered_features(10, 12, 32, noise=0.4, seed=0)
    labels = truth.copy()
    labels[::15] = -1
    return monitor_data(labels, truth, features, previous=labels, source="reference run")


def test_a_healthy_run_passes_and_every_test_is_in_the_report(healthy, tmp_path):
    outcome = run_monitor_report(healthy, healthy, GATE, tmp_path / "ok.html")
    assert outcome.passed and outcome.failures == []
    assert {g.gate for g in outcome.gates} == {"max_outlier_ratio", "min_clusters", "max_largest_cluster_ratio",
                                               "max_label_churn", "min_nmi", "min_purity"}
    assert len(outcome.tests) == 6 and all(t["status"] == "SUCCESS" for t in outcome.tests)
    assert outcome.drift["embedding_drift"] == pytest.approx(0.0, abs=1e-6)  # identical embeddings
    html = (tmp_path / "ok.html").read_text()
    assert "stat_label_churn" in html and "Drift in embeddings" in html
    json.dumps(outcome.as_dict())  # metrics/monitor.json must be writable as is


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
    failed = [t for t in outcome.tests if t["status"] != "SUCCESS"]
    assert len(failed) == len(failed_gates)  # evidently's tests agree with the gates
    if broken == "one_cluster":
        assert "gate monitor.min_clusters FAILED: num_clusters = 1, must be >= 3" in outcome.failures
    if broken == "all_but_few_outliers":
        assert outcome.failures == ["gate monitor.max_outlier_ratio FAILED: outlier_ratio = 0.7, must be <= 0.3"]
    assert outcome.drift["embedding_drift"] > 0.01  # moved and shifted embeddings


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
