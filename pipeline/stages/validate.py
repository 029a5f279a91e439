"""Stage `validate`: great-expectations suites over the dataset; stops the pipeline on bad data."""

from __future__ import annotations

import logging

import pandas as pd

from pipeline.cli import StageFailed, run_stage
from pipeline.expectations import CAMERAS_PER_DATASET, derive_columns, validate_dataset
from pipeline.io import staged_dir, write_json
from pipeline.params import Params
from pipeline.paths import IGNORED, MANIFEST, REJECTED, VALIDATE_REPORTS, metrics_file

log = logging.getLogger(__name__)


def expected_cameras(params: Params) -> int | None:
    """How many cameras the dataset has by definition (None: whatever the data says, e.g. `folder`)."""
    if params.dataset.name == "synthetic":
        return params.synthetic.resolved().num_cameras
    return CAMERAS_PER_DATASET.get(params.dataset.name)


def split_counts(manifest: pd.DataFrame) -> dict[str, int]:
    counts = {}
    for split in ("train", "query", "gallery"):
        rows = manifest[manifest["split"] == split]
        counts[f"{split}_images"] = len(rows)
        counts[f"{split}_ids"] = int(rows.loc[rows["pid"] > 0, "pid"].nunique())  # distractors (pid 0) not counted
        counts[f"{split}_cameras"] = int(rows["camid"].nunique())
    counts["gallery_distractors"] = int(((manifest["split"] == "gallery") & (manifest["pid"] == 0)).sum())
    counts["train_unlabelled_images"] = int(((manifest["split"] == "train") & manifest["pid"].isna()).sum())
    counts["test_split"] = bool(counts["query_images"] and counts["gallery_images"])
    return counts


def validate(params: Params) -> None:
    """Validate data/prepared/; write metrics/validate.json and data docs under reports/validate/."""
    if not MANIFEST.is_file():
        raise StageFailed(f"{MANIFEST} does not exist; run the prepare stage first")
    manifest = pd.read_csv(MANIFEST)
    rejected, ignored = (pd.read_csv(path, dtype=str) if path.is_file() else pd.DataFrame(columns=["path", "reason"])
                         for path in (REJECTED, IGNORED))
    frame = derive_columns(manifest, params.validate)
    with staged_dir(VALIDATE_REPORTS) as out:
        outcome = validate_dataset(frame, rejected, params.dataset.name, expected_cameras(params), params.validate,
                                   context_dir=out, docs_dir=out, ignored=ignored)
    metrics = {
        "success": outcome.success,
        "evaluated_expectations": outcome.evaluated,
        "failed_expectations": outcome.failed,
        "warnings": len(outcome.warnings),
        "images": len(manifest),
        **split_counts(manifest),
        "rejected_files": len(rejected),
        "ignored_files": len(ignored),
        "repeated_extension_files": int(frame["repeated_extension"].sum()),
        "undecodable_images": int((~frame["decodes"]).sum()),
        "expectations": outcome.results,
    }
    write_json(metrics_file("validate"), metrics)
    docs = VALIDATE_REPORTS / "index.html"
    for warning in outcome.warnings:
        log.warning("%s", warning)
    for note in outcome.notes:
        log.info("%s", note)
    if not outcome.success:
        raise StageFailed(
            f"dataset {params.dataset.name!r} failed {outcome.failed} of {outcome.evaluated} expectations "
            f"(data docs: {docs}):\n  - " + "\n  - ".join(outcome.problems)
        )
    log.info("all %d expectations passed (%d warnings); data docs: %s", outcome.evaluated,
             len(outcome.warnings), docs.resolve())


def main(argv: list[str] | None = None) -> int:
    return run_stage("validate", validate, argv)


if __name__ == "__main__":
    raise SystemExit(main())
