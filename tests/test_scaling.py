"""docs/scaling.md's recipes, driven for real on 127.0.0.1: an `mlflow server`, a `prefect server` with a process
work pool, `prefect deploy --all` and a worker, and a local-directory DVC remote.

One pipeline run serves every check (minutes on 2 cores): the deployment's "Quick run" (`prefect deployment run`)
is picked up by `prefect worker start --run-once`, which runs the flow in the project checkout with
MLFLOW_TRACKING_URI pointing at the MLflow server. Then: what the server holds, `mlflow models serve` and
`pipeline.search` against it, `dvc push` and a fresh clone's `dvc pull`, and a failing run of the deployment.
Processes are started in their own sessions and ended by their pids; ports are free loopback ports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow.tracking import MlflowClient

from pipeline.serving import encode_image
from tests.project import PROJECT_ROOT, dvc, git, make_project, stale
from tests.test_serving import free_port, served, wait_ok

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def tool_env(**extra: str) -> dict[str, str]:
    """This interpreter's tools first on PATH (mlflow starts uvicorn by name), no leaked MLflow/Prefect targets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API_"))}
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env.update(extra)
    return env


@contextmanager
def background(command: list[str], log: Path, env: dict[str, str], cwd: Path):
    """A process in its own session, ended (with everything it started) by its pid when the block ends."""
    handle = log.open("w")
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        yield process
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        handle.close()


def cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@dataclass
class Cluster:
    root: Path
    project: Path
    mlflow_url: str
    prefect_api: str
    env: dict[str, str]  # for prefect CLI, workers and flows: the Prefect server and the MLflow server

    def api(self, method: str, path: str, body: dict | None = None):
        response = requests.request(method, f"{self.prefect_api}{path}", json=body, timeout=30)
        assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text[:500]}"
        return response.json()

    def flow_run(self, run_id: str) -> dict:
        return self.api("GET", f"/flow_runs/{run_id}")


def quick_run(cluster: Cluster, *params: str) -> str:
    """`prefect deployment run` (the UI's Quick run), then one polling pass of a worker, which runs it."""
    args = [str(BIN / "prefect"), "deployment", "run", "dsfnet-pipeline/nightly"]
    for param in params:
        args += ["--param", param]
    out = cli(args, cluster.env, cluster.project).stdout
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert run_id, out
    log = cluster.root / f"worker-{run_id.group(1)[:8]}.log"
    with background([str(BIN / "prefect"), "worker", "start", "--pool", "dsfnet-process", "--run-once"], log,
                    cluster.env, cluster.project) as worker:
        try:
            worker.wait(timeout=1500)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not finish the flow run in 25 min: {log.read_text()[-3000:]}")
    return run_id.group(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling")
    project = make_project(root / "project")
    shutil.copy2(PROJECT_ROOT / "prefect.yaml", project / "prefect.yaml")
    git(project, "add", "prefect.yaml")
    git(project, "commit", "-qm", "prefect.yaml")
    mlflow_port, prefect_port = free_port(), free_port()
    server_env = tool_env(PREFECT_HOME=str(root / "prefect-home"))
    with ExitStack() as stack:
        mlflow_log, prefect_log = root / "mlflow-server.log", root / "prefect-server.log"
        (root / "server").mkdir()
        mlflow_server = stack.enter_context(background(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'server' / 'mlflow.db'}",
             "--artifacts-destination", str(root / "server" / "artifacts"), "--host", "127.0.0.1",
             "--port", str(mlflow_port), "--workers", "1"], mlflow_log, server_env, root))
        prefect_server = stack.enter_context(background(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            prefect_log, server_env, root))
        mlflow_url, prefect_api = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{prefect_port}/api"
        wait_ok(f"{mlflow_url}/health", process=mlflow_server, log=mlflow_log)
        wait_ok(f"{prefect_api}/health", process=prefect_server, log=prefect_log)
        env = tool_env(PREFECT_HOME=str(root / "prefect-home"), PREFECT_API_URL=prefect_api,
                       MLFLOW_TRACKING_URI=mlflow_url, DSFNET_PROJECT_DIR=str(project))
        prefect = str(BIN / "prefect")
        cli([prefect, "work-pool", "create", "dsfnet-process", "--type", "process"], env, project)
        cli([prefect, "--no-prompt", "deploy", "--all"], env, project)
        yield Cluster(root, project, mlflow_url, prefect_api, env)


@pytest.fixture(scope="module")
def completed_run(cluster):
    run_id = quick_run(cluster)
    return run_id, cluster.flow_run(run_id)


def test_the_worker_runs_the_deployment_to_completed_with_its_summary_artifact(cluster, completed_run):
    run_id, flow_run = completed_run
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
    artifacts = cluster.api("POST", "/artifacts/filter",
                            {"artifacts": {"key": {"any_": ["dsfnet-summary"]}, "flow_run_id": {"any_": [run_id]}}})
    assert len(artifacts) == 1
    markdown = artifacts[0]["data"]
    assert "register" in markdown and "mAP" in markdown
    metrics = json.loads((cluster.project / "metrics" / "evaluate.json").read_text())
    assert f"{metrics['mAP']:.2f}" in markdown


