"""Reader for users' own crops: a folder tree or a CSV manifest.

Folder tree: ``<root>/<split>/<pid>/<camera>/<image>`` with split in train / query / gallery, pid an integer
folder name (-1 = junk, dropped) and camera any folder name (``cam3``, ``north_gate``). Camera names are
mapped to contiguous 0-based camids in sorted order across all splits, so the same camera gets the same camid
in every split. ``train/`` may be absent (evaluation only); query and gallery are required. Files that are
not images, or not at the ``<pid>/<camera>/`` depth, go to `rejected` rather than being silently skipped.

CSV: columns path, pid, camid, split (the manifest format, see dsfnet.data.manifest); relative paths are
resolved against the CSV's folder so a manifest can travel with its images.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dsfnet.data.manifest import read_manifest
from dsfnet.data.records import DatasetError, ImageRecord, ReIDDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # compared case-insensitively: cameras often write .JPG
SPLITS = ("train", "query", "gallery")
LAYOUT = "<root>/<split>/<pid>/<camera>/<image>"
PID_FOLDER = re.compile(r"-?[0-9]+")


def _visible(directory: str) -> list[os.DirEntry[str]]:
    with os.scandir(directory) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _reject_tree(directory: str, reason: str, rejected: list[tuple[str, str]]) -> None:
    """Report every regular file under a folder that sits where no folder belongs."""
    for entry in _visible(directory):
        if entry.is_dir():
            _reject_tree(entry.path, reason, rejected)
        elif entry.is_file():
            rejected.append((entry.path, reason))


def _scan_split(directory: Path, rejected: list[tuple[str, str]]) -> list[tuple[str, int, str]]:
    """(path, pid, camera name) of every image in one split folder, sorted by pid folder, camera, file."""
    found = []
    for person in _visible(str(directory)):
        if not person.is_dir():
            if person.is_file():
                rejected.append((person.path, f"not inside a <pid>/<camera>/ folder ({LAYOUT})"))
            continue
        if not PID_FOLDER.fullmatch(person.name) or int(person.name) < -1:
            raise DatasetError(f"folder {person.path}: person folders must be named by an integer pid >= -1 "
                               f"({LAYOUT})")
        pid = int(person.name)
        for camera in _visible(person.path):
            if not camera.is_dir():
                if camera.is_file():
                    rejected.append((camera.path, f"not inside a <camera>/ folder ({LAYOUT})"))
                continue
            for image in _visible(camera.path):
                if image.is_dir():
                    _reject_tree(image.path, f"nested below the camera folder ({LAYOUT})", rejected)
                elif not image.is_file():
                    continue
                elif os.path.splitext(image.name)[1].lower() not in IMAGE_EXTENSIONS:
                    suffix = os.path.splitext(image.name)[1] or "(none)"
                    rejected.append((image.path, f"unexpected extension {suffix!r}, expected one of "
                                                 f"{', '.join(IMAGE_EXTENSIONS)}"))
                elif pid != -1:
                    found.append((image.path, pid, camera.name))
    return found


def _read_tree(root: Path, name: str) -> ReIDDataset:
    rejected: list[tuple[str, str]] = []
    found: dict[str, list[tuple[str, int, str]]] = {}
    for split in SPLITS:
        directory = root / split
        if not directory.is_dir():
            if split == "train":
                found[split] = []
                continue
            raise DatasetError(f"expected folder {directory} ({LAYOUT} layout) does not exist")
        found[split] = _scan_split(directory, rejected)
    cameras = sorted({camera for items in found.values() for _, _, camera in items})
    camids = {camera: camid for camid, camera in enumerate(cameras)}
    splits = {split: [ImageRecord(path, pid, camids[camera]) for path, pid, camera in items]
              for split, items in found.items()}
    return ReIDDataset(name=name, root=root, rejected=rejected, **splits)


def _read_csv(path: Path, name: str) -> ReIDDataset:
    dataset = read_manifest(path, name=name)
    base = str(path.parent)
    for records in dataset.splits().values():
        resolved = []
        for record in records:
            if record.pid < -1 or record.camid < 0:
                raise DatasetError(f"manifest {path}: {record.path} has pid {record.pid} / camid {record.camid}; "
                                   "pids must be >= -1 and camids >= 0")
            if record.pid == -1:  # junk, as in every other reader
                continue
            image = record.path if os.path.isabs(record.path) else os.path.join(base, record.path)
            if not os.path.isfile(image):
                raise DatasetError(f"manifest {path}: image {record.path!r} ({image}) does not exist")
            resolved.append(ImageRecord(image, record.pid, record.camid))
        records[:] = resolved
    return dataset


def read_folder(root: str | Path, name: str = "folder") -> ReIDDataset:
    """Read users' own data: a CSV manifest if `root` is a file, else a folder tree."""
    root = Path(root)
    if root.is_file():
        return _read_csv(root, name)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist")
    return _read_tree(root, name)
