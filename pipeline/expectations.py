"""The great-expectations suites over the dataset: the manifest, the files the reader refused, and the
operating-system litter it skipped (an info-level count in the data docs, never a failure).

Checks that need more than one row or the image bytes (cross-camera matches, train/test identity overlap,
decoding, duplicates across splits, identity and camera sizes) are computed here as derived columns, so
every failing row is reported by path in the validation result and in the data docs.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from PIL import Image
from tqdm import tqdm

from dsfnet.data.market1501 import MARKET_NAME, repeats_extension
from pipeline.params import ValidateParams

MARKET_LAYOUT_DATASETS = {"market1501", "synthetic"}
CAMERAS_PER_DATASET = {"market1501": 6, "msmt17": 15, "personx": 6, "veri776": 20}
MAX_BAD_ROWS_SHOWN = 10
SPLITS = ["train", "query", "gallery"]


@dataclass
class ImageFacts:
    size_bytes: int = -1
    decodes: bool = False
    width: int = 0
    height: int = 0
    digest: str = ""


def inspect_image(path: str, decode: bool) -> ImageFacts:
    """Size, decodability, dimensions and content hash of one file (one read of its bytes)."""
    facts = ImageFacts()
    try:
        data = Path(path).read_bytes()
    except OSError:
        return facts
    facts.size_bytes = len(data)
    facts.digest = hashlib.md5(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as image:
            facts.width, facts.height = image.size
            if decode:
                image.load()  # a truncated JPEG fails here, not at open
        facts.decodes = True
    except Exception:  # noqa: BLE001 - any decoder error means the file is unusable
        facts.decodes = False
    return facts


def derive_columns(manifest: pd.DataFrame, params: ValidateParams) -> pd.DataFrame:
    frame = manifest.copy()
    frame["file_name"] = frame["path"].astype(str).map(os.path.basename)
    frame["repeated_extension"] = [repeats_extension(name, os.path.splitext(name)[1]) for name in frame["file_name"]]
    # the name as the readers parse it: a repeated extension (Market's `….jpg.jpg`) counts once
    frame["file_name_read"] = [name[:-len(os.path.splitext(name)[1])] if repeated else name
                               for name, repeated in zip(frame["file_name"], frame["repeated_extension"], strict=True)]
    facts = [inspect_image(p, params.check_images) for p in tqdm(frame["path"].astype(str), desc="inspect images")]
    for column in ("size_bytes", "decodes", "width", "height"):
        frame[column] = [getattr(f, column) for f in facts]
    digests = pd.Series([f.digest for f in facts], index=frame.index)
    splits_per_digest = frame.assign(digest=digests).groupby("digest")["split"].nunique()
    frame["duplicate_across_splits"] = [bool(d) and splits_per_digest[d] > 1 for d in digests]

    test = frame[frame["split"].isin(["query", "gallery"])]
    train_ids = set(frame.loc[frame["split"] == "train", "pid"])
    test_ids = set(test.loc[test["pid"] > 0, "pid"])  # pid 0 are distractors, never identities
    gallery_cams = frame[frame["split"] == "gallery"].groupby("pid")["camid"].agg(set).to_dict()
    frame["has_cross_camera_match"] = [
        split != "query" or bool(gallery_cams.get(pid, set()) - {cam})
        for split, pid, cam in zip(frame["split"], frame["pid"], frame["camid"], strict=True)
    ]
    # the Market protocol skips a query without a cross-camera match; evaluation needs at least one with one
    frame["evaluable_query"] = ((frame["split"] == "query") & frame["has_cross_camera_match"]).astype(int)
    frame["test_pid_missing"] = frame["split"].isin(["query", "gallery"]) & frame["pid"].isna()
    frame["id_in_train_and_test"] = [
        pid in (test_ids if split == "train" else train_ids) and pid > 0
        for split, pid in zip(frame["split"], frame["pid"], strict=True)
    ]
    per_identity = frame.groupby(["split", "pid"])["path"].transform("size")
    median = frame.groupby("split")["pid"].transform(lambda pids: pids.value_counts().median())
    frame["identity_size_ratio"] = (per_identity / median).where(frame["pid"] > 0, 1.0)
    frame["camera_images"] = frame.groupby(["split", "camid"])["path"].transform("size")
    return frame


@dataclass
class Check:
    key: str  # stable name in metrics/validate.json
    expectation: gxe.Expectation


def manifest_checks(frame: pd.DataFrame, dataset_name: str, num_cameras: int | None,
                    params: ValidateParams) -> list[Check]:
    cameras = num_cameras or (int(frame["camid"].max()) + 1 if len(frame) else 1)
    checks = [
        Check(f"not_null_{c}", gxe.ExpectColumnValuesToNotBeNull(column=c, description=f"{c} is missing"))
        for c in ("path", "camid", "split")
    ]
    checks += [
        Check("test_pids_present", gxe.ExpectColumnValuesToBeInSet(
            column="test_pid_missing", value_set=[False],
            description="query or gallery image without an identity (only train images may be unlabelled)")),
        Check("split_names", gxe.ExpectColumnValuesToBeInSet(
            column="split", value_set=SPLITS, description="split is not train, query or gallery")),
        Check("train_present", gxe.ExpectColumnDistinctValuesToContainSet(
            column="split", value_set=["train"], description="the train split is empty")),
        Check("pid_range", gxe.ExpectColumnValuesToBeBetween(
            column="pid", min_value=0, max_value=99_999, description="pid outside 0..99999")),
        Check("camid_range", gxe.ExpectColumnValuesToBeBetween(
            column="camid", min_value=0, max_value=cameras - 1,
            description=f"camera id outside the dataset's {cameras} cameras (0..{cameras - 1})")),
        Check("unique_paths", gxe.ExpectColumnValuesToBeUnique(
            column="path", description="the same file is listed twice")),
        Check("non_empty_files", gxe.ExpectColumnValuesToBeBetween(
            column="size_bytes", min_value=1, description="file is missing or has zero bytes")),
        Check("images_decode", gxe.ExpectColumnValuesToBeInSet(
            column="decodes", value_set=[True], description="image does not decode (corrupt or truncated)")),
        Check("width_range", gxe.ExpectColumnValuesToBeBetween(
            column="width", min_value=params.min_side, max_value=params.max_side,
            description=f"image width far outside {params.min_side}..{params.max_side} px")),
        Check("height_range", gxe.ExpectColumnValuesToBeBetween(
            column="height", min_value=params.min_side, max_value=params.max_side,
            description=f"image height far outside {params.min_side}..{params.max_side} px")),
        Check("no_duplicates_across_splits", gxe.ExpectColumnValuesToBeInSet(
            column="duplicate_across_splits", value_set=[False],
            description="the same image bytes appear in more than one split")),
        Check("query_has_cross_camera_match", gxe.ExpectColumnValuesToBeInSet(
            column="has_cross_camera_match", value_set=[True], severity="warning",
            description="query identity has no gallery image from another camera (evaluation skips the query)")),
        Check("train_test_ids_disjoint", gxe.ExpectColumnValuesToBeInSet(
            column="id_in_train_and_test", value_set=[False],
            description="identity appears in both train and test")),
        Check("identity_sizes", gxe.ExpectColumnValuesToBeBetween(
            column="identity_size_ratio", max_value=params.max_identity_size_ratio, severity="warning",
            description=f"identity has over {params.max_identity_size_ratio}x the median images of its split")),
        Check("camera_sizes", gxe.ExpectColumnValuesToBeBetween(
            column="camera_images", min_value=params.min_images_per_camera, severity="warning",
            description=f"camera has fewer than {params.min_images_per_camera} images in this split")),
    ]
    if frame["split"].isin(["query", "gallery"]).any():  # a test split is optional; half of one is not
        checks += [
            Check("query_and_gallery", gxe.ExpectColumnDistinctValuesToContainSet(
                column="split", value_set=["query", "gallery"],
                description="a test split needs both query and gallery images (or neither)")),
            Check("some_query_evaluable", gxe.ExpectColumnMaxToBeBetween(
                column="evaluable_query", min_value=1,
                description="no query has a gallery image of its identity from another camera: "
                            "nothing can be evaluated")),
        ]
    checks.append(Check("single_extension", gxe.ExpectColumnValuesToBeInSet(
        column="repeated_extension", value_set=[False], severity="warning",
        description="file name repeats its extension (e.g. ….jpg.jpg); read as the reference loaders read it")))
    if dataset_name in MARKET_LAYOUT_DATASETS:
        checks.append(Check("market_file_names", gxe.ExpectColumnValuesToMatchRegex(
            column="file_name_read", regex=MARKET_NAME.pattern.replace("(", "(?:"),  # no groups: pandas warns on them
            description="file name does not follow PPPP_cCsS_FFFFFF_BB.jpg")))
    return checks


def rejected_checks() -> list[Check]:
    """Every file the reader refused (bad name, extension, camera) is a failing row, named with its reason."""
    return [Check("no_rejected_files", gxe.ExpectColumnValuesToBeNull(
        column="reason", description="file in a dataset folder that the reader could not use"))]


def ignored_checks() -> list[Check]:
    """Operating-system litter the reader skipped: listed and counted at info level, never a failure."""
    return [Check("os_files_ignored", gxe.ExpectColumnValuesToBeNull(
        column="reason", severity="info",
        description="operating-system file skipped (Thumbs.db, .DS_Store, desktop.ini, ._*)"))]


@dataclass
class ValidationOutcome:
    success: bool
    evaluated: int
    failed: int
    problems: list[str]  # one line per failed critical expectation, naming the bad rows
    warnings: list[str]  # the same for warning-level expectations (reported, not fatal)
    notes: list[str] = field(default_factory=list)  # info-level expectations (e.g. skipped litter): counts only
    results: dict[str, dict] = field(default_factory=dict)  # per check: success, unexpected, severity


def _describe(result, reasons: dict[str, str]) -> str:
    config = result.expectation_config
    details = result.result or {}
    rows = [row.get("path") for row in details.get("unexpected_index_list") or [] if isinstance(row, dict)]
    count = details.get("unexpected_count", len(rows))
    if not rows:
        return f"{config.description} (observed: {details.get('observed_value')})"
    shown = ", ".join(f"{r} ({reasons[r]})" if r in reasons else str(r) for r in rows[:MAX_BAD_ROWS_SHOWN])
    more = f" (+{len(rows) - MAX_BAD_ROWS_SHOWN} more)" if len(rows) > MAX_BAD_ROWS_SHOWN else ""
    return f"{config.description}: {count} row(s): {shown}{more}"


def validate_dataset(frame: pd.DataFrame, rejected: pd.DataFrame, dataset_name: str, num_cameras: int | None,
                     params: ValidateParams, context_dir: Path, docs_dir: Path,
                     ignored: pd.DataFrame | None = None) -> ValidationOutcome:
    """Run the suites through GX checkpoints (file-backed context), data docs into `docs_dir`."""
    if ignored is None:
        ignored = pd.DataFrame(columns=["path", "reason"])
    context = gx.get_context(mode="file", project_root_dir=str(context_dir))
    for site in list(context.get_site_names()):
        context.delete_data_docs_site(site)
    context.add_data_docs_site(site_name="reports", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    source = context.data_sources.add_pandas("dataset")
    checks = {"manifest": manifest_checks(frame, dataset_name, num_cameras, params), "rejected": rejected_checks(),
              "ignored": ignored_checks()}
    definitions, keys = [], {}
    for name, suite_checks in checks.items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all rows")
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=[c.expectation for c in suite_checks]))
        for check in suite_checks:
            keys[(name, check.expectation.description)] = check.key
        definitions.append(context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)))
    outcome = ValidationOutcome(success=True, evaluated=0, failed=0, problems=[], warnings=[])
    reasons = dict(zip(rejected["path"], rejected["reason"], strict=True))
    for definition, data in zip(definitions, (frame, rejected, ignored), strict=True):
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=definition.name, validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data docs", site_names=["reports"])],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["path"]},
        ))
        validation = next(iter(checkpoint.run(batch_parameters={"dataframe": data}).run_results.values()))
        for result in validation.results:
            config = result.expectation_config
            severity = getattr(config.severity, "value", str(config.severity))
            outcome.evaluated += 1
            outcome.results[keys[(definition.name, config.description)]] = {
                "success": bool(result.success), "severity": severity,
                "unexpected": int((result.result or {}).get("unexpected_count", 0) or 0),
            }
            if result.success:
                continue
            if severity == "critical":
                outcome.failed += 1
                outcome.problems.append(_describe(result, reasons))
            elif severity == "info":
                outcome.notes.append(_describe(result, {}))
            else:
                outcome.warnings.append(_describe(result, reasons))
    outcome.success = outcome.failed == 0
    return outcome
