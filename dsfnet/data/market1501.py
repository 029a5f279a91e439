"""Reader for the Market-1501 folder layout (also used by the synthetic generator's output).

Names follow ``PPPP_cCsS_FFFFFF_BB.jpg``: person id, camera (1-based), sequence, frame, box.
pid -1 marks junk boxes and is dropped; pid 0 marks distractors, kept in the gallery as negatives.

The folder scan (`read_split`, `read_split_folders`) is shared with the other Market-style readers
(PersonX, re-packed MSMT17, VeRi-776), which differ only in their name pattern, camera mapping and folder names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dsfnet.data.records import DatasetError, ImageRecord, ReIDDataset, os_litter

MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.jpg$")
SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


@dataclass(frozen=True)
class NameScheme:
    """How one dataset encodes (pid, camera) in its file names.

    `pattern` is matched at the start of the file name; its groups 1 and 2 are the pid and the raw camera number.
    `camera` turns the raw camera number into a 0-based camid, raising ValueError (with the reason) for a camera
    the dataset does not have. `name_format` is shown to the user when a name does not match.
    """

    pattern: re.Pattern[str]
    camera: Callable[[int], int]
    name_format: str
    extension: str = ".jpg"

    def parse(self, name: str) -> tuple[int, int]:
        """Return (pid, camid 0-based) of a file name, or raise DatasetError naming the file."""
        match = self.pattern.match(name)
        if match is None:
            raise DatasetError(f"file name {name!r} does not follow {self.name_format}")
        try:
            return int(match.group(1)), self.camera(int(match.group(2)))
        except ValueError as err:
            raise DatasetError(f"file name {name!r}: {err}") from None


def camera_range(first: int, last: int) -> Callable[[int], int]:
    """Camera mapping for datasets numbering cameras first..last: camid = camera - first."""
    def camera(number: int) -> int:
        if not first <= number <= last:
            raise ValueError(f"camera {number} is outside {first}..{last}")
        return number - first
    return camera


def camera_table(table: Mapping[int, int]) -> Callable[[int], int]:
    """Camera mapping for datasets whose camera numbers are sparse (e.g. PersonX's 3, 4, 8, 10, 11, 12)."""
    def camera(number: int) -> int:
        if number not in table:
            raise ValueError(f"camera {number} is not one of {', '.join(map(str, sorted(table)))}")
        return table[number]
    return camera


# Market itself never range-checks the camera: the synthetic generator may write more than six cameras.
MARKET_SCHEME = NameScheme(MARKET_NAME, lambda number: number - 1, "PPPP_cCsS_FFFFFF_BB.jpg")


def parse_market_name(name: str) -> tuple[int, int]:
    """Return (pid, camid 0-based) of a Market-style file name, or raise naming the file."""
    return MARKET_SCHEME.parse(name)


def repeats_extension(name: str, extension: str) -> bool:
    """`0001_c1s1_000001_00.jpg.jpg`: 24 such names are part of Market-1501's official query/gallery counts."""
    return bool(extension) and name.endswith(extension * 2)


def read_split(
    directory: Path,
    scheme: NameScheme,
    rejected: list[tuple[str, str]],
    *,
    drop_distractors: bool = False,
    layout: str = "Market-1501",
    ignored: list[tuple[str, str]] | None = None,
) -> list[ImageRecord]:
    """Read one flat split folder, sorted by name.

    Every regular non-hidden file is a record, operating-system litter (Thumbs.db, .DS_Store, ...; listed in
    `ignored`) or lands in `rejected` with the reason (unexpected extension, a name that does not parse, an
    unknown camera), so nothing is silently dropped and all bad files are reported together; junk (pid -1) is
    dropped, and distractors (pid 0) too when `drop_distractors`. A repeated extension (`….jpg.jpg`) is read as
    the reference loaders read it (their patterns match the start of the name); validate warns about it.
    Uses os.scandir (no per-file stat) because real splits hold tens of thousands of files.
    """
    if not directory.is_dir():
        raise DatasetError(f"expected folder {directory} ({layout} layout) does not exist")
    with os.scandir(directory) as entries:
        files = sorted((e.name, e.path) for e in entries if e.is_file())
    records = []
    for name, path in files:
        litter = os_litter(name)
        if litter is not None:
            if ignored is not None:
                ignored.append((path, litter))
            continue
        if name.startswith("."):
            continue
        suffix = os.path.splitext(name)[1]
        if suffix != scheme.extension:  # the reference loaders glob *.jpg; anything else is reported, not read
            rejected.append((path, f"unexpected extension {suffix or '(none)'!r}, expected {scheme.extension!r}"))
            continue
        try:
            pid, camid = scheme.parse(name[:-len(suffix)] if repeats_extension(name, suffix) else name)
        except DatasetError as err:  # reported with every other bad file by validation, not one at a time
            rejected.append((path, str(err)))
            continue
        if pid == -1 or (drop_distractors and pid == 0):
            continue
        records.append(ImageRecord(path, pid, camid))
    return records


def find_root(root: Path, subfolders: Iterable[str], marker: str) -> Path:
    """The folder holding `marker`: `root` itself or one of the sub-folders archives unpack into."""
    for candidate in (root, *(root / sub for sub in subfolders)):
        if (candidate / marker).exists():
            return candidate
    return root


def read_split_folders(
    root: str | Path,
    name: str,
    scheme: NameScheme,
    *,
    split_dirs: Mapping[str, str] = SPLIT_DIRS,
    subfolders: Iterable[str] = (),
    drop_distractors: bool = False,
    layout: str = "Market-1501",
) -> ReIDDataset:
    """Read a dataset stored as three flat folders (train / query / gallery) of self-describing file names.

    `drop_distractors` drops pid 0 from train and query only: the gallery keeps distractors as negatives.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    root = find_root(root, subfolders, split_dirs["train"])
    rejected: list[tuple[str, str]] = []
    ignored: list[tuple[str, str]] = []
    splits = {
        split: read_split(root / split_dirs[split], scheme, rejected,
                          drop_distractors=drop_distractors and split != "gallery", layout=layout, ignored=ignored)
        for split in ("train", "query", "gallery")
    }
    return ReIDDataset(name=name, root=root, rejected=rejected, ignored=ignored, **splits)


def read_market1501(root: str | Path, name: str = "market1501") -> ReIDDataset:
    # Some archives unpack into a sub-folder; accept either.
    return read_split_folders(root, name, MARKET_SCHEME, subfolders=("Market-1501-v15.09.15",),
                              drop_distractors=True, layout="Market-1501")
