"""Reader for users' own crops: a folder tree or a CSV manifest.

Folder tree, test splits: ``<root>/query/<pid>/<camera>/<image>`` and ``<root>/gallery/<pid>/<camera>/<image>``
(pid an integer folder name, -1 = junk, dropped; camera any folder name such as ``cam3`` or ``north_gate``).
Both are optional — own data often has no labelled test set — but one without the other is an error.

Training crops need no identities (the point of unsupervised ReID). ``<root>/train/`` holds one of three
layouts, told apart by the depth at which its images sit:

- ``train/<image>``: unlabelled, no camera ids (one camera);
- ``train/<camera>/<image>``: unlabelled, one folder per camera;
- ``train/<pid>/<camera>/<image>``: labelled (the identities are used for monitoring only).

Camera names are mapped to contiguous 0-based camids in sorted order across all splits, so the same camera
gets the same camid in every split (a flat train/ is one camera of its own). Files that are not images, or
not at their layout's depth, go to `rejected` rather than being silently skipped.

CSV: columns path, pid, camid, split (the manifest format, see dsfnet.data.manifest); relative paths are
resolved against the CSV's folder so a manifest can travel with its images; train rows may leave pid empty.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dsfnet.data.manifest import read_manifest
from dsfnet.data.records import UNLABELLED, DatasetError, ImageRecord, ReIDDataset, os_litter

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # compared case-insensitively: cameras often write .JPG
TEST_SPLITS = ("query", "gallery")
LAYOUT = "<root>/<split>/<pid>/<camera>/<image>"
TRAIN_LAYOUTS = "train/<image>, train/<camera>/<image> or train/<pid>/<camera>/<image>"
PID_FOLDER = re.compile(r"-?[0-9]+")
FLAT_CAMERA = ""  # the camera name of a flat train/ (sorts before every folder name)


def _visible(directory: str) -> list[os.DirEntry[str]]:
    """Entries to judge: hidden files and operating-system litter (counted by `_litter_under`) are skipped."""
    with os.scandir(directory) as entries:
        return sorted((e for e in entries if not e.name.startswith(".") and os_litter(e.name) is None),
                      key=lambda e: e.name)


def _litter_under(directory: Path) -> list[tuple[str, str]]:
    """(path, reason) of every operating-system file (Thumbs.db, .DS_Store, ...) below `directory`."""
    return [(os.path.join(folder, name), why) for folder, _, names in sorted(os.walk(directory))
            for name in sorted(names) if (why := os_litter(name)) is not None]


def _reject_tree(directory: str, reason: str, rejected: list[tuple[str, str]]) -> None:
    """Report every regular file under a folder that sits where no folder belongs."""
    for entry in _visible(directory):
        if entry.is_dir():
            _reject_tree(entry.path, reason, rejected)
        elif entry.is_file():
            rejected.append((entry.path, reason))


def _is_image(entry: os.DirEntry[str]) -> bool:
    return entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS


def _scan_images(directory: str, layout: str, rejected: list[tuple[str, str]]) -> list[str]:
    """The images directly in `directory`; anything else there is rejected with its reason."""
    images = []
    for image in _visible(directory):
        if image.is_dir():
            _reject_tree(image.path, f"nested below the camera folder ({layout})", rejected)
        elif not image.is_file():
            continue
        elif not _is_image(image):
            suffix = os.path.splitext(image.name)[1] or "(none)"
            rejected.append((image.path, f"unexpected extension {suffix!r}, expected one of "
                                         f"{', '.join(IMAGE_EXTENSIONS)}"))
        else:
            images.append(image.path)
    return images


def _scan_cameras(directory: str, pid: int, layout: str,
                  rejected: list[tuple[str, str]]) -> list[tuple[str, int, str]]:
    """(path, pid, camera name) of every image in `directory`/<camera>/."""
    found = []
    for camera in _visible(directory):
        if not camera.is_dir():
            if camera.is_file():
                rejected.append((camera.path, f"not inside a <camera>/ folder ({layout})"))
            continue
        found += [(path, pid, camera.name) for path in _scan_images(camera.path, layout, rejected)]
    return found


def _scan_labelled(directory: Path, rejected: list[tuple[str, str]]) -> list[tuple[str, int, str]]:
    """(path, pid, camera name) of every image in one <pid>/<camera>/ split folder, pid -1 dropped."""
    found = []
    for person in _visible(str(directory)):
        if not person.is_dir():
            if person.is_file():
                rejected.append((person.path, f"not inside a <pid>/<camera>/ folder ({LAYOUT})"))
            continue
        if not PID_FOLDER.fullmatch(person.name) or int(person.name) < -1:
            raise DatasetError(f"folder {person.path}: person folders must be named by an integer pid >= -1 "
                               f"({LAYOUT})")
        found += [item for item in _scan_cameras(person.path, int(person.name), LAYOUT, rejected) if item[1] != -1]
    return found


def _holds_images(directory: str) -> bool:
    return any(_is_image(entry) for entry in _visible(directory))


def _holds_folders(directory: str) -> bool:
    return any(entry.is_dir() for entry in _visible(directory))


def _scan_train(directory: Path, rejected: list[tuple[str, str]]) -> list[tuple[str, int, str]]:
    """The train split in whichever of the three layouts its images' depth says (see the module docstring)."""
    entries = _visible(str(directory))
    folders = [e for e in entries if e.is_dir()]
    top_images = [e for e in entries if _is_image(e)]
    if top_images and folders:
        raise DatasetError(f"train folder {directory} mixes images ({top_images[0].name}) with folders "
                           f"({folders[0].name}/): use one layout, {TRAIN_LAYOUTS}")
    if top_images:  # flat: unlabelled, one camera
        found = [(path, UNLABELLED, FLAT_CAMERA) for path in _scan_images(str(directory), "train/<image>", rejected)]
    else:
        cameras = [f for f in folders if _holds_images(f.path)]
        persons = [f for f in folders if f not in cameras and _holds_folders(f.path)]
        if cameras and persons:
            raise DatasetError(f"train folder {directory} mixes camera folders of images ({cameras[0].path}) with "
                               f"person folders of camera folders ({persons[0].path}): use one layout, "
                               f"{TRAIN_LAYOUTS}")
        if persons:
            found = _scan_labelled(directory, rejected)
        else:
            found = [(path, UNLABELLED, name) for path, _, name in
                     _scan_cameras(str(directory), UNLABELLED, "train/<camera>/<image>", rejected)]
    if not found:
        raise DatasetError(f"train folder {directory} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in any of "
                           f"the layouts {TRAIN_LAYOUTS}")
    return found


