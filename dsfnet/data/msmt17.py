"""Reader for MSMT17 (Wei et al., CVPR 2018): 4,101 identities, 15 cameras. Two layouts, auto-detected.

Raw MSMT17_V1 / MSMT17_V2 (as released): image folders ``train/`` + ``test/`` (V2: ``mask_train_v2/`` +
``mask_test_v2/``) and list files ``list_{train,val,query,gallery}.txt`` whose lines are
``<relative path> <pid>``, e.g. ``0000/0000_000_01_0303morning_0015_0.jpg 0``. The camera is the third
``_`` field of the file name (1..15 -> camid 0..14), as torchreid reads it. pids are kept as written: pid 0 is
a real identity here, not a distractor. The training set is list_train + list_val (32,621 images), the full
MSMT17 training set the unsupervised papers report; torchreid adds val only with ``combineall``.

Re-packed Market-style (as cluster-contrast-reid expects): ``bounding_box_train/``, ``query/``,
``bounding_box_test/`` with names ``PPPP_cCC_*.jpg`` (camera 1..15); junk (pid -1) is dropped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dsfnet.data.market1501 import SPLIT_DIRS, NameScheme, camera_range, read_split_folders
from dsfnet.data.records import DatasetError, ImageRecord, ReIDDataset

VERSION_DIRS = ("MSMT17_V1", "MSMT17_V2")
TRAIN_IMAGE_DIRS = ("train", "mask_train_v2")
TEST_IMAGE_DIRS = ("test", "mask_test_v2")
NUM_CAMERAS = 15
MSMT_SCHEME = NameScheme(re.compile(r"(-?\d+)_c(\d+)"), camera_range(1, NUM_CAMERAS), "PPPP_cCC_*.jpg")


def _image_folder(base: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (base / name).is_dir():
            return base / name
    raise DatasetError(f"MSMT17 at {base}: none of the image folders {' / '.join(names)} exists")


def read_msmt17_list(list_path: Path, images: Path) -> list[ImageRecord]:
    """Read one list file in file order; any line that does not parse or names a missing image is an error
    naming the list file and line, because a silently shortened split would skew every metric."""
    if not list_path.is_file():
        raise DatasetError(f"MSMT17 list file {list_path} does not exist")
    base = str(images)
    records = []
    with list_path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:  # a trailing blank line is not an entry
                continue
            where = f"{list_path} line {line_no}"
            fields = text.split()
            if len(fields) != 2:
                raise DatasetError(f"{where}: expected '<relative path> <pid>', got {text!r}")
            relative, pid_text = fields
            if not re.fullmatch(r"[0-9]+", pid_text):
                raise DatasetError(f"{where}: pid {pid_text!r} is not a non-negative integer")
            parts = os.path.basename(relative).split("_")
            if len(parts) < 3 or not re.fullmatch(r"[0-9]+", parts[2]):
                raise DatasetError(f"{where}: cannot read the camera (third '_' field) of {relative!r}")
            camera = int(parts[2])
            if not 1 <= camera <= NUM_CAMERAS:
                raise DatasetError(f"{where}: camera {camera} of {relative!r} is outside 1..{NUM_CAMERAS}")
            if os.path.isabs(relative):
                raise DatasetError(f"{where}: path {relative!r} must be relative to {images}")
            path = os.path.join(base, relative)
            if not os.path.isfile(path):
                raise DatasetError(f"{where}: image {path} does not exist")
            records.append(ImageRecord(path, int(pid_text), camera - 1))
    return records


def _read_raw(base: Path, name: str) -> ReIDDataset:
    train_images = _image_folder(base, TRAIN_IMAGE_DIRS)
    test_images = _image_folder(base, TEST_IMAGE_DIRS)
    return ReIDDataset(
        name=name,
        root=base,
        train=read_msmt17_list(base / "list_train.txt", train_images)
        + read_msmt17_list(base / "list_val.txt", train_images),
        query=read_msmt17_list(base / "list_query.txt", test_images),
        gallery=read_msmt17_list(base / "list_gallery.txt", test_images),
    )


def read_msmt17(root: str | Path, name: str = "msmt17") -> ReIDDataset:
    """Read MSMT17 from `root` or its MSMT17_V1 / MSMT17_V2 sub-folder, raw or re-packed (raw wins if both)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    for base in (root, *(root / sub for sub in VERSION_DIRS)):
        if (base / "list_train.txt").is_file():
            return _read_raw(base, name)
        if (base / SPLIT_DIRS["train"]).is_dir():
            return read_split_folders(base, name, MSMT_SCHEME, layout="MSMT17 re-packed")
    raise DatasetError(
        f"no MSMT17 found at {root}: expected list_train.txt (raw MSMT17_V1/V2) or {SPLIT_DIRS['train']}/ "
        f"(re-packed) in {root} or its sub-folder {' / '.join(VERSION_DIRS)}"
    )
