"""Time indexing a Market-1501-sized tree: load_dataset("market1501") must stay well under 1 second.

Builds 32,668 zero-byte files with valid Market names in a temp dir (12,936 train, 3,368 query and 19,732
gallery, the gallery holding 3,819 junk (-1) and 2,793 distractors (0000) as the real release does), then
reports the best of three loads. Indexing only reads names, so empty files measure exactly that.

Run: .venv/bin/python bench/bench_load_index.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from dsfnet.data import load_dataset

TRAIN, QUERY, GALLERY = 12_936, 3_368, 19_732
GALLERY_JUNK, GALLERY_DISTRACTORS = 3_819, 2_793
REPEATS = 3


def _write(folder: Path, pids: list[int]) -> None:
    """One zero-byte file per pid entry, with a unique valid Market name (camera 1..6, frame counter)."""
    folder.mkdir(parents=True)
    for index, pid in enumerate(pids):
        name = f"{pid:04d}" if pid >= 0 else "-1"
        (folder / f"{name}_c{index % 6 + 1}s{index % 5 + 1}_{index:06d}_{index % 100:02d}.jpg").touch()


def build_tree(root: Path) -> int:
    """Write the tree; return the number of files."""
    _write(root / "bounding_box_train", [1 + i % 751 for i in range(TRAIN)])
    _write(root / "query", [1 + i % 750 for i in range(QUERY)])
    real = GALLERY - GALLERY_JUNK - GALLERY_DISTRACTORS
    _write(root / "bounding_box_test", [1 + i % 750 for i in range(real)] + [0] * GALLERY_DISTRACTORS
           + [-1] * GALLERY_JUNK)
    return TRAIN + QUERY + GALLERY


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench_load_index.") as tmp:
        root = Path(tmp)
        files = build_tree(root)
        timings = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            dataset = load_dataset("market1501", root)
            timings.append(time.perf_counter() - start)
        records = sum(len(split) for split in dataset.splits().values())
        assert (len(dataset.train), len(dataset.query), len(dataset.gallery)) == (
            TRAIN, QUERY, GALLERY - GALLERY_JUNK), dataset.summary()
    print(f"{'files':>8} {'records':>8} {'best s':>8} {'runs s':>24}")
    print(f"{files:>8} {records:>8} {min(timings):>8.3f} {', '.join(f'{t:.3f}' for t in timings):>24}")
    print(f"requirement: < 1 s -> {'ok' if min(timings) < 1.0 else 'TOO SLOW'}")


if __name__ == "__main__":
    main()
