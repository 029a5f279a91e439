"""The register stage against a real sqlite registry: gates, champion / challenger, lineage, and two
register stages racing for the champion alias."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from dsfnet.checkpoint import save_checkpoint
from dsfnet.models import ModelConfig, build_model
from pipeline.params import params_from_dict
from pipeline.stages.register import register

pytestmark = pytest.mark.e2e
DATA_MD5 = "0123456789abcdef0123456789abcdef.dir"


def client_of(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def prepare_workdir(root: Path, uri: str) -> None:
    """A git repo with a dvc.lock, a checkpoint and passing validate/monitor metrics, as the stages leave them."""
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_checkpoint(root / "models/model.pt", build_model(ModelConfig()), ModelConfig(), height=32, width=16)
    (root / "dvc.lock").write_text(f"schema: '2.0'\nstages:\n  prepare:\n    outs:\n    - path: data/prepared\n"
                                   f"      md5: {DATA_MD5}\n")
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics/validate.json").write_text(json.dumps({"success": True}))
    (root / "metrics/monitor.json").write_text(json.dumps({"passed": True, "failures": []}))
    (root / "params.yaml").write_text("register:\n  min_map: 5.0\n")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "state"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", *args], cwd=root, check=True)


def register_in(root: Path, uri: str, mAP: float | None, rank1: float | None, **register_params) -> dict:
    """One pipeline run's tail: a training run, its evaluation metrics, then the register stage."""
    import os

    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("dsfnet")
    with mlflow.start_run() as run:
        pass
    (root / "models/run.json").write_text(json.dumps({"run_id": run.info.run_id}))
    evaluation = ({"mAP": mAP, "rank1": rank1} if mAP is not None
                  else {"evaluated": False, "reason": "no labelled query and gallery"})
    (root / "metrics/evaluate.json").write_text(json.dumps(evaluation))
    params = params_from_dict({"mlflow": {"tracking_uri": uri},
                               "register": {"min_map": 5.0, "min_rank1": 5.0, **register_params}})
    register(params)
    return json.loads((root / "metrics/register.json").read_text())


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    prepare_workdir(tmp_path / "work", uri)
    return tmp_path / "work", uri


def test_champion_moves_only_for_a_better_map_and_others_become_challengers(store):
    root, uri = store
    first = register_in(root, uri, 40.0, 45.0)
    assert (first["version"], first["alias"], first["reason"]) == (1, "champion", "first champion on synthetic")
    worse = register_in(root, uri, 38.0, 50.0)
    assert worse["alias"] == "challenger" and worse["champion_version"] == 1
    assert "does not beat champion v1 (40.00%)" in worse["reason"]
    tie = register_in(root, uri, 40.0, 47.0)
    assert tie["alias"] == "challenger" and tie["champion_version"] == 1  # a tie keeps the old champion
    better = register_in(root, uri, 41.5, 44.0)
    assert better["alias"] == "champion" and better["reason"] == "mAP 41.50% beats champion v1 (40.00%)"
    client = client_of(uri)
    assert int(client.get_model_version_by_alias("dsfnet-reid", "champion").version) == 4
    assert int(client.get_model_version_by_alias("dsfnet-reid", "challenger").version) == 3
    version = client.get_model_version("dsfnet-reid", "2")
    assert version.tags["decision"] == worse["reason"] and version.description.startswith("challenger:")
    assert float(version.tags["mAP"]) == 38.0 and float(version.tags["rank1"]) == 50.0


def test_versions_carry_lineage_back_to_git_and_dvc(store):
    root, uri = store
    result = register_in(root, uri, 40.0, 45.0)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    version = client_of(uri).get_model_version("dsfnet-reid", str(result["version"]))
    assert version.tags["git.commit"] == head and version.tags["git.dirty"] == "false"
    assert version.tags["dvc.data_md5"] == DATA_MD5
    import hashlib

    assert version.tags["dvc.lock.sha256"] == hashlib.sha256((root / "dvc.lock").read_bytes()).hexdigest()
    assert len(version.tags["params.sha256"]) == 64 and version.tags["dataset.name"] == "synthetic"
    run = client_of(uri).get_run(version.run_id)
    assert run.data.tags["git.commit"] == head
    assert [a.path for a in client_of(uri).list_artifacts(run.info.run_id, "lineage")] == ["lineage/dvc.lock"]
    model = mlflow.pyfunc.load_model(result["model_uri"])
    assert model.metadata.metadata["embedding_dim"] == 512
    (root / "dvc.lock").write_text((root / "dvc.lock").read_text() + "# edited\n")  # a tracked file changes
    dirty = register_in(root, uri, 39.0, 45.0)
    assert client_of(uri).get_model_version("dsfnet-reid", str(dirty["version"])).tags["git.dirty"] == "true"


