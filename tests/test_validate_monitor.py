"""The great-expectations suite and the evidently gate, on real data frames and real tools."""

import numpy as np
import pandas as pd
import pytest

from dsfnet.data import SyntheticConfig, generate_synthetic
from dsfnet.trainer import label_quality
from pipeline.expectations import derive_columns, validate_manifest
from pipeline.monitoring import run_monitor_report, sample_frame
from pipeline.params import MonitorParams


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("synthetic")
    config = SyntheticConfig(num_train_ids=4, num_test_ids=3, num_cameras=3, cameras_per_id=2,
                             images_per_camera=2, height=32, width=16)
    dataset = generate_synthetic(root, config, progress=False)
    rows = [(r.path, r.pid, r.camid, split) for split, recs in dataset.splits().items() for r in recs]
    return pd.DataFrame(rows, columns=["path", "pid", "camid", "split"])


def _validate(frame, tmp_path):
    return validate_manifest(derive_columns(frame, check_images=True), "synthetic", tmp_path / "docs")


def test_clean_manifest_passes_and_writes_data_docs(manifest, tmp_path):
    outcome = _validate(manifest, tmp_path)
    assert outcome.success and outcome.failed == 0 and outcome.evaluated >= 10
    assert (tmp_path / "docs" / "index.html").is_file()


def test_undecodable_image_is_named(manifest, tmp_path):
    bad = tmp_path / "0099_c1s1_000000_00.jpg"
    bad.write_bytes(b"not a jpeg")
    frame = manifest.copy()
    frame.loc[0, "path"] = str(bad)
    outcome = _validate(frame, tmp_path)
    assert not outcome.success
    assert any("does not decode" in p and str(bad) in p for p in outcome.problems)


def test_query_without_cross_camera_match_and_id_overlap_are_caught(manifest, tmp_path):
    frame = manifest.copy()
    query = frame.index[frame["split"] == "query"][0]
    pid, cam = frame.loc[query, ["pid", "camid"]]
    gallery_rows = (frame["split"] == "gallery") & (frame["pid"] == pid)
    frame = frame[~gallery_rows | (frame["camid"] == cam)]  # leave only same-camera gallery images
    train_row = frame.index[frame["split"] == "train"][0]
    frame.loc[train_row, "pid"] = pid  # a test identity leaks into train
    outcome = _validate(frame, tmp_path)
    problems = "\n".join(outcome.problems)
    assert "no gallery image from another camera" in problems
    assert frame.loc[query, "path"] in problems
    assert "both train and test" in problems and frame.loc[train_row, "path"] in problems


def test_bad_file_name_and_camera_range(manifest, tmp_path):
    frame = manifest.copy()
    frame.loc[1, "camid"] = 17
    frame.loc[2, "path"] = frame.loc[2, "path"].replace(".jpg", "_x.jpg")
    outcome = _validate(frame, tmp_path)
    problems = "\n".join(outcome.problems)
    assert "file name does not follow" in problems
    assert "camid" in problems


def test_sample_frame_agrees_with_trainer_purity():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 8, 200)
    labels = np.where(rng.random(200) < 0.1, -1, (truth + (rng.random(200) < 0.3)) % 8)
    frame = sample_frame(labels, truth)
    assert frame["label_agrees"].mean() == pytest.approx(label_quality(labels, truth)["purity"])
    assert frame["is_outlier"].mean() == pytest.approx((labels < 0).mean())
    sizes = np.bincount(labels[labels >= 0])
    assert frame["cluster_share"].max() == pytest.approx(sizes.max() / 200)


def test_monitor_gate_fails_on_collapsed_clustering(tmp_path):
    truth = np.repeat(np.arange(10), 10)
    healthy = sample_frame(truth.copy(), truth)
    collapsed = sample_frame(np.where(np.arange(100) < 30, -1, 0), truth)  # one giant cluster + outliers
    gate = MonitorParams(max_outlier_ratio=0.2, min_clusters=2, max_largest_cluster_ratio=0.5, min_purity=0.5)
    ok = run_monitor_report(healthy, healthy, gate, tmp_path / "ok.html")
    assert ok.passed and ok.tests_total == 4
    bad = run_monitor_report(collapsed, healthy, gate, tmp_path / "bad.html")
    assert not bad.passed and len(bad.failures) == 4  # outliers, giant cluster, one cluster, impure
    assert (tmp_path / "bad.html").stat().st_size > 10_000
