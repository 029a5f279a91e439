"""Orchestration: the flow's retries, timeouts, overrides and failure state; the scheduled deployment;
retraining only when DVC sees a change; DDP from the train stage; the Dockerfile, prefect.yaml and CI
workflow as files a user relies on."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipeline.flows import StageError, dsfnet_pipeline, parse_overrides
from pipeline.params import load_params
from pipeline.profiles import ProfileError, set_params
from tests.project import PROJECT_ROOT, dvc, make_project, stale, write_params

pytestmark = pytest.mark.e2e


# --- files a user relies on -------------------------------------------------------------------------------------

def test_dockerfile_passes_hadolint_and_runs_the_flow_as_a_non_root_user():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "Dockerfile"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line.strip() for line in (PROJECT_ROOT / "Dockerfile").read_text().splitlines()]
    base = next(line for line in lines if line.startswith("FROM "))
    assert base.startswith("FROM nvidia/cuda:") and "-runtime-" in base
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert lines.index(f"USER {users[-1]}") < lines.index('CMD ["python", "-m", "pipeline.flows"]')


def test_prefect_yaml_declares_the_params_schedule_for_a_work_pool():
    declared = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    settings = load_params(PROJECT_ROOT / "params.yaml").flow
    [deployment] = [d for d in declared if d["name"] == settings.deployment]
    assert deployment["schedules"] == [{"cron": settings.cron, "timezone": settings.timezone}]
    assert deployment["work_pool"]["name"]
    path, name = deployment["entrypoint"].split(":")
    assert (PROJECT_ROOT / path).is_file() and name == dsfnet_pipeline.fn.__name__


def test_ci_workflow_retrains_on_data_params_and_lock_changes_and_nightly():
    workflow = yaml.safe_load((PROJECT_ROOT / ".github/workflows/retrain.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert {"dvc.lock", "params.yaml", "**.dvc"} <= set(triggers["push"]["paths"])
    assert triggers["schedule"] == [{"cron": "0 2 * * *"}]
    steps = workflow["jobs"]["retrain"]["steps"]
    assert any("python -m pipeline.retrain_if_changed" in step.get("run", "") for step in steps)
    assert any("DVC_REMOTE_URL" in step.get("run", "") for step in steps)


def test_overrides_edit_params_like_dvc_exp_run_set(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", params)
    before = params.read_text()
    assert parse_overrides(["train.epochs=20", "cluster.eps=0.55", "dataset.root=null"]) == \
        {"train.epochs": 20, "cluster.eps": 0.55, "dataset.root": None}
    changes = set_params({"train.epochs": 20, "cluster.eps": 0.55}, params)
    assert changes == {"train.epochs": (12, 20), "cluster.eps": (0.5, 0.55)}
    after = params.read_text()
    assert load_params(params).train.epochs == 20 and load_params(params).cluster.eps == 0.55
    assert "  eps: 0.55                # 0.6 in the paper" in after  # the comment stays in its column
    assert len(after.splitlines()) == len(before.splitlines())
    with pytest.raises(ProfileError, match="unknown key train.epoch"):
        set_params({"train.epoch": 3}, params)
    assert params.read_text() == after  # nothing written on error
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        parse_overrides(["train.epochs"])


# --- the deployment ----------------------------------------------------------------------------------------------

def test_the_nightly_deployment_is_created_with_its_schedule(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client

    from pipeline.deploy import build_deployment

    project = make_project(tmp_path / "project", flow={"cron": "30 3 * * *", "timezone": "Europe/Paris"})
    deployment_id = build_deployment(project).apply()

    async def read():
        async with get_client() as client:
            return await client.read_deployment(deployment_id)

    stored = asyncio.run(read())
    assert stored.name == "nightly" and stored.parameters == {"project_dir": str(project.resolve())}
    [schedule] = stored.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("30 3 * * *", "Europe/Paris",
                                                                                      True)


# --- the flow on a real project ----------------------------------------------------------------------------------

def market_tree(root: Path) -> Path:
    from dsfnet.data import SyntheticConfig, generate_synthetic

    generate_synthetic(root, SyntheticConfig(profile="tiny", height=64, width=32), progress=False)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness):
    """A project whose Market-1501-layout dataset lives under data/raw/, where DVC watches it."""
    project = make_project(tmp_path_factory.mktemp("orchestration") / "project",
                           dataset={"name": "market1501", "root": "data/raw/market"},
                           flow={"retry_delay_s": 0})
    market_tree(project / "data/raw/market")
    return project


def _kill_first_train_attempt(project: Path, done: threading.Event) -> None:
    """Kill the train stage once, after its first epoch's checkpoint: the retry must resume and finish."""
    state = project / "checkpoints/train/last.pt"
    deadline = time.monotonic() + 600
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if b"pipeline.stages.train" in cmdline and Path(cwd) == project.resolve():
            os.kill(int(pid), signal.SIGKILL)
            done.set()


