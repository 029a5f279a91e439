"""The Prefect flow: run every DVC stage, one at a time, and summarise what came out.

Each task runs `dvc repro <stage>`, so DVC decides what is stale and skips the rest; the flow never
runs two stages at once (DVC locks the workspace). Run it with `python -m pipeline.flows`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE as NO_CACHE

import pipeline  # noqa: F401 - switches off analytics before prefect is imported
from pipeline.paths import EVALUATE_REPORTS, MONITOR_REPORTS, VALIDATE_REPORTS, metrics_file
from pipeline.stages import STAGES

SKIPPED_MARKER = "didn't change, skipping"


class StageError(RuntimeError):
    """A DVC stage exited non-zero; the message carries the end of its output."""


def stage_env() -> dict[str, str]:
    """Stage commands say `python -m ...`: make that the interpreter running this flow."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@task(task_run_name="dvc repro {stage}", cache_policy=NO_CACHE)
def run_dvc_stage(stage: str, project_dir: str) -> str:
    """Returns 'skipped' when DVC found the stage up to date, else 'ran'."""
    logger = get_run_logger()
    command = [sys.executable, "-m", "dvc", "repro", stage]
    logger.info("%s (in %s)", " ".join(command[2:]), project_dir)
    process = subprocess.Popen(command, cwd=project_dir, env=stage_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    lines: list[str] = []
    assert process.stdout is not None
    for raw in process.stdout:  # binary: split on \n only; progress bars redraw with \r
        line = raw.decode(errors="replace").rstrip().split("\r")[-1].strip()
        if line:
            logger.info("[%s] %s", stage, line)
            lines.append(line)
    if process.wait() != 0:
        tail = "\n".join(lines[-25:])
        raise StageError(f"DVC stage {stage!r} failed (exit {process.returncode}):\n{tail}")
    ran_this_stage = not any(SKIPPED_MARKER in line and f"'{stage}'" in line for line in lines)
    return "ran" if ran_this_stage else "skipped"


def read_results(project_dir: Path) -> dict[str, dict]:
    results = {}
    for stage in ("validate", "train", "monitor", "evaluate", "register"):
        path = project_dir / metrics_file(stage)
        if path.is_file():
            results[stage] = json.loads(path.read_text())
    return results


def summary_lines(project_dir: Path, results: dict[str, dict]) -> list[str]:
    lines = []
    evaluation = results.get("evaluate")
    if evaluation:
        lines.append("evaluation: mAP {mAP:.1f}%  rank-1 {rank1:.1f}%  rank-5 {rank5:.1f}%  rank-10 {rank10:.1f}%"
                     .format(**evaluation))
    monitor = results.get("monitor")
    if monitor:
        lines.append(f"pseudo-labels (last epoch): {monitor['num_clusters']} clusters, "
                     f"{100 * monitor['outlier_ratio']:.1f}% outliers, purity {monitor['purity']:.3f}; "
                     f"gate {'passed' if monitor['passed'] else 'FAILED'}")
    register = results.get("register")
    if register:
        if register["registered"]:
            alias = f"alias '{register['alias']}'" if register["alias"] else "no alias"
            lines.append(f"MLflow model: {register['model_name']} version {register['version']}, {alias} "
                         f"({register['reason']})")
        else:
            lines.append(f"MLflow model: {register['model_name']} not registered ({register['reason']})")
    for name, folder, page in (("validation data docs", VALIDATE_REPORTS, "index.html"),
                               ("pseudo-label report", MONITOR_REPORTS, "pseudo_labels.html"),
                               ("CMC curve", EVALUATE_REPORTS, "cmc.png")):
        if (project_dir / folder / page).exists():
            lines.append(f"{name}: {(project_dir / folder / page)}")
    return lines


@flow(name="dsfnet-pipeline", log_prints=True)
def dsfnet_pipeline(project_dir: str = ".", stages: list[str] | None = None, train_retries: int = 1) -> dict:
    """prepare → validate → train → monitor → evaluate → register, each a `dvc repro` task."""
    project = Path(project_dir).resolve()
    statuses = {}
    for stage in stages or list(STAGES):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        runner = run_dvc_stage.with_options(retries=train_retries, retry_delay_seconds=5) \
            if stage == "train" else run_dvc_stage
        statuses[stage] = runner(stage, str(project))
    results = read_results(project)
    lines = summary_lines(project, results)
    table = "\n".join(f"| {stage} | {status} |" for stage, status in statuses.items())
    create_markdown_artifact(
        key="dsfnet-summary",
        markdown="# DSFNet pipeline\n\n| stage | status |\n|---|---|\n" + table + "\n\n"
                 + "\n".join(f"- {line}" for line in lines),
        description="Stage statuses, metrics and the registered model of this run",
    )
    return {"stages": statuses, "results": results, "summary": lines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the DSFNet pipeline (all DVC stages) as a Prefect flow.")
    parser.add_argument("--project-dir", default=".", help="the DVC project (default: current folder)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, help="run only these stages, in order")
    args = parser.parse_args(argv)
    try:
        outcome = dsfnet_pipeline(project_dir=args.project_dir, stages=args.stages)
    except StageError as error:
        print(f"\nPipeline stopped: {error}", file=sys.stderr)
        return 1
    print("\n" + "\n".join(["DSFNet pipeline finished."] + [f"  {line}" for line in outcome["summary"]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
