"""Build a throw-away copy of the project (git repo + DVC) with a tiny profile, for end-to-end tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COPIED = ["dvc.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore", "dsfnet", "pipeline", "data",
          "reports"]

# Seconds, not minutes, on 2 cores: a few identities, tiny images, 2 short epochs.
TINY_PROFILE = {
    "synthetic": {"profile": "tiny", "height": 64, "width": 32},
    "train": {"epochs": 2, "iters": 3, "batch_size": 16, "height": 32, "width": 16, "workers": 0,
              "feature_batch_size": 64},
    "cluster": {"k1": 10, "k2": 3, "eps": 0.5, "min_samples": 3},
    "monitor": {"max_outlier_ratio": 1.0, "min_clusters": 1, "max_largest_cluster_ratio": 1.0, "max_label_churn": 1.0,
                "min_nmi": 0.0, "min_purity": 0.0},
    "register": {"min_map": 0.0, "min_rank1": 0.0},
}


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def write_params(project: Path, **sections) -> None:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params = merge(merge(params, TINY_PROFILE), sections)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args], cwd=project,
                   check=True, capture_output=True)


def make_project(dest: Path, **sections) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source, target = PROJECT_ROOT / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "prepared",
                                                                         "dataset_snapshot.json"))
        else:
            shutil.copy2(source, target)
    write_params(dest, **sections)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "project")
    return dest


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    """DVC as a user runs it, with this interpreter's environment first on PATH (stages call `python`)."""

    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True,
                          env=dvc_env())


def dvc_env() -> dict[str, str]:
    """The stages' environment, storing runs in the project's own MLflow store (params.yaml), whatever
    MLFLOW_TRACKING_URI a test left set."""
    from pipeline.flows import stage_env

    env = stage_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def stale(project: Path) -> dict:
    """`dvc status --json` without the snapshot stage, which is "always changed" by design (dvc.yaml)."""
    import json

    result = dvc(project, "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status.pop("snapshot") == ["always changed"]
    return status