def test_a_crashed_train_stage_is_retried_and_resumes(project):
    from prefect.client.orchestration import get_client

    killed = threading.Event()
    watcher = threading.Thread(target=_kill_first_train_attempt, args=(project, killed), daemon=True)
    watcher.start()
    state = dsfnet_pipeline(project_dir=str(project), return_state=True)
    watcher.join(timeout=5)
    assert killed.is_set(), "the train stage was never seen running"
    assert state.is_completed()
    outcome = state.result()
    assert outcome["stages"]["train"] == "ran" and outcome["stages"]["register"] == "ran"
    assert (project / "metrics/train.json").is_file()
    import json

    assert json.loads((project / "metrics/train.json").read_text())["resumed_at_epoch"] == 1

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def train_runs():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
            return [r for r in runs if r.name == "dvc repro train"]

    [train_run] = asyncio.run(train_runs())
    assert train_run.run_count == 2  # failed once, retried once


def test_retrain_if_changed_runs_only_when_dvc_sees_a_change(project, capsys):
    from PIL import Image

    from pipeline.retrain_if_changed import main as retrain

    assert retrain(["--project-dir", str(project)]) == 0
    assert "up to date" in capsys.readouterr().out
    before = (project / "metrics/register.json").read_text()

    image = sorted((project / "data/raw/market/bounding_box_train").glob("*.jpg"))[0]
    with Image.open(image) as original:
        changed = original.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    changed.save(image, quality=90)
    assert retrain(["--project-dir", str(project), "--dry-run"]) == 0
    assert "prepare" in capsys.readouterr().out
    assert retrain(["--project-dir", str(project)]) == 0
    out = capsys.readouterr().out
    assert "changed since the last run" in out and "DSFNet pipeline finished" in out
    after = (project / "metrics/register.json").read_text()
    assert after != before  # a new model was considered for registration
    assert stale(project) == {}


def test_a_stage_past_its_timeout_is_killed_and_fails_the_flow(project):
    write_params(project, dataset={"name": "market1501", "root": "data/raw/market"}, train={"seed": 7},
                 flow={"retry_delay_s": 0, "train_retries": 0, "timeout_min": {"train": 0.02}})
    monitored = (project / "metrics/monitor.json").stat().st_mtime_ns
    state = dsfnet_pipeline(project_dir=str(project), stages=["train", "monitor"], return_state=True)
    assert state.is_failed()
    with pytest.raises(StageError, match=r"'train' timed out after 0.02 min \(flow.timeout_min.train\)"):
        state.result()
    assert (project / "metrics/monitor.json").stat().st_mtime_ns == monitored  # later stages did not run
    status = dvc(project, "status")  # the kill left dvc.lock whole: DVC still reads it
    assert status.returncode == 0, status.stdout + status.stderr
    assert "train" in yaml.safe_load((project / "dvc.lock").read_text())["stages"]


LEADER = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("started", flush=True)
code = child.wait()
open(sys.argv[1], "w").write(str(code))  # what DVC does when its command dies: notices, cleans up, exits
sys.exit(1)
"""


def test_a_timed_out_stage_loses_its_command_but_dvc_finishes_on_its_own(tmp_path):
    from pipeline.flows import stop_stage_commands

    marker = tmp_path / "leader_saw"
    leader = subprocess.Popen([sys.executable, "-c", LEADER, str(marker)], stdout=subprocess.PIPE,
                              start_new_session=True)
    assert leader.stdout.readline().strip() == b"started"
    stop_stage_commands(leader, grace_s=20)
    assert leader.wait(timeout=20) == 1  # the leader exited by itself, after its child was killed
    assert marker.read_text() == str(-signal.SIGKILL)


def test_a_timed_out_leader_that_will_not_stop_is_killed_after_the_grace_period(tmp_path):
    from pipeline.flows import stop_stage_commands

    leader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    started = time.monotonic()
    stop_stage_commands(leader, grace_s=1)
    assert leader.wait(timeout=20) == -signal.SIGKILL
    assert time.monotonic() - started < 15


def test_train_gpus_2_runs_the_stage_under_torchrun_on_cpu(project):
    write_params(project, dataset={"name": "market1501", "root": "data/raw/market"}, train={"gpus": 2},
                 flow={"retry_delay_s": 0})
    result = dvc(project, "repro", "train")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "torch.distributed.run --standalone --nproc_per_node=2" in result.stdout + result.stderr
    import json

    metrics = json.loads((project / "metrics/train.json").read_text())
    assert metrics["num_samples"] > 0 and (project / "models/model.pt").is_file()