def _read_tree(root: Path, name: str) -> ReIDDataset:
    rejected: list[tuple[str, str]] = []
    found: dict[str, list[tuple[str, int, str]]] = {"train": [], "query": [], "gallery": []}
    present = [split for split in TEST_SPLITS if (root / split).is_dir()]
    if len(present) == 1:
        missing = root / next(s for s in TEST_SPLITS if s not in present)
        raise DatasetError(f"expected folder {missing} ({LAYOUT} layout) does not exist: a labelled test set "
                           f"needs both query/ and gallery/ (or neither, to train without evaluating)")
    if not present and not (root / "train").is_dir():
        raise DatasetError(f"dataset root {root} has neither train/ nor query/ and gallery/ "
                           f"({TRAIN_LAYOUTS}; {LAYOUT} for query and gallery)")
    if (root / "train").is_dir():
        found["train"] = _scan_train(root / "train", rejected)
    for split in present:
        found[split] = _scan_labelled(root / split, rejected)
    cameras = sorted({camera for items in found.values() for _, _, camera in items})
    camids = {camera: camid for camid, camera in enumerate(cameras)}
    splits = {split: [ImageRecord(path, pid, camids[camera]) for path, pid, camera in items]
              for split, items in found.items()}
    ignored = [item for split in ("train", *present) if (root / split).is_dir() for item in _litter_under(root / split)]
    return ReIDDataset(name=name, root=root, rejected=rejected, ignored=ignored, **splits)


def _read_csv(path: Path, name: str) -> ReIDDataset:
    dataset = read_manifest(path, name=name)
    base = str(path.parent)
    for split, records in dataset.splits().items():
        resolved = []
        for record in records:
            unlabelled = split == "train" and record.pid == UNLABELLED
            if (record.pid < -1 and not unlabelled) or record.camid < 0:
                raise DatasetError(f"manifest {path}: {record.path} has pid {record.pid} / camid {record.camid}; "
                                   "pids must be >= -1 (or empty for unlabelled train rows) and camids >= 0")
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
