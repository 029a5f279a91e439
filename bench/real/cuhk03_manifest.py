"""A `folder`-reader CSV manifest for CUHK03 (detected crops) as a real-image development benchmark.

    python bench/real/cuhk03_manifest.py --images DIR/dataset/images/full --out DIR/cuhk03.csv

The images come from a public repository's history (see bench/real/README.md); they are for research use
and never go into this repository, its tests or a DVC remote. Names are `<pid4>_<idx2>.jpg`: idx 00–04 is
camera A (camid 0), 05–09 camera B (camid 1). Identities are split by sorted id as CUHK03-NP does: the
first 767 train, the other 700 test; per test identity the first image of each camera is a query and the
rest are gallery. pids are written 1-based (`0000` → 1): pid 0 means "distractor" in the Market protocol.
Train pids are kept for pseudo-label monitoring only; training never reads them.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
from collections import defaultdict
from pathlib import Path

from dsfnet.atomic import atomic_path

NAME = re.compile(r"^(\d{4})_(\d{2})\.jpg$")
TRAIN_IDS = 767


def cuhk03_rows(images: Path, relative_to: Path, train_ids: int = TRAIN_IDS) -> list[tuple[str, int, int, str]]:
    """(path, pid, camid, split) for every image, in sorted order; paths relative to `relative_to`."""
    by_pid: dict[int, list[tuple[int, Path]]] = defaultdict(list)
    for path in sorted(images.iterdir()):
        match = NAME.match(path.name)
        if match:
            by_pid[int(match[1])].append((int(match[2]), path))
    if not by_pid:
        raise SystemExit(f"{images}: no <pid4>_<idx2>.jpg images")
    rows = []
    for rank, pid in enumerate(sorted(by_pid)):
        queried: set[int] = set()
        for idx, path in sorted(by_pid[pid]):
            camid = 0 if idx < 5 else 1
            if rank < train_ids:
                split = "train"
            else:
                split = "query" if camid not in queried else "gallery"
                queried.add(camid)
            rows.append((os.path.relpath(path, relative_to), pid + 1, camid, split))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="the folder of <pid4>_<idx2>.jpg crops")
    parser.add_argument("--out", type=Path, required=True, help="the CSV to write (outside the repository)")
    parser.add_argument("--train-ids", type=int, default=TRAIN_IDS)
    args = parser.parse_args()
    rows = cuhk03_rows(args.images, args.out.resolve().parent, args.train_ids)
    with atomic_path(args.out) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "pid", "camid", "split"))
        writer.writerows(rows)
    counts = {s: sum(r[3] == s for r in rows) for s in ("train", "query", "gallery")}
    print(f"{args.out}: {len({r[1] for r in rows})} identities, " + ", ".join(f"{n} {s}" for s, n in counts.items()))


if __name__ == "__main__":
    main()