def test_the_deployment_keeps_its_nightly_schedule_with_a_next_run(cluster, completed_run):
    deployment = cluster.api("GET", "/deployments/name/dsfnet-pipeline/nightly")
    assert deployment["work_pool_name"] == "dsfnet-process"
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]
    # the server's scheduler has had the whole pipeline run's time to plan the next runs
    scheduled = cluster.api("POST", "/flow_runs/filter", {
        "deployments": {"id": {"any_": [deployment["id"]]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        "sort": "EXPECTED_START_TIME_ASC", "limit": 5})
    assert scheduled, "no scheduled next run"
    assert scheduled[0]["expected_start_time"][11:19] == "02:00:00"


def test_runs_model_and_alias_are_on_the_mlflow_server_and_nothing_is_stored_locally(cluster, completed_run):
    client = MlflowClient(tracking_uri=cluster.mlflow_url, registry_uri=cluster.mlflow_url)
    champion = client.get_model_version_by_alias("dsfnet-reid", "champion")
    assert int(champion.version) == 1
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cluster.project, capture_output=True,
                          text=True).stdout.strip()
    training_run = client.get_run(champion.run_id)
    assert champion.tags["git.commit"] == training_run.data.tags["git.commit"] == head
    assert "dvc.data_md5" in champion.tags and "eval.mAP" in training_run.data.metrics
    evaluate = json.loads((cluster.project / "metrics" / "evaluate.json").read_text())
    assert float(champion.tags["mAP"]) == pytest.approx(evaluate["mAP"])
    artifacts = {a.path for a in client.list_artifacts(champion.run_id)}
    assert artifacts, "the run logged no artifacts"
    assert (cluster.root / "server" / "artifacts").is_dir() and any((cluster.root / "server" / "artifacts").rglob("*"))
    assert not (cluster.project / "mlflow.db").exists() and not (cluster.project / "mlruns").exists()


def test_mlflow_models_serve_and_search_use_the_champion_on_the_server(cluster, completed_run):
    query = next((cluster.project / "data" / "prepared").rglob("*.jpg"))
    with served(cluster.root, cluster.mlflow_url) as url:
        body = {"dataframe_split": {"columns": ["image"], "data": [[encode_image(query)]]}}
        response = requests.post(f"{url}/invocations", json=body, timeout=120)
    assert response.status_code == 200, response.text
    embedding = np.array(response.json()["predictions"], dtype=np.float32)
    assert embedding.shape[0] == 1
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)

    gallery = query.parent
    result = cli([sys.executable, "-m", "pipeline.search", "--model", "models:/dsfnet-reid@champion",
                  "--gallery", str(gallery), "--query", str(query), "--top-k", "3",
                  "--cache", str(cluster.root / "search-cache")], cluster.env, cluster.root)
    ranked = [line.split()[2] for line in result.stdout.strip().splitlines()[2:]]
    assert ranked[0] == str(query)  # the query's own copy in the gallery comes first


def test_dvc_push_then_a_fresh_clone_pulls_everything_and_has_nothing_to_run(cluster, completed_run):
    project, remote, clone = cluster.project, cluster.root / "dvc-remote", cluster.root / "clone"
    assert dvc(project, "remote", "add", "--default", "storage", str(remote)).returncode == 0
    status = subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True).stdout
    assert "models/" not in status and "data/prepared" not in status  # DVC's outputs are git-ignored
    git(project, "add", "-A")  # dvc.lock, the metrics and plots DVC keeps in git, the remote's config
    git(project, "commit", "-qm", "pipeline run and its remote")
    pushed = dvc(project, "push")
    assert pushed.returncode == 0, pushed.stderr
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    pulled = dvc(clone, "pull")
    assert pulled.returncode == 0, pulled.stderr
    for name in ("models/model.pt", "metrics/evaluate.json", "metrics/train.json", "reports/evaluate"):
        assert (clone / name).exists(), name
    assert (clone / "models" / "model.pt").read_bytes() == (project / "models" / "model.pt").read_bytes()
    assert stale(clone) == {}
    repro = dvc(clone, "repro")
    assert repro.returncode == 0, repro.stderr
    ran = re.findall(r"Running stage '([^']+)'", repro.stdout)
    assert ran == ["snapshot"], repro.stdout  # the dataset listing always runs; nothing else has changed


def test_a_failing_stage_makes_a_failed_flow_run_with_the_reason(cluster, completed_run):
    try:
        run_id = quick_run(cluster, 'overrides={"dataset.name": "folder", "dataset.root": "/nonexistent/crops"}')
        flow_run = cluster.flow_run(run_id)
    finally:
        git(cluster.project, "checkout", "--", "params.yaml")
    state = flow_run["state"]
    assert state["type"] == "FAILED", state
    assert "StageError: DVC stage 'prepare' failed" in state["message"]
    assert "dataset root /nonexistent/crops for 'folder' does not exist" in state["message"]
    worker_log = (cluster.root / f"worker-{run_id[:8]}.log").read_text()
    assert f"flow run {flow_run['name']} failed: Flow run encountered an exception: StageError: DVC stage " \
           "'prepare' failed" in worker_log  # the one summary line the flow's failure hook prints
