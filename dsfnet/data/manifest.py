"""The manifest: one CSV row per image (path, pid, camid, split), the hand-off between stages.

It is also how users describe their own data (the `folder` reader will accept it).
"""

from __future__ import annotations

import csv
from pathlib import Path

from dsfnet.atomic import atomic_path
from dsfnet.data.records import DatasetError, ImageRecord, ReIDDataset

COLUMNS = ("path", "pid", "camid", "split")


def write_manifest(dataset: ReIDDataset, path: str | Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for split, records in dataset.splits().items():
            writer.writerows((r.path, r.pid, r.camid, split) for r in records)


def read_manifest(path: str | Path, name: str = "manifest") -> ReIDDataset:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"manifest {path} does not exist")
    dataset = ReIDDataset(name=name, root=path.parent)
    splits = dataset.splits()
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or set(COLUMNS) - set(reader.fieldnames):
            raise DatasetError(f"manifest {path} must have columns {', '.join(COLUMNS)}; has {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                record = ImageRecord(row["path"], int(row["pid"]), int(row["camid"]))
                splits[row["split"]].append(record)
            except (KeyError, TypeError, ValueError):
                raise DatasetError(f"manifest {path} line {line}: bad row {row}") from None
    return dataset