@pytest.mark.parametrize(("metrics", "message"), [
    ({"mAP": 4.0, "rank1": 50.0}, "evaluate gate failed: mAP 4.00% is below register.min_map=5.0%"),
    ({"mAP": 40.0, "rank1": 4.0}, "evaluate gate failed: rank-1 4.00% is below register.min_rank1=5.0%"),
])
def test_failed_evaluate_gates_register_nothing(store, metrics, message):
    root, uri = store
    result = register_in(root, uri, **{"mAP": metrics["mAP"], "rank1": metrics["rank1"]})
    assert result["registered"] is False and message in result["reason"]
    assert client_of(uri).search_model_versions("name='dsfnet-reid'") == []


def test_failed_validate_or_monitor_gates_register_nothing(store):
    root, uri = store
    (root / "metrics/validate.json").write_text(json.dumps({"success": False}))
    (root / "metrics/monitor.json").write_text(json.dumps(
        {"passed": False, "failures": ["gate monitor.min_clusters FAILED: num_clusters = 1, must be >= 2"]}))
    result = register_in(root, uri, 40.0, 45.0)
    assert "validate gate failed" in result["reason"]
    assert "monitor gate failed: gate monitor.min_clusters FAILED: num_clusters = 1" in result["reason"]


def _race(root: str, uri: str, mAP: float, start, out) -> None:
    start.wait()
    out.put((mAP, register_in(Path(root), uri, mAP, 50.0)))


def test_two_register_stages_at_once_end_with_one_champion(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # register_in changes both; monkeypatch puts them back
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        prepare_workdir(root, uri)
    register_in(roots[0], uri, 30.0, 50.0)  # an existing champion both must beat
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(2), context.Queue()
    racers = [context.Process(target=_race, args=(str(root), uri, m, start, out))
              for root, m in zip(roots, (41.0, 42.0), strict=True)]
    for p in racers:
        p.start()
    results = dict(out.get(timeout=300) for _ in racers)
    for p in racers:
        p.join(timeout=60)
        assert p.exitcode == 0
    champion = client_of(uri).get_model_version_by_alias("dsfnet-reid", "champion")
    assert float(champion.tags["mAP"]) == 42.0
    assert results[42.0]["alias"] == "champion" and results[42.0]["version"] == int(champion.version)
    if results[41.0]["alias"] == "champion":  # 41 settled before 42 was registered: 42 then beat it
        assert results[42.0]["reason"] == f"mAP 42.00% beats champion v{results[41.0]['version']} (41.00%)"
    else:  # overlapping: 41 saw 42 in the registry and stood back
        assert results[41.0]["alias"] == "challenger" and results[41.0]["champion_version"] == int(champion.version)


def test_an_unevaluated_model_serves_only_until_an_evaluated_one_exists(store):
    root, uri = store
    refused = register_in(root, uri, None, None)
    assert refused["registered"] is False and "register.require_evaluation: false" in refused["reason"]
    first = register_in(root, uri, None, None, require_evaluation=False)
    assert (first["version"], first["alias"]) == (1, "champion") and "has been evaluated" in first["reason"]
    newer = register_in(root, uri, None, None, require_evaluation=False)
    assert (newer["version"], newer["alias"]) == (2, "champion")  # no score: the newest serves
    evaluated = register_in(root, uri, 12.0, 20.0, require_evaluation=False)
    assert (evaluated["version"], evaluated["alias"]) == (3, "champion")
    later = register_in(root, uri, None, None, require_evaluation=False)
    assert later["alias"] == "challenger" and "cannot displace champion v3" in later["reason"]
    client = client_of(uri)
    assert int(client.get_model_version_by_alias("dsfnet-reid", "champion").version) == 3
    assert client.get_model_version("dsfnet-reid", "4").tags["evaluated"] == "false"
