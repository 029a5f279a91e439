"""Stage `prepare`: materialise the dataset named in params.yaml and write its manifest.

`synthetic` is generated into data/prepared/synthetic; a real dataset is read in place from
`dataset.root` and only its manifest is written.
"""

from __future__ import annotations

import logging

from dsfnet.data import DatasetError, available_datasets, generate_synthetic, load_dataset, write_manifest
from pipeline.cli import run_stage
from pipeline.io import staged_dir
from pipeline.params import Params
from pipeline.paths import MANIFEST, PREPARED_DIR, SYNTHETIC_DIR

log = logging.getLogger(__name__)


def prepare(params: Params) -> None:
    """Materialise the dataset and write data/prepared/manifest.csv."""
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
        if not dataset.train or not dataset.query or not dataset.gallery:
            raise DatasetError(f"dataset {name!r} at {dataset.root} has an empty split: {dataset.summary()}")
        write_manifest(dataset, staging / MANIFEST.name)
    log.info("%s", dataset.summary())
    log.info("manifest written to %s", MANIFEST)


def main(argv: list[str] | None = None) -> int:
    return run_stage("prepare", prepare, argv)


if __name__ == "__main__":
    raise SystemExit(main())
