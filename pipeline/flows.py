"""The Prefect flow: run every DVC stage, one at a time, and summarise what came out.

Each task runs `dvc repro <stage>`, so DVC decides what is stale and skips the rest; the flow never
runs two stages at once (DVC locks the workspace). The train task retries (`flow.train_retries`), every
stage has a wall-clock limit (`flow.timeout_min.<stage>`), a failed task or flow logs a one-line summary,
and each run leaves a markdown artifact (metrics, gate decisions, links). Flow parameter `overrides`
({"train.epochs": 20}) is written into params.yaml first, as `dvc exp run -S train.epochs=20` would.

    python -m pipeline.flows [--set train.epochs=20 ...] [--stages train monitor]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE as NO_CACHE

import pipeline  # noqa: F401 - switches off analytics before prefect is imported
from pipeline.params import ParamsError, load_params, tracking_uri
from pipeline.paths import EVALUATE_REPORTS, MONITOR_REPORTS, RUN_INFO, VALIDATE_REPORTS, metrics_file
from pipeline.stages import STAGES

SKIPPED_MARKER = "didn't change, skipping"


class StageError(RuntimeError):
    """A DVC stage exited non-zero or ran out of time; the message carries the end of its output."""


def stage_env() -> dict[str, str]:
    """Stage commands say `python -m ...`: make that the interpreter running this flow."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _log_task_failure(task, task_run, state) -> None:
    """One line per failed attempt, so the flow's log says what broke without scrolling."""
    message = str(state.message or "").splitlines()
    get_run_logger().error("task %s failed: %s", task_run.name, message[0] if message else state.type)


def _log_flow_failure(flow, flow_run, state) -> None:
    message = str(state.message or "").splitlines()
    print(f"flow run {flow_run.name} {state.type.value.lower()}: {message[0] if message else ''}", file=sys.stderr)


