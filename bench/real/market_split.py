"""A validation split of Market-1501's training identities, as a `folder`-reader CSV manifest.

    python bench/real/market_split.py --root DIR/market1501 --out DIR/market_val.csv [--val-ids 200]

Every tuning choice is made on this split, never on the official query/gallery: the first identities of
`bounding_box_train` by sorted id train (551 of 751 by default), the last `--val-ids` are held out; per held-out
identity and camera the first image by name is a query, the rest are gallery. The official test folders are
not read. The images are research-use only: the manifest points at them where they are (outside this
repository) and is written outside it too. Train pids are kept for pseudo-label monitoring only.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

from dsfnet.atomic import atomic_path
from dsfnet.data import ImageRecord, load_dataset

VAL_IDS = 200


def validation_rows(train: list[ImageRecord], val_ids: int = VAL_IDS) -> list[tuple[str, int, int, str]]:
    """(path, pid, camid, split) for every official train image: train / query / gallery of the validation split."""
    pids = sorted({r.pid for r in train})
    if not 0 < val_ids < len(pids):
        raise SystemExit(f"--val-ids {val_ids}: the train split has {len(pids)} identities; "
                         f"hold out 1..{len(pids) - 1}")
    held_out = set(pids[-val_ids:])
    rows, queried = [], set()
    for record in sorted(train, key=lambda r: os.path.basename(r.path)):
        if record.pid not in held_out:
            split = "train"
        else:
            split = "gallery" if (record.pid, record.camid) in queried else "query"
            queried.add((record.pid, record.camid))
        rows.append((record.path, record.pid, record.camid, split))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the Market-1501 folder (with bounding_box_train/)")
    parser.add_argument("--out", type=Path, required=True, help="the CSV to write (outside the repository)")
    parser.add_argument("--val-ids", type=int, default=VAL_IDS, help="identities held out for validation")
    args = parser.parse_args()
    rows = validation_rows(load_dataset("market1501", args.root).train, args.val_ids)
    base = args.out.resolve().parent
    with atomic_path(args.out) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "pid", "camid", "split"))
        writer.writerows((os.path.relpath(Path(path).resolve(), base), *rest) for path, *rest in rows)
    counts = {s: sum(r[3] == s for r in rows) for s in ("train", "query", "gallery")}
    ids = {s: len({r[1] for r in rows if r[3] == s}) for s in ("train", "query")}
    print(f"{args.out}: {ids['train']} train ids, {ids['query']} validation ids; "
          + ", ".join(f"{n} {s}" for s, n in counts.items()))


if __name__ == "__main__":
    main()
