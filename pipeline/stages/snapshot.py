"""Stage `snapshot`: a cheap fingerprint of the dataset wherever `dataset.root` lives, so DVC sees it change.

DVC hashes what dvc.yaml names, and a dataset root is a parameter that may point outside the project. This
stage runs on every `dvc repro` (always_changed) and writes data/dataset_snapshot.json: the root, its file
count and bytes, and a sha256 over every file's (relative path, size, modification time) — a listing, not
the bytes, so it costs a directory walk (bench/bench_snapshot.py). The file is a dependency of `prepare`,
which copies it into data/prepared/: when it is unchanged DVC skips everything; when one file under the root
is added, removed, truncated or rewritten, prepare and validate run again, and so does everything after them.
A CSV root counts as the CSV plus every image it lists, wherever those are.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import time
from pathlib import Path

from pipeline.cli import run_stage
from pipeline.io import write_json
from pipeline.params import Params
from pipeline.paths import DATASET_SNAPSHOT

log = logging.getLogger(__name__)


def _entry(path: str, name: str) -> tuple[str, int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return name, -1, -1  # missing: prepare will say which
    return name, stat.st_size, stat.st_mtime_ns


def listing(root: str | Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of every file under a folder (sorted), or of a CSV and the paths it lists."""
    root = Path(root)
    if root.is_file():
        with root.open(newline="") as handle:
            paths = [row.get("path") or "" for row in csv.DictReader(handle)]
        base = str(root.parent)
        entries = [_entry(str(root), root.name)]
        entries += sorted(_entry(p if os.path.isabs(p) else os.path.join(base, p), p) for p in set(paths))
        return entries
    entries = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        relative = os.path.relpath(folder, root)
        for name in sorted(files):
            entries.append(_entry(os.path.join(folder, name), os.path.normpath(os.path.join(relative, name))))
    return entries


def fingerprint(root: str | Path | None) -> dict:
    if root is None:
        return {"root": None, "files": 0, "bytes": 0, "listing_sha256": None}
    if not Path(root).exists():
        return {"root": str(root), "exists": False, "files": 0, "bytes": 0, "listing_sha256": None}
    entries = listing(root)
    digest = hashlib.sha256()
    for name, size, mtime in entries:
        digest.update(f"{name}\t{size}\t{mtime}\n".encode())
    return {"root": str(Path(root).resolve()), "exists": True, "files": len(entries),
            "bytes": sum(max(size, 0) for _, size, _ in entries), "listing_sha256": digest.hexdigest()}


def snapshot(params: Params) -> None:
    """Write data/dataset_snapshot.json for params.yaml's dataset.root (nothing to list for `synthetic`)."""
    root = params.dataset.root if params.dataset.name != "synthetic" else None
    start = time.perf_counter()
    result = fingerprint(root)
    write_json(DATASET_SNAPSHOT, {"dataset": params.dataset.name, **result})
    if root is not None:
        log.info("%s: %d files, %.1f MB listed in %.2f s", result["root"], result["files"], result["bytes"] / 1e6,
                 time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    return run_stage("snapshot", snapshot, argv)


if __name__ == "__main__":
    raise SystemExit(main())
