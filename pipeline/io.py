"""Atomic writes: a crashed stage never leaves a half-written output that looks valid."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from dsfnet.atomic import atomic_path, write_text

__all__ = ["atomic_path", "read_json", "staged_dir", "write_csv", "write_json", "write_text"]


def write_json(path: str | Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run the stage that writes it first (dvc repro)")
    return json.loads(path.read_text())


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    write_text(path, frame.to_csv(index=False))


@contextmanager
def staged_dir(path: str | Path):
    """Yield a fresh temp folder next to `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
