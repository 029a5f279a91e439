"""All six stages through the Prefect flow, on a tiny profile, in a real git + DVC repo with MLflow (sqlite)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client

from dsfnet.checkpoint import load_checkpoint
from dsfnet.data import read_manifest
from dsfnet.features import extract_features
from pipeline.flows import StageError, dsfnet_pipeline
from pipeline.params import MonitorParams
from pipeline.serving import encode_image
from pipeline.stages import STAGES
from tests.project import dvc, dvc_env, make_project, stale, write_params
from tests.test_evaluation import reference_map_cmc

pytestmark = pytest.mark.e2e


def read(project: Path, name: str) -> dict:
    return json.loads((project / "metrics" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_harness):
    project = make_project(tmp_path_factory.mktemp("e2e") / "project")
    outcome = dsfnet_pipeline(project_dir=str(project))
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return project, outcome


def test_every_stage_ran_and_wrote_its_outputs(run):
    project, outcome = run
    assert outcome["stages"] == {stage: "ran" for stage in STAGES}
    assert read(project, "validate")["success"] is True
    train = read(project, "train")
    num_train = len(read_manifest(project / "data/prepared/manifest.csv").train)
    assert train["epoch"] == 1 and train["num_samples"] == num_train and num_train > 20
    assert read(project, "monitor")["passed"] is True
    for report in ("validate/index.html", "monitor/pseudo_labels.html", "evaluate/cmc.png", "evaluate/rank_list.png",
                   "evaluate/worst_queries.png", "train/epochs.csv", "prepare/contact_sheet.png"):
        assert (project / "reports" / report).stat().st_size > 0, report
    assert (project / "models" / "model.pt").is_file()
    assert (project / "dvc.lock").is_file()
    assert any("evaluation: mAP" in line for line in outcome["summary"])


def test_evaluation_metrics_match_an_independent_recomputation(run):
    project, _ = run
    dataset = read_manifest(project / "data/prepared/manifest.csv")
    dataset = dataset.rebased("data", project / "data")
    model, payload = load_checkpoint(project / "models/model.pt")
    h, w = payload["input_size"]
    q = extract_features(model, dataset.query, h, w, progress=False, flip=True)
    g = extract_features(model, dataset.gallery, h, w, progress=False, flip=True)
    arrays = lambda rs: (np.array([r.pid for r in rs]), np.array([r.camid for r in rs]))  # noqa: E731
    (qp, qc), (gp, gc) = arrays(dataset.query), arrays(dataset.gallery)
    mean_ap, cmc = reference_map_cmc(1.0 - q @ g.T, qp, gp, qc, gc, max_rank=10)  # sklearn's AP
    metrics = read(project, "evaluate")
    assert metrics["mAP"] == pytest.approx(100 * mean_ap, abs=1e-4)
    assert metrics["rank1"] == pytest.approx(100 * cmc[0], abs=1e-6)
    assert metrics["rank10"] == pytest.approx(100 * cmc[9], abs=1e-6)
    curve = pd.read_csv(project / "plots/cmc.csv")
    assert curve["cmc_plain"].is_monotonic_increasing
    assert curve["cmc_plain"].iloc[0] == pytest.approx(metrics["rank1"])
    stored = np.load(project / "reports/evaluate/embeddings_query.npz")
    assert list(stored["pids"]) == list(qp) and stored["features"].shape == (len(qp), q.shape[1])


def test_dvc_plots_show_renders_the_cmc_curve(run):
    project, _ = run
    result = dvc(project, "plots", "show", "--json")
    assert result.returncode == 0, result.stderr
    plots = json.loads(result.stdout)["data"]
    points = plots["CMC curve"][0]["content"]["data"]["values"]
    assert [float(p["rank"]) for p in points[:3]] == [1.0, 2.0, 3.0]
    rank1 = read(project, "evaluate")["rank1"]
    assert float(points[0]["cmc_plain"]) == pytest.approx(rank1)


def test_model_is_registered_as_champion_with_lineage(run):
    project, _ = run
    register = read(project, "register")
    assert register["registered"] is True and register["alias"] == "champion" and register["version"] == 1
    client = MlflowClient()
    champion = client.get_model_version_by_alias("dsfnet-reid", "champion")
    assert int(champion.version) == 1
    assert float(champion.tags["mAP"]) == pytest.approx(read(project, "evaluate")["mAP"])
    training_run = client.get_run(champion.run_id)
    assert training_run.data.params["train.epochs"] == "2"
    assert training_run.data.metrics["eval.mAP"] == pytest.approx(read(project, "evaluate")["mAP"])
    assert "monitor.purity" in training_run.data.metrics
    # lineage: git commit, DVC's hash of the prepared data, the lock, and the dataset input with that digest
    import subprocess

    import yaml

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    data_md5 = next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared")
    assert champion.tags["git.commit"] == training_run.data.tags["git.commit"] == head
    assert champion.tags["dvc.data_md5"] == training_run.data.tags["dvc.data_md5"] == data_md5
    assert training_run.data.tags["system.torch"] == torch.__version__
    assert training_run.data.tags["knn_backend"] == "torch"  # `auto` with no measurement (tests/conftest.py)
    inputs = training_run.inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("synthetic", data_md5[:36])]
    assert register["lineage"]["git.commit"] == head


def test_champion_pyfunc_returns_the_library_embeddings(run):
    project, _ = run
    model = mlflow.pyfunc.load_model("models:/dsfnet-reid@champion")
    dataset = read_manifest(project / "data/prepared/manifest.csv").rebased("data", project / "data")
    records = dataset.query[:3]
    embeddings = np.asarray(model.predict(pd.DataFrame({"image": [encode_image(r.path) for r in records]})))
    net, payload = load_checkpoint(project / "models/model.pt")
    expected = extract_features(net, records, *payload["input_size"], progress=False, flip=True)
    assert embeddings.shape == expected.shape
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    with pytest.raises(Exception, match="not a base64-encoded image"):
        model.predict(pd.DataFrame({"image": ["definitely not an image"]}))


def test_markdown_artifact_summarises_the_run(run):
    import asyncio

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts()

    markdown = [a for a in asyncio.run(artifacts()) if a.key == "dsfnet-summary"]
    assert markdown and "evaluation: mAP" in markdown[0].data


def test_rerun_with_nothing_changed_is_a_no_op(run):
    project, _ = run
    before = (project / "metrics/register.json").read_text()
    outcome = dsfnet_pipeline(project_dir=str(project))
    assert outcome["stages"] == {stage: "skipped" for stage in STAGES}
    assert (project / "metrics/register.json").read_text() == before
    assert stale(project) == {}  # only the snapshot, which is always run (and changed nothing)


def test_a_failed_gate_refuses_registration_and_reruns_only_what_depends_on_it(run):
    project, _ = run
    write_params(project, monitor={"min_clusters": 10_000})
    outcome = dsfnet_pipeline(project_dir=str(project))
    expected = {stage: "skipped" for stage in STAGES} | {"monitor": "ran", "register": "ran"}
    assert outcome["stages"] == expected
    assert read(project, "monitor")["passed"] is False
    register = read(project, "register")
    assert register["registered"] is False and register["version"] is None
    assert "monitor gate failed" in register["reason"]
    versions = MlflowClient().search_model_versions("name='dsfnet-reid'")
    assert [int(v.version) for v in versions] == [1]


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        ({"name": "market1502"}, "unknown dataset 'market1502'"),
        ({"name": "market1501", "root": "no/such/folder"}, "no/such/folder"),
    ],
)
def test_bad_dataset_params_stop_the_flow_at_prepare(tmp_path, prefect_harness, dataset, message):
    project = make_project(tmp_path / "project", dataset=dataset)
    with pytest.raises(StageError, match="prepare") as error:
        dsfnet_pipeline(project_dir=str(project))
    assert message in str(error.value)
    assert not (project / "metrics/register.json").exists()
    assert not (project / "models").exists()


def test_an_undecodable_image_stops_the_flow_at_validate(tmp_path, prefect_harness):
    # a user's Market-1501-layout folder with one corrupt file in it
    from dsfnet.data import SyntheticConfig, generate_synthetic

    root = tmp_path / "market"
    generate_synthetic(root, SyntheticConfig(num_train_ids=4, num_test_ids=3, num_cameras=3, cameras_per_id=2,
                                             images_per_camera=2, height=32, width=16), progress=False)
    broken = sorted((root / "query").glob("*.jpg"))[0]
    broken.write_bytes(b"\xff\xd8 truncated")
    project = make_project(tmp_path / "project", dataset={"name": "market1501", "root": str(root)})
    with pytest.raises(StageError, match="validate") as error:
        dsfnet_pipeline(project_dir=str(project))
    assert broken.name in str(error.value) and "does not decode" in str(error.value)
    assert read(project, "validate")["undecodable_images"] == 1
    assert not (project / "models").exists()
    assert not (project / "metrics/register.json").exists()


def test_dvc_repro_validate_on_a_market_layout_folder_needs_no_code_change(tmp_path):
    from dsfnet.data import SyntheticConfig, generate_synthetic

    root = tmp_path / "Market-1501-v15.09.15"
    generate_synthetic(root, SyntheticConfig(profile="tiny", height=64, width=32), progress=False)
    project = make_project(tmp_path / "project", dataset={"name": "market1501", "root": str(tmp_path)})
    result = dvc(project, "repro", "validate")
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = read(project, "validate")
    assert metrics["success"] is True and metrics["train_ids"] == 10 and metrics["query_ids"] == 6
    assert "Running stage 'train'" not in result.stdout


def test_train_resumes_after_kill_9_and_matches_the_uninterrupted_model(run, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    reference_project, _ = run
    project = make_project(tmp_path / "project")  # the same tiny profile and seed as the `run` project
    assert dvc(project, "repro", "validate").returncode == 0
    state = project / "checkpoints/train/last.pt"
    process = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "train"], cwd=project, env=dvc_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert state.exists(), "the train stage finished or failed before its first epoch checkpoint"
    os.killpg(process.pid, signal.SIGKILL)  # DVC and the stage it runs, as a crash would
    process.wait()
    assert not (project / "metrics/train.json").exists()

    result = dvc(project, "repro", "train")
    assert result.returncode == 0, result.stdout + result.stderr
    assert read(project, "train")["resumed_at_epoch"] == 1
    assert not state.exists()
    resumed = torch.load(project / "models/model.pt", weights_only=True)["state_dict"]
    reference = torch.load(reference_project / "models/model.pt", weights_only=True)["state_dict"]
    for name, tensor in reference.items():
        assert torch.equal(resumed[name], tensor), name


def test_monitor_report_statistics_and_plots(run):
    project, _ = run
    monitor = read(project, "monitor")
    assert monitor["reference"].startswith("this run, epoch 0")  # the champion is this very run
    assert {g["gate"] for g in monitor["gates"]} >= {"max_outlier_ratio", "min_clusters", "max_largest_cluster_ratio",
                                                     "max_label_churn", "min_nmi", "min_purity"}
    html = (project / "reports/monitor/pseudo_labels.html").read_text()
    for gate in monitor["gates"]:  # Python decides each gate; the report shows that decision
        assert f"monitor.{gate['gate']}" in html
    assert monitor["drift"]["cluster_size_drift_method"]  # which statistic the drift score is
    epochs = pd.read_csv(project / "reports/train/epochs.csv")
    labels = np.load(project / "reports/train/labels.npz")
    both = (labels["epoch_0"] >= 0) & (labels["epoch_1"] >= 0)
    from sklearn.metrics import adjusted_rand_score

    churn = 1 - adjusted_rand_score(labels["epoch_0"][both], labels["epoch_1"][both])
    assert np.isnan(epochs["label_churn"].iloc[0]) and epochs["label_churn"].iloc[1] == pytest.approx(churn)
    assert monitor["statistics"]["label_churn"] == pytest.approx(churn)
    assert monitor["num_clusters"] == epochs["num_clusters"].iloc[-1]
    recall = epochs["cross_camera_pair_recall"].iloc[-1]  # counted by dsfnet.label_stats (test_monitoring)
    assert 0 <= recall <= 1 and monitor["statistics"]["cross_camera_pair_recall"] == pytest.approx(recall)
    assert "embedding_drift" in monitor["drift"] and "cluster_size_drift" in monitor["drift"]
    for name in ("pseudo_labels.html", "epochs.png", "current.npz", "reference.npz"):
        assert (project / "reports/monitor" / name).stat().st_size > 0, name
    run_id = json.loads((project / "models/run.json").read_text())["run_id"]
    logged = {a.path for folder in ("reports", "monitor") for a in MlflowClient().list_artifacts(run_id, folder)}
    assert {"reports/epochs.png", "reports/pseudo_labels.html", "monitor/current.npz"} <= logged
    plots = json.loads(dvc(project, "plots", "show", "--json").stdout)["data"]
    assert {"pseudo-label clusters", "pseudo-label noise", "agreement with ground truth"} <= set(plots)


def test_a_collapsed_clustering_fails_the_gates_and_register_refuses_it(run):
    """Runs last: it retrains the shared project with an eps so large that DBSCAN makes one cluster."""
    project, _ = run
    write_params(project, cluster={"eps": 1.0}, monitor=dataclasses.asdict(MonitorParams()))
    outcome = dsfnet_pipeline(project_dir=str(project))
    assert outcome["stages"]["train"] == "ran" and outcome["stages"]["register"] == "ran"
    monitor = read(project, "monitor")
    assert monitor["passed"] is False and monitor["num_clusters"] == 1
    assert "gate monitor.min_clusters FAILED: num_clusters = 1, must be >= 2" in monitor["failures"]
    assert any(f.startswith("gate monitor.max_largest_cluster_ratio FAILED") for f in monitor["failures"])
    assert monitor["reference"].startswith("dsfnet-reid@champion v1")  # drift against the champion's last epoch
    register = read(project, "register")
    assert register["registered"] is False and "monitor.min_clusters" in register["reason"]
    assert [int(v.version) for v in MlflowClient().search_model_versions("name='dsfnet-reid'")] == [1]

    write_params(project, cluster={"eps": 1.0}, monitor={**dataclasses.asdict(MonitorParams()),
                                                         "stop_on_failure": True})
    with pytest.raises(StageError, match="monitor.min_clusters"):
        dsfnet_pipeline(project_dir=str(project))
