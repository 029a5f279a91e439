"""Reader for the Market-1501 folder layout (also used by the synthetic generator's output).

Names follow ``PPPP_cCsS_FFFFFF_BB.jpg``: person id, camera (1-based), sequence, frame, box.
pid -1 marks junk boxes and is dropped; pid 0 marks distractors, kept in the gallery as negatives.
"""

from __future__ import annotations

import re
from pathlib import Path

from dsfnet.data.records import DatasetError, ImageRecord, ReIDDataset

MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.jpg$")
SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def parse_market_name(name: str) -> tuple[int, int]:
    """Return (pid, camid 0-based) of a Market-style file name, or raise naming the file."""
    match = MARKET_NAME.match(name)
    if match is None:
        raise DatasetError(f"file name {name!r} does not follow PPPP_cCsS_FFFFFF_BB.jpg")
    return int(match.group(1)), int(match.group(2)) - 1


def _read_split(directory: Path, drop_distractors: bool, rejected: list[tuple[str, str]]) -> list[ImageRecord]:
    if not directory.is_dir():
        raise DatasetError(f"expected folder {directory} (Market-1501 layout) does not exist")
    records = []
    for path in sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")):
        if path.suffix != ".jpg":  # the reference loaders glob *.jpg; anything else is reported, not read
            rejected.append((str(path), f"unexpected extension {path.suffix or '(none)'!r}, expected '.jpg'"))
            continue
        pid, camid = parse_market_name(path.name)
        if pid == -1 or (drop_distractors and pid == 0):
            continue
        records.append(ImageRecord(str(path), pid, camid))
    return records


def read_market1501(root: str | Path, name: str = "market1501") -> ReIDDataset:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    # Some archives unpack into a sub-folder; accept either.
    for candidate in (root, root / "Market-1501-v15.09.15"):
        if (candidate / SPLIT_DIRS["train"]).is_dir():
            root = candidate
            break
    rejected: list[tuple[str, str]] = []
    return ReIDDataset(
        name=name,
        root=root,
        train=_read_split(root / SPLIT_DIRS["train"], drop_distractors=True, rejected=rejected),
        query=_read_split(root / SPLIT_DIRS["query"], drop_distractors=True, rejected=rejected),
        gallery=_read_split(root / SPLIT_DIRS["gallery"], drop_distractors=False, rejected=rejected),
        rejected=rejected,
    )
