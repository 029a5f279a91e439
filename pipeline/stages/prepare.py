"""Stage `prepare`: materialise the dataset named in params.yaml and write its manifest.

`synthetic` is generated into data/prepared/synthetic; a real dataset is read in place from
`dataset.root` and only its manifest is written. Files the reader could not use go to rejected.csv,
operating-system litter (Thumbs.db, ...) to ignored.csv, for the validate stage to report. A contact sheet
shows a few identities across cameras.
"""

from __future__ import annotations

import logging

import pandas as pd

from dsfnet.data import DatasetError, available_datasets, generate_synthetic, load_dataset, write_manifest
from dsfnet.visualize import contact_sheet
from pipeline.cli import run_stage
from pipeline.io import atomic_path, staged_dir, write_csv
from pipeline.params import Params
from pipeline.paths import CONTACT_SHEET, IGNORED, MANIFEST, PREPARED_DIR, REJECTED, SYNTHETIC_DIR

log = logging.getLogger(__name__)


def prepare(params: Params) -> None:
    """Materialise the dataset; write data/prepared/ and reports/prepare/contact_sheet.png."""
    name, root = params.dataset.name, params.dataset.root
    if name not in available_datasets():
        raise DatasetError(f"params.yaml dataset.name: unknown dataset {name!r}; "
                           f"available: {', '.join(available_datasets())}")
    with staged_dir(PREPARED_DIR) as staging:
        if name == "synthetic":
            staged = staging / SYNTHETIC_DIR.name
            dataset = generate_synthetic(staged, params.synthetic).rebased(staged, SYNTHETIC_DIR)
        else:
            if not root:
                raise DatasetError(f"params.yaml dataset.root must be set for dataset {name!r}")
            try:
                dataset = load_dataset(name, root)
            except DatasetError as error:
                raise DatasetError(f"params.yaml dataset.root={root!r}: {error}") from None
        write_manifest(dataset, staging / MANIFEST.name)
        write_csv(staging / REJECTED.name, pd.DataFrame(dataset.rejected, columns=["path", "reason"]))
        write_csv(staging / IGNORED.name, pd.DataFrame(dataset.ignored, columns=["path", "reason"]))
    log.info("%s", dataset.summary())
    if dataset.ignored:
        log.info("%d operating-system file(s) skipped (Thumbs.db, .DS_Store, ...)", len(dataset.ignored))
    if dataset.rejected:
        log.warning("%d file(s) could not be read as images of %s; validate will list them",
                    len(dataset.rejected), name)
    with atomic_path(CONTACT_SHEET) as tmp:
        contact_sheet(dataset.train or dataset.gallery).save(tmp)
    log.info("manifest: %s; contact sheet: %s", MANIFEST, CONTACT_SHEET)


def main(argv: list[str] | None = None) -> int:
    return run_stage("prepare", prepare, argv)


if __name__ == "__main__":
    raise SystemExit(main())
