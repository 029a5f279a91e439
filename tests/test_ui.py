"""`make ui` and `make serve-flow` as a person uses them, looked at in headless Chromium; `make ui-stop` must end
every process `make ui` started (the MLflow UI alone starts about fifteen: uvicorn and job-runner workers).

Chromium is the Debian package; the test installs it with apt-get when it is missing and skips, saying why,
only where it cannot be installed. The screenshots stay in the project's reports/ui/ (and are copied to
$DSFNET_UI_SCREENSHOTS when that is set).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsfnet.checkpoint import save_checkpoint
from dsfnet.config import DSFNetConfig
from dsfnet.models import ModelConfig, build_model
from tests import test_serving as serving
from tests.project import PROJECT_ROOT, make_project
from tests.test_serving import free_port, wait_ok

pytestmark = pytest.mark.e2e

VENV = Path(sys.executable).parents[1]


def chromium() -> str:
    """The Chromium binary, installed with apt-get when missing (root only)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Chromium is not installed and cannot be installed here (apt-get as root is needed)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    for command in (install, ["apt-get", "update"], install):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if command is install and result.returncode == 0:
            break
    found = shutil.which("chromium")
    if not found:
        pytest.skip(f"apt-get could not install Chromium: {(result.stderr or result.stdout).strip()[-300:]}")
    return found


def make(project: Path, *targets: str, **variables: int) -> list[str]:
    """`make TARGET` with this project's Makefile and the test's own virtual environment (nothing installed)."""
    return ["make", "-s", "-f", str(PROJECT_ROOT / "Makefile"), "-C", str(project), f"VENV={VENV}",
            "-o", f"{VENV}/.installed", *targets, *(f"{k}={v}" for k, v in variables.items())]


def browse(browser: str, url: str, screenshot: Path) -> str:
    """The page's DOM after its scripts ran (and a screenshot of it)."""
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,900", "--virtual-time-budget=30000"]
    subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, timeout=180, check=True)
    return subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=180,
                          check=True).stdout


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def group_alive(pgid: int) -> bool:
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True).returncode == 0


def register_champion(project: Path) -> None:
    """A registered version with the register stage's alias and tags, in the project's own MLflow store."""
    torch.manual_seed(0)
    save_checkpoint(project / "model.pt", build_model(ModelConfig(), DSFNetConfig.baseline()), ModelConfig(),
                    height=32, width=16)
    serving.register_champion(project, project / "model.pt", {"mAP": "42.5", "git.commit": "0123abc"})


def test_the_uis_show_the_deployment_and_the_champion_and_ui_stop_ends_everything(tmp_path):
    browser = chromium()
    project = make_project(tmp_path / "project")
    register_champion(project)
    prefect_port, mlflow_port = free_port(), free_port()
    ports = {"PREFECT_PORT": prefect_port, "MLFLOW_PORT": mlflow_port}
    subprocess.run(make(project, "ui", **ports), check=True, capture_output=True, timeout=120)
    pids = {name: int((project / name).read_text()) for name in (".prefect-server.pid", ".mlflow-ui.pid")}
    serve_flow = None
    try:
        wait_ok(f"http://127.0.0.1:{prefect_port}/api/health")
        wait_ok(f"http://127.0.0.1:{mlflow_port}/health")
        log = (tmp_path / "serve-flow.log").open("w")
        serve_flow = subprocess.Popen(make(project, "serve-flow", PREFECT_PORT=prefect_port), stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        wait_ok(f"http://127.0.0.1:{prefect_port}/api/deployments/name/dsfnet-pipeline/nightly", timeout=180)

        shots = project / "reports" / "ui"
        shots.mkdir(parents=True, exist_ok=True)
        deployments = browse(browser, f"http://127.0.0.1:{prefect_port}/deployments", shots / "prefect-deployments.png")
        assert "nightly" in deployments and "dsfnet-pipeline" in deployments
        assert "At 02:00 AM every day" in deployments  # params.yaml's flow.cron, as the UI words it
        version = browse(browser, f"http://127.0.0.1:{mlflow_port}/#/models/dsfnet-reid/versions/1",
                         shots / "mlflow-champion.png")
        assert "Version 1" in version and "champion" in version
        assert "mAP" in version and "42.5" in version and "0123abc" in version
        assert all((shots / name).stat().st_size > 10_000 for name in ("prefect-deployments.png",
                                                                        "mlflow-champion.png"))
        if os.environ.get("DSFNET_UI_SCREENSHOTS"):
            shutil.copytree(shots, os.environ["DSFNET_UI_SCREENSHOTS"], dirs_exist_ok=True)
    finally:
        if serve_flow is not None:
            os.killpg(serve_flow.pid, signal.SIGTERM)
            serve_flow.wait(timeout=60)
        workers = {pid: subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()
                   for pid in pids.values()}
        subprocess.run(make(project, "ui-stop"), check=True, capture_output=True, timeout=120)

    assert len(workers[pids[".mlflow-ui.pid"]]) > 1  # the MLflow UI's own workers were running
    assert not any(group_alive(pid) for pid in pids.values()), "a process `make ui` started outlived ui-stop"
    assert not listening(prefect_port) and not listening(mlflow_port)
    assert not (project / ".prefect-server.pid").exists() and not (project / ".mlflow-ui.pid").exists()
