"""The manifest: one CSV row per image (path, pid, camid, split), the hand-off between stages.

It is also how users describe their own data (the `folder` reader accepts it). A train row may leave pid
empty: an unlabelled crop (UNLABELLED). Query and gallery rows need their identity.
"""

from __future__ import annotations

import csv
from pathlib import Path

from dsfnet.atomic import atomic_path
from dsfnet.data.records import UNLABELLED, DatasetError, ImageRecord, ReIDDataset

COLUMNS = ("path", "pid", "camid", "split")


def write_manifest(dataset: ReIDDataset, path: str | Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for split, records in dataset.splits().items():
            writer.writerows((r.path, "" if r.pid == UNLABELLED else r.pid, r.camid, split) for r in records)


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
            unlabelled = row.get("split") == "train" and not (row.get("pid") or "").strip()
            try:
                record = ImageRecord(row["path"], UNLABELLED if unlabelled else int(row["pid"]), int(row["camid"]))
                splits[row["split"]].append(record)
            except (KeyError, TypeError, ValueError):
                hint = (" (pid may be empty in train rows only; camid must be an integer, 0 when every image comes "
                        "from one camera)")
                raise DatasetError(f"manifest {path} line {line}: bad row {row}{hint}") from None
    return dataset
