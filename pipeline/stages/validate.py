"""Stage `validate`: a great-expectations suite over the manifest; stops the pipeline on bad data."""

from __future__ import annotations

import logging

import pandas as pd

from pipeline.cli import StageFailed, run_stage
from pipeline.expectations import derive_columns, validate_manifest
from pipeline.io import staged_dir, write_json
from pipeline.params import Params
from pipeline.paths import MANIFEST, VALIDATE_REPORTS, metrics_file

log = logging.getLogger(__name__)


def validate(params: Params) -> None:
    """Validate data/prepared/manifest.csv; write metrics/validate.json and data docs."""
    if not MANIFEST.is_file():
        raise StageFailed(f"{MANIFEST} does not exist; run the prepare stage first")
    manifest = pd.read_csv(MANIFEST)
    frame = derive_columns(manifest, params.validate.check_images)
    with staged_dir(VALIDATE_REPORTS) as docs:
        outcome = validate_manifest(frame, params.dataset.name, docs)
    by_split = manifest.groupby("split")
    metrics = {
        "success": outcome.success,
        "evaluated_expectations": outcome.evaluated,
        "failed_expectations": outcome.failed,
        "num_images": len(manifest),
        **{f"num_{split}": int(by_split.size().get(split, 0)) for split in ("train", "query", "gallery")},
        "num_train_ids": int(manifest.loc[manifest["split"] == "train", "pid"].nunique()),
        "num_cameras": int(manifest["camid"].nunique()),
        "undecodable_images": int((~frame["decodes"]).sum()),
    }
    write_json(metrics_file("validate"), metrics)
    log.info("data docs: %s", (VALIDATE_REPORTS / "index.html").resolve())
    if not outcome.success:
        raise StageFailed(
            f"dataset {params.dataset.name!r} failed {outcome.failed} of {outcome.evaluated} expectations "
            f"(data docs: {VALIDATE_REPORTS / 'index.html'}):\n  - " + "\n  - ".join(outcome.problems)
        )
    log.info("all %d expectations passed", outcome.evaluated)


def main(argv: list[str] | None = None) -> int:
    return run_stage("validate", validate, argv)


if __name__ == "__main__":
    raise SystemExit(main())
