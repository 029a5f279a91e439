"""What the `snapshot` stage costs: listing a dataset root of N files (relative path, size, mtime → sha256).

    python bench/bench_snapshot.py [--files 30000] [--per-folder 20] [--root DIR]

Without --root it writes N small files (1 KB, in folders of --per-folder) into a temp folder first; with
--root it lists an existing dataset (e.g. a Market-1501 or CUHK03 folder, or a CSV manifest). Prints the
best of three listings and the whole stage as DVC runs it (`python -m pipeline.stages.snapshot`, interpreter
start included).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.stages.snapshot import fingerprint


def make_tree(root: Path, files: int, per_folder: int) -> None:
    payload = os.urandom(1024)
    for index in range(files):
        folder = root / "train" / f"{index // per_folder:05d}"
        if index % per_folder == 0:
            folder.mkdir(parents=True)
        (folder / f"{index:07d}.jpg").write_bytes(payload)


def stage_seconds(root: Path, workdir: Path) -> float:
    (workdir / "params.yaml").write_text(f"dataset:\n  name: folder\n  root: {root}\n")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.stages.snapshot"], cwd=workdir, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=30_000)
    parser.add_argument("--per-folder", type=int, default=20)
    parser.add_argument("--root", type=Path, help="an existing dataset folder or CSV manifest to list instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp) / "dataset"
            make_tree(root, args.files, args.per_folder)
        times, result = [], {}
        for _ in range(3):
            start = time.perf_counter()
            result = fingerprint(root)
            times.append(time.perf_counter() - start)
        workdir = Path(tmp) / "project"
        workdir.mkdir()
        stage = stage_seconds(root.resolve(), workdir)
    print(f"{result['files']} files ({result['bytes'] / 1e6:.1f} MB) under {root}: listing best of 3 "
          f"{min(times):.3f} s (first {times[0]:.3f} s); the whole stage, interpreter start included: {stage:.2f} s")


if __name__ == "__main__":
    main()
