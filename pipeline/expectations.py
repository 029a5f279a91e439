"""The great-expectations suite over the dataset manifest.

Checks that need more than one row (cross-camera matches, train/test id overlap, image decoding) are
computed here as derived columns, so each failing row is reported by path in the validation result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from PIL import Image
from tqdm import tqdm

from dsfnet.data.market1501 import MARKET_NAME

MARKET_LAYOUT_DATASETS = {"market1501", "synthetic"}
MAX_BAD_ROWS_SHOWN = 10
MEANING = {  # what a failure on a derived column means, in the user's words
    "decodes": "image file is missing or does not decode",
    "has_cross_camera_match": "query identity has no gallery image from another camera",
    "id_in_train_and_test": "identity appears in both train and test",
    "file_name": "file name does not follow PPPP_cCsS_FFFFFF_BB.jpg",
}


def _decodes(path: str) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:  # any decoder error means the file is unusable  # noqa: BLE001
        return False


def derive_columns(manifest: pd.DataFrame, check_images: bool) -> pd.DataFrame:
    frame = manifest.copy()
    frame["file_name"] = frame["path"].astype(str).map(os.path.basename)
    if check_images:
        frame["decodes"] = [_decodes(p) for p in tqdm(frame["path"].astype(str), desc="decode images")]
    else:
        frame["decodes"] = frame["path"].astype(str).map(os.path.isfile)
    test = frame[frame["split"].isin(["query", "gallery"])]
    train_ids = set(frame.loc[frame["split"] == "train", "pid"])
    test_ids = set(test.loc[test["pid"] > 0, "pid"])  # pid 0 are distractors, never identities
    gallery = frame[frame["split"] == "gallery"]
    gallery_cams = gallery.groupby("pid")["camid"].agg(set).to_dict()
    frame["has_cross_camera_match"] = [
        split != "query" or bool(gallery_cams.get(pid, set()) - {cam})
        for split, pid, cam in zip(frame["split"], frame["pid"], frame["camid"], strict=True)
    ]
    frame["id_in_train_and_test"] = [
        pid in (test_ids if split == "train" else train_ids) and pid > 0
        for split, pid in zip(frame["split"], frame["pid"], strict=True)
    ]
    return frame


def build_suite(frame: pd.DataFrame, dataset_name: str) -> gx.ExpectationSuite:
    num_cameras = int(frame["camid"].nunique()) if len(frame) else 1
    suite = gx.ExpectationSuite(name="manifest")
    for column in ("path", "pid", "camid", "split"):
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column))
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "query", "gallery"]))
    suite.add_expectation(gxe.ExpectColumnDistinctValuesToContainSet(
        column="split", value_set=["train", "query", "gallery"]))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="pid", min_value=0, max_value=99_999))
    # camera ids are 0-based and contiguous: the largest is the number of cameras minus one
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="camid", min_value=0,
                                                            max_value=num_cameras - 1))
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="path"))
    if dataset_name in MARKET_LAYOUT_DATASETS:
        suite.add_expectation(gxe.ExpectColumnValuesToMatchRegex(column="file_name", regex=MARKET_NAME.pattern))
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]))
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="has_cross_camera_match", value_set=[True]))
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="id_in_train_and_test", value_set=[False]))
    return suite


@dataclass
class ValidationOutcome:
    success: bool
    evaluated: int
    failed: int
    problems: list[str]  # one line per failed expectation, naming the bad rows


def _describe_failure(result) -> str:
    config = result.expectation_config
    column = config.kwargs.get("column", "")
    details = result.result or {}
    rows = [row.get("path") for row in details.get("unexpected_index_list") or [] if isinstance(row, dict)]
    count = details.get("unexpected_count", len(rows))
    shown = ", ".join(str(r) for r in rows[:MAX_BAD_ROWS_SHOWN])
    more = f" (+{len(rows) - MAX_BAD_ROWS_SHOWN} more)" if len(rows) > MAX_BAD_ROWS_SHOWN else ""
    where = f"; bad rows: {shown}{more}" if rows else ""
    what = MEANING.get(column, f"{config.type} on column {column!r}")
    return f"{what}: {count} row(s){where}"


def validate_manifest(frame: pd.DataFrame, dataset_name: str, docs_dir: Path) -> ValidationOutcome:
    """Run the suite through a GX checkpoint and build its data docs into `docs_dir`."""
    context = gx.get_context(mode="ephemeral")
    context.add_data_docs_site(
        site_name="reports",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(Path(docs_dir).resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    for site in list(context.get_site_names()):
        if site != "reports":
            context.delete_data_docs_site(site)
    asset = context.data_sources.add_pandas("manifest").add_dataframe_asset("manifest")
    batch_definition = asset.add_batch_definition_whole_dataframe("all rows")
    suite = context.suites.add(build_suite(frame, dataset_name))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="manifest", data=batch_definition, suite=suite))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="manifest",
        validation_definitions=[definition],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data docs", site_names=["reports"])],
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["path"]},
    ))
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    validation = next(iter(result.run_results.values()))
    failures = [r for r in validation.results if not r.success]
    return ValidationOutcome(
        success=bool(result.success),
        evaluated=len(validation.results),
        failed=len(failures),
        problems=[_describe_failure(r) for r in failures],
    )
