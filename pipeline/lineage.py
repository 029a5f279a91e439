"""Where a model came from: the git commit, the DVC hashes of its data and params, the dvc.lock it was
built under, and the machine it trained on — as MLflow tags, so a version can be rebuilt with
`git checkout <commit> && dvc checkout && dvc repro`."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from pathlib import Path

import yaml

from dsfnet.atomic import sha256_file
from pipeline.paths import MANIFEST, PREPARED_DIR

__all__ = ["dvc_data_hash", "git_state", "lineage_tags", "params_hash", "sha256_file", "system_tags"]

DVC_LOCK = Path("dvc.lock")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> dict[str, str]:
    """Commit and dirty flag of the working tree ("unknown" outside a git repo)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git.commit": commit, "git.dirty": str(bool(status)).lower()}


def params_hash(flat_params: dict[str, object]) -> str:
    """sha256 of the canonical JSON of every parameter (dotted keys, sorted)."""
    return hashlib.sha256(json.dumps(flat_params, sort_keys=True, default=str).encode()).hexdigest()


def dvc_data_hash(lock_path: Path = DVC_LOCK, output: Path = PREPARED_DIR) -> str | None:
    """The md5 DVC recorded for the prepared dataset (prepare stage's output) in dvc.lock, if there is one."""
    if not lock_path.is_file():
        return None
    lock = yaml.safe_load(lock_path.read_text()) or {}
    for out in (lock.get("stages", {}).get("prepare", {}) or {}).get("outs", []) or []:
        if Path(out.get("path", "")) == output:
            return out.get("md5")
    return None


def lineage_tags(flat_params: dict[str, object], dataset_name: str, dataset_root: str | None) -> dict[str, str]:
    """Tags for the run and the model version; values are strings, as MLflow stores them."""
    tags = {
        **git_state(),
        "dataset.name": dataset_name,
        "dataset.root": dataset_root or "(embedded synthetic generator)",
        "dvc.data_md5": dvc_data_hash() or "unknown (no dvc.lock entry for the prepare stage)",
        "params.sha256": params_hash(flat_params),
        "manifest.sha256": sha256_file(MANIFEST) if MANIFEST.is_file() else "unknown",
        "dvc.lock.sha256": sha256_file(DVC_LOCK) if DVC_LOCK.is_file() else "none",
    }
    return tags


def system_tags(device: str) -> dict[str, str]:
    import faiss
    import torch
    import torchvision

    tags = {"system.device": device, "system.python": platform.python_version(),
            "system.platform": platform.platform(), "system.torch": torch.__version__,
            "system.torchvision": torchvision.__version__, "system.faiss": getattr(faiss, "__version__", "unknown")}
    if torch.cuda.is_available():
        tags["system.cuda"] = str(torch.version.cuda)
        tags["system.gpu"] = torch.cuda.get_device_name(0)
    return tags