def stop_stage_commands(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Kill what DVC runs, not DVC: killed itself, DVC can die halfway through writing dvc.lock, and the
    next `dvc repro` then refuses the file. DVC sees its command killed and exits on its own, leaving
    the lock as it was. Whatever is left of the process group after `grace_s` is killed."""
    try:
        leader = psutil.Process(process.pid)
    except psutil.NoSuchProcess:
        return
    deadline = time.monotonic() + grace_s
    while process.poll() is None and time.monotonic() < deadline:
        try:
            children = leader.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        time.sleep(0.1)  # DVC may be between two commands: catch the next one as it starts
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@task(task_run_name="dvc repro {stage}", cache_policy=NO_CACHE, on_failure=[_log_task_failure])
def run_dvc_stage(stage: str, project_dir: str, timeout_s: float | None = None) -> str:
    """Returns 'skipped' when DVC found the stage up to date, else 'ran'. Past `timeout_s` the stage's
    commands are killed (`stop_stage_commands`) and the task fails."""
    logger = get_run_logger()
    command = [sys.executable, "-m", "dvc", "repro", stage]
    logger.info("%s (in %s)", " ".join(command[2:]), project_dir)
    process = subprocess.Popen(command, cwd=project_dir, env=stage_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        stop_stage_commands(process)

    watchdog = threading.Timer(timeout_s, kill) if timeout_s else None
    if watchdog:
        watchdog.start()
    lines: list[str] = []
    assert process.stdout is not None
    try:
        for raw in process.stdout:  # binary: split on \n only; progress bars redraw with \r
            line = raw.decode(errors="replace").rstrip().split("\r")[-1].strip()
            if line:
                logger.info("[%s] %s", stage, line)
                lines.append(line)
        code = process.wait()
    finally:
        if watchdog:
            watchdog.cancel()
    tail = "\n".join(lines[-25:])
    if timed_out.is_set():
        raise StageError(f"DVC stage {stage!r} timed out after {timeout_s / 60:g} min "
                         f"(flow.timeout_min.{stage}) and was killed:\n{tail}")
    if code != 0:
        raise StageError(f"DVC stage {stage!r} failed (exit {code}):\n{tail}")
    ran_this_stage = not any(SKIPPED_MARKER in line and f"'{stage}'" in line for line in lines)
    return "ran" if ran_this_stage else "skipped"


def read_results(project_dir: Path) -> dict[str, dict]:
    results = {}
    for stage in ("validate", "train", "monitor", "evaluate", "register"):
        path = project_dir / metrics_file(stage)
        if path.is_file():
            results[stage] = json.loads(path.read_text())
    return results


REPORTS = {  # what a person opens after a run
    "validation data docs": VALIDATE_REPORTS / "index.html",
    "pseudo-label report": MONITOR_REPORTS / "pseudo_labels.html",
    "pseudo-label curves": MONITOR_REPORTS / "epochs.png",
    "CMC curve": EVALUATE_REPORTS / "cmc.png",
    "rank lists": EVALUATE_REPORTS / "rank_list.png",
}


def reports(project_dir: Path, names: tuple[str, ...]) -> list[tuple[str, Path]]:
    """(name, absolute path) of those of the named reports that this run wrote."""
    return [(name, project_dir / REPORTS[name]) for name in names if (project_dir / REPORTS[name]).exists()]


def summary_lines(project_dir: Path, results: dict[str, dict]) -> list[str]:
    lines = []
    evaluation = results.get("evaluate")
    if evaluation and not evaluation.get("evaluated", True):
        lines.append(f"evaluation: not evaluated ({evaluation.get('reason')})")
    elif evaluation:
        lines.append("evaluation: mAP {mAP:.1f}%  rank-1 {rank1:.1f}%  rank-5 {rank5:.1f}%  rank-10 {rank10:.1f}%"
                     .format(**evaluation))
    monitor = results.get("monitor")
    if monitor:
        purity = f", purity {monitor['purity']:.3f}" if monitor.get("purity") is not None else ""
        lines.append(f"pseudo-labels (last epoch): {monitor['num_clusters']:g} clusters, "
                     f"{100 * monitor['outlier_ratio']:.1f}% outliers{purity}; "
                     f"gate {'passed' if monitor['passed'] else 'FAILED'}")
    register = results.get("register")
    if register:
        if register["registered"]:
            alias = f"alias '{register['alias']}'" if register["alias"] else "no alias"
            lines.append(f"MLflow model: {register['model_name']} version {register['version']}, {alias} "
                         f"({register['reason']})")
        else:
            lines.append(f"MLflow model: {register['model_name']} not registered ({register['reason']})")
    lines += [f"{name}: {path}" for name, path in reports(project_dir, ("validation data docs", "pseudo-label report",
                                                                          "CMC curve"))]
    return lines


def _mlflow_link(project_dir: Path) -> str | None:
    run_file = project_dir / RUN_INFO
    if not run_file.is_file():
        return None
    run = json.loads(run_file.read_text())
    try:
        uri = tracking_uri(load_params(project_dir / "params.yaml").mlflow)
    except ParamsError:
        return None
    if uri.startswith(("http://", "https://")):
        return f"[MLflow run]({uri.rstrip('/')}/#/experiments/{run['experiment_id']}/runs/{run['run_id']})"
    return f"MLflow run `{run['run_id']}` in `{uri}` (`mlflow ui --backend-store-uri {uri}`)"


def summary_markdown(project_dir: Path, statuses: dict[str, str], results: dict[str, dict],
                     overrides: dict[str, Any], lines: list[str]) -> str:
    """The run as a person reads it in the Prefect UI: stages, metrics, gate decisions, links."""
    out = ["# DSFNet pipeline", "", "| stage | status |", "|---|---|"]
    out += [f"| {stage} | {status} |" for stage, status in statuses.items()]
    if overrides:
        out += ["", "Overrides: " + ", ".join(f"`{k}={v}`" for k, v in overrides.items())]
    out += ["", "## Summary", ""] + [f"- {line}" for line in lines]
    evaluation, monitor = results.get("evaluate"), results.get("monitor")
    if evaluation or monitor:
        out += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        for key in ("mAP", "rank1", "rank5", "rank10"):
            if evaluation and key in evaluation:
                out.append(f"| {key} | {evaluation[key]:.2f} % |")
        for key in ("num_clusters", "outlier_ratio", "label_churn", "purity", "nmi"):
            if monitor and monitor.get(key) is not None:
                out.append(f"| pseudo-labels: {key} | {monitor[key]:.4g} |")
    out += ["", "## Gates", ""]
    validation = results.get("validate")
    if validation is not None:
        out.append(f"- validate: {'passed' if validation.get('success') else 'FAILED'}")
    if monitor is not None:
        for gate in monitor.get("gates", []):
            out.append(f"- monitor: {gate['message']}")
    register = results.get("register")
    if register is not None:
        decision = (f"version {register['version']} → `{register['alias']}`" if register["registered"]
                    else "not registered")
        out.append(f"- register: {decision} ({register['reason']})")
    out += ["", "## Links", ""]
    out += [f"- [{name}]({path.as_uri()})" for name, path in reports(project_dir, ("validation data docs",
                                                                                 "pseudo-label report",
                                                                                 "pseudo-label curves", "rank lists"))]
    link = _mlflow_link(project_dir)
    if link:
        out.append(f"- {link}")
    return "\n".join(out) + "\n"


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` pairs as `dvc exp run -S` takes them; values are YAML (`20`, `0.5`, `true`, `null`)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not KEY=VALUE (e.g. train.epochs=20)")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


@flow(name="dsfnet-pipeline", log_prints=True, on_failure=[_log_flow_failure], on_crashed=[_log_flow_failure])
def dsfnet_pipeline(project_dir: str = ".", stages: list[str] | None = None,
                    overrides: dict[str, Any] | None = None, train_retries: int | None = None) -> dict:
    """prepare → validate → train → monitor → evaluate → register, each a `dvc repro` task.

    `overrides` ({"train.epochs": 20}) are written into params.yaml first (comments kept, validated), like
    `dvc exp run -S`; `train_retries` overrides `flow.train_retries`.
    """
    from pipeline.profiles import ProfileError, set_params

    project = Path(project_dir).resolve()
    overrides = dict(overrides or {})
    if overrides:
        try:
            changed = set_params(overrides, project / "params.yaml")
        except ProfileError as error:
            raise ValueError(f"flow parameter overrides: {error}") from None
        print("params.yaml overrides: " + (", ".join(f"{k}: {old!r} → {new!r}" for k, (old, new) in changed.items())
                                           or "no change"))
    settings = load_params(project / "params.yaml").flow
    retries = settings.train_retries if train_retries is None else train_retries
    statuses = {}
    for stage in stages or list(STAGES):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        runner = run_dvc_stage.with_options(retries=retries, retry_delay_seconds=settings.retry_delay_s) \
            if stage == "train" else run_dvc_stage
        statuses[stage] = runner(stage, str(project), 60 * getattr(settings.timeout_min, stage))
    results = read_results(project)
    lines = summary_lines(project, results)
    markdown = summary_markdown(project, statuses, results, overrides, lines)
    create_markdown_artifact(key="dsfnet-summary", markdown=markdown,
                             description="Stage statuses, metrics, gate decisions and links of this run")
    return {"stages": statuses, "results": results, "summary": lines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the DSFNet pipeline (all DVC stages) as a Prefect flow.")
    parser.add_argument("--project-dir", default=".", help="the DVC project (default: current folder)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, help="run only these stages, in order")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="write a params.yaml value first, like `dvc exp run -S` (repeatable)")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        outcome = dsfnet_pipeline(project_dir=args.project_dir, stages=args.stages, overrides=overrides)
    except (StageError, ValueError) as error:
        print(f"\nPipeline stopped: {error}", file=sys.stderr)
        return 1
    print("\n" + "\n".join(["DSFNet pipeline finished."] + [f"  {line}" for line in outcome["summary"]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
