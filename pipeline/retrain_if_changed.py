"""Run the pipeline only when DVC says something it depends on changed (data, params, code): what CI runs.

    python -m pipeline.retrain_if_changed [--project-dir .] [--dry-run]

Asks `dvc status --json`; when every stage is up to date it prints "up to date" and exits 0 without
starting anything. Otherwise it names what changed and runs the Prefect flow, which re-runs the stale
stages (DVC skips the rest) and lets `register` consider the new model; the exit code is the flow's.
The `snapshot` stage is run first: it lists `dataset.root` wherever it lives, so a changed, added or removed
image there shows up as a changed dependency of `prepare` (the stage itself is always "changed" and is not
counted).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def _dvc(project_dir: Path, *args: str) -> str:
    from pipeline.flows import stage_env

    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project_dir, capture_output=True, text=True,
                            env=stage_env())
    if result.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {project_dir}: "
                           f"{result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip()


def dvc_status(project_dir: Path) -> dict:
    """`dvc status --json` after a fresh dataset snapshot: {stage or file: [what changed, ...]}; empty when
    everything is up to date."""
    _dvc(project_dir, "repro", "--single-item", "snapshot")
    text = _dvc(project_dir, "status", "--json")
    status = json.loads(text[text.index("{"):]) if "{" in text else {}
    if status.get("snapshot") == ["always changed"]:
        del status["snapshot"]
    return status


def describe(status: dict) -> list[str]:
    lines = []
    for name, changes in status.items():
        what = []
        for change in changes:
            if isinstance(change, dict):
                for kind, paths in change.items():
                    what.append(f"{kind}: {', '.join(paths) if isinstance(paths, dict) else paths}")
            else:
                what.append(str(change))
        lines.append(f"{name}: {'; '.join(what)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", default=".", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="only say whether the pipeline would run")
    args = parser.parse_args(argv)
    status = dvc_status(args.project_dir)
    if not status:
        print("up to date: data, params and code unchanged since the last run; nothing to do")
        return 0
    print("changed since the last run:\n  " + "\n  ".join(describe(status)))
    if args.dry_run:
        return 0
    from pipeline.flows import main as run_flow

    return run_flow(["--project-dir", str(args.project_dir)])


if __name__ == "__main__":
    raise SystemExit(main())
