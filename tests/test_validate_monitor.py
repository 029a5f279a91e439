"""The validate stage (great-expectations) on real corrupted file trees."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from dsfnet.data import SyntheticConfig, generate_synthetic
from pipeline.cli import StageFailed
from pipeline.params import params_from_dict
from pipeline.stages.prepare import prepare
from pipeline.stages.validate import validate


@pytest.fixture(scope="module")
def market_tree(tmp_path_factory) -> Path:
    """A clean Market-1501-layout folder (synthetic images, real-format names) to corrupt per test."""
    root = tmp_path_factory.mktemp("market")
    config = SyntheticConfig(profile="tiny", num_train_ids=6, num_test_ids=4, num_cameras=3, cameras_per_id=2,
                             images_per_camera=3, num_distractors=2, num_junk=1, height=64, width=32)
    generate_synthetic(root, config, progress=False)
    return root


def run_validation(tree: Path, workdir: Path, monkeypatch, **validate_params):
    """The real prepare + validate stages on `tree`, as `dvc repro` would run them."""
    monkeypatch.chdir(workdir)
    params = params_from_dict({"dataset": {"name": "market1501", "root": str(tree)},
                               "validate": {"min_images_per_camera": 1, **validate_params}})
    prepare(params)
    try:
        validate(params)
    except StageFailed as error:
        return str(error), json.loads((workdir / "metrics/validate.json").read_text())
    return "", json.loads((workdir / "metrics/validate.json").read_text())


@pytest.fixture
def tree(market_tree, tmp_path) -> Path:
    copy = tmp_path / "dataset"
    shutil.copytree(market_tree, copy)
    return copy


def first(tree: Path, folder: str, pattern: str = "[0-9]*.jpg") -> Path:
    return sorted((tree / folder).glob(pattern))[0]


def test_clean_dataset_passes_and_writes_data_docs(tree, tmp_path, monkeypatch):
    message, metrics = run_validation(tree, tmp_path, monkeypatch)
    assert message == "" and metrics["success"] is True
    assert metrics["train_ids"] == 6 and metrics["query_ids"] == 4 and metrics["gallery_distractors"] == 2
    assert metrics["expectations"]["images_decode"] == {"success": True, "severity": "critical", "unexpected": 0}
    assert (tmp_path / "reports/validate/index.html").is_file()
    assert (tmp_path / "reports/prepare/contact_sheet.png").is_file()


def corrupt_undecodable(tree):
    bad = first(tree, "query")
    bad.write_bytes(b"this is not a jpeg")
    return bad, "does not decode"


def corrupt_truncated(tree):
    bad = first(tree, "bounding_box_test")
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    return bad, "does not decode"


def corrupt_zero_bytes(tree):
    bad = first(tree, "bounding_box_train")
    bad.write_bytes(b"")
    return bad, "zero bytes"


def corrupt_file_name(tree):
    bad = first(tree, "bounding_box_train").rename(tree / "bounding_box_train" / "person_one.jpg")
    return bad, "does not follow PPPP_cCsS_FFFFFF_BB.jpg"


def corrupt_extension(tree):
    source = first(tree, "bounding_box_train")
    bad = source.with_suffix(".png")
    source.rename(bad)
    return bad, "unexpected extension '.png'"


def corrupt_image_size(tree):
    bad = first(tree, "bounding_box_train")
    Image.new("RGB", (8000, 16000)).save(bad)
    return bad, "far outside"


def corrupt_duplicate_across_splits(tree):
    source, bad = first(tree, "bounding_box_train"), first(tree, "bounding_box_test")
    bad.write_bytes(source.read_bytes())
    return bad, "same image bytes appear in more than one split"


def corrupt_id_in_train_and_test(tree):
    train = first(tree, "bounding_box_train")
    query_pid = first(tree, "query").name[:4]
    bad = train.rename(train.with_name(query_pid + train.name[4:]))
    return bad, "both train and test"


def remove_cross_camera_matches(tree: Path, query: Path) -> None:
    pid, cam = query.name[:4], query.name[5:7]
    for gallery in (tree / "bounding_box_test").glob(f"{pid}_c*.jpg"):
        if gallery.name[5:7] != cam:
            gallery.unlink()


def corrupt_camera_range(tree):
    source = first(tree, "bounding_box_test")
    bad = source.with_name(source.name[:6] + "9" + source.name[7:])  # camera 9: Market-1501 has six
    source.rename(bad)
    return bad, "camera id outside the dataset's 6 cameras"


@pytest.mark.parametrize("corrupt", [
    corrupt_undecodable, corrupt_truncated, corrupt_zero_bytes, corrupt_file_name, corrupt_extension,
    corrupt_image_size, corrupt_duplicate_across_splits, corrupt_id_in_train_and_test, corrupt_camera_range,
])
def test_each_kind_of_bad_input_fails_and_names_the_file(tree, tmp_path, monkeypatch, corrupt):
    bad, meaning = corrupt(tree)
    message, metrics = run_validation(tree, tmp_path, monkeypatch)
    assert metrics["success"] is False
    assert meaning in message and bad.name in message, message


def test_queries_without_a_cross_camera_match_warn_until_none_is_left(tree, tmp_path, monkeypatch, caplog):
    # the Market protocol skips such a query (torchreid, cluster-contrast): a warning with the count and names
    queries = sorted((tree / "query").glob("[0-9]*.jpg"))
    pids = sorted({q.name[:4] for q in queries})
    one_pid = [q for q in queries if q.name[:4] == pids[0]]
    for query in one_pid:
        remove_cross_camera_matches(tree, query)
    message, metrics = run_validation(tree, tmp_path, monkeypatch)
    assert message == "" and metrics["success"] is True
    assert metrics["expectations"]["query_has_cross_camera_match"] == {
        "success": False, "severity": "warning", "unexpected": len(one_pid)}
    assert f"{len(one_pid)} row(s)" in caplog.text and one_pid[0].name in caplog.text
    for query in queries:  # no query can be evaluated: an error
        remove_cross_camera_matches(tree, query)
    message, metrics = run_validation(tree, tmp_path, monkeypatch)
    assert metrics["success"] is False and "nothing can be evaluated" in message


def test_empty_train_or_half_a_test_split_fails(tree, tmp_path, monkeypatch):
    for path in (tree / "query").iterdir():
        path.unlink()
    message, _ = run_validation(tree, tmp_path, monkeypatch)
    assert "a test split needs both query and gallery images (or neither)" in message
    for path in (tree / "bounding_box_train").iterdir():
        path.unlink()
    message, _ = run_validation(tree, tmp_path, monkeypatch)
    assert "the train split is empty" in message


def test_skewed_identities_and_small_cameras_only_warn(tree, tmp_path, monkeypatch, caplog):
    message, metrics = run_validation(tree, tmp_path, monkeypatch, min_images_per_camera=1000,
                                      max_identity_size_ratio=0.5)
    assert message == "" and metrics["success"] is True and metrics["warnings"] == 2
    assert metrics["expectations"]["camera_sizes"]["success"] is False
    assert metrics["expectations"]["identity_sizes"]["severity"] == "warning"
    assert "fewer than 1000 images" in caplog.text


def test_market_as_distributed_passes_litter_counted_repeated_extensions_warned(tree, tmp_path, monkeypatch,
                                                                                   caplog):
    """Market-1501's archive: a Thumbs.db in every split folder and names like 1488_c1s6_023021_00.jpg.jpg."""
    caplog.set_level("INFO")
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        (tree / folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 thumbnail cache")
    (tree / ".DS_Store").write_bytes(b"Bud1")  # at the root: not in a split folder, not read at all
    doubled = [first(tree, "query"), first(tree, "bounding_box_test")]
    for path in doubled:
        path.rename(path.with_name(path.name + ".jpg"))
    message, metrics = run_validation(tree, tmp_path, monkeypatch)
    assert message == "" and metrics["success"] is True
    assert metrics["rejected_files"] == 0 and metrics["ignored_files"] == 3
    assert metrics["repeated_extension_files"] == 2
    assert metrics["expectations"]["single_extension"] == {"success": False, "severity": "warning", "unexpected": 2}
    assert metrics["expectations"]["os_files_ignored"] == {"success": False, "severity": "info", "unexpected": 3}
    assert metrics["expectations"]["market_file_names"]["success"] is True
    assert f"{doubled[0].name}.jpg" in caplog.text and "repeats its extension" in caplog.text
    assert "operating-system file skipped" in caplog.text and "3 row(s)" in caplog.text
    manifest = (tmp_path / "data/prepared/manifest.csv").read_text()
    assert f"{doubled[0].name}.jpg" in manifest and "Thumbs.db" not in manifest
    docs = "".join(p.read_text() for p in (tmp_path / "reports/validate").rglob("*.html"))
    assert "operating-system file skipped" in docs and "repeats its extension" in docs


def test_other_unreadable_files_still_fail_by_name_next_to_litter(tree, tmp_path, monkeypatch):
    (tree / "query" / "Thumbs.db").write_bytes(b"thumbs")
    bad = first(tree, "query")
    bad = bad.rename(bad.with_name(bad.name + ".png"))
    message, metrics = run_validation(tree, tmp_path, monkeypatch)
    assert metrics["success"] is False and metrics["ignored_files"] == 1 and metrics["rejected_files"] == 1
    assert bad.name in message and "unexpected extension '.png'" in message and "Thumbs.db" not in message
