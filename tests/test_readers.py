"""The MSMT17, PersonX, VeRi-776 and folder readers on tiny trees with real-format names.

Expected (pid, camid) pairs are what torchreid / cluster-contrast-reid produce for the same names with
relabel=False (raw pids), so models and metrics stay comparable with published numbers.
"""

from pathlib import Path

import pytest
from PIL import Image

from dsfnet.data import DatasetError, available_datasets, load_dataset, read_manifest, write_manifest
from dsfnet.data.market1501 import MARKET_SCHEME, read_split
from dsfnet.data.records import UNLABELLED


def _image(path: Path, colour=(30, 120, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 32), colour).save(path)
    return path


def _text(path: Path, text: str = "not an image\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _ids(records) -> list[tuple[int, int]]:
    return [(r.pid, r.camid) for r in records]



def _reason(dataset, file_name: str) -> str:
    """Why the reader rejected `file_name` (fails if it did not)."""
    reasons = [why for path, why in dataset.rejected if Path(path).name == file_name]
    assert reasons, f"{file_name} was not rejected: {dataset.rejected}"
    return reasons[0]

def test_new_readers_are_registered():
    assert {"msmt17", "personx", "veri776", "folder", "market1501", "synthetic"} <= set(available_datasets())


# ---------------------------------------------------------------- shared Market-style split scan


def test_split_scan_rejects_other_extensions_counts_litter_and_skips_hidden_and_folders(tmp_path):
    _image(tmp_path / "0002_c1s1_000451_03.jpg")
    _image(tmp_path / "0002_c2s1_000451_03.png")
    _text(tmp_path / "Thumbs.db")
    _text(tmp_path / ".DS_Store")
    _text(tmp_path / "desktop.ini")
    _text(tmp_path / "._0002_c1s1_000451_03.jpg")  # AppleDouble: a .jpg name that is not an image
    _text(tmp_path / ".hidden_note")
    _text(tmp_path / "notes.txt")
    (tmp_path / "sub").mkdir()
    rejected: list[tuple[str, str]] = []
    ignored: list[tuple[str, str]] = []
    records = read_split(tmp_path, MARKET_SCHEME, rejected, ignored=ignored)
    assert [(Path(r.path).name, r.pid, r.camid) for r in records] == [("0002_c1s1_000451_03.jpg", 2, 0)]
    assert [(Path(p).name, why) for p, why in rejected] == [
        ("0002_c2s1_000451_03.png", "unexpected extension '.png', expected '.jpg'"),
        ("notes.txt", "unexpected extension '.txt', expected '.jpg'"),
    ]
    assert sorted(Path(p).name for p, _ in ignored) == [".DS_Store", "._0002_c1s1_000451_03.jpg", "Thumbs.db",
                                                         "desktop.ini"]
    assert all(why.startswith("operating-system file") for _, why in ignored)


def test_only_a_doubled_extension_counts_as_repeated():
    from dsfnet.data.market1501 import repeats_extension

    assert repeats_extension("1488_c1s6_023021_00.jpg.jpg", ".jpg")
    assert not repeats_extension("1488_c1s6_023021_00.jpg", ".jpg")
    assert not repeats_extension("README", "")  # no extension at all is not a repeated one


def test_market_reads_repeated_extensions_as_the_reference_loaders_do(tmp_path):
    """Market-1501 as distributed: 24 official query/gallery images are named `….jpg.jpg`."""
    _image(tmp_path / "bounding_box_train" / "0002_c1s1_000451_03.jpg")
    _image(tmp_path / "query" / "1488_c1s6_023021_00.jpg.jpg")
    _image(tmp_path / "bounding_box_test" / "1488_c3s3_071344_00.jpg.jpg")
    _image(tmp_path / "bounding_box_test" / "0000_c2s3_071344_00.jpg")
    _image(tmp_path / "bounding_box_test" / "1488_c4s3_000001_00.jpg.png")  # one extension too many is still refused
    _text(tmp_path / "query" / "Thumbs.db")
    dataset = load_dataset("market1501", tmp_path)
    # torchreid / cluster-contrast: re.compile(r'([-\d]+)_c(\d)').search(name) -> raw pid, camera - 1
    assert [(Path(r.path).name, r.pid, r.camid) for r in dataset.query] == [("1488_c1s6_023021_00.jpg.jpg", 1488, 0)]
    assert _ids(dataset.gallery) == [(0, 1), (1488, 2)]
    assert [Path(p).name for p, _ in dataset.rejected] == ["1488_c4s3_000001_00.jpg.png"]
    assert [Path(p).name for p, _ in dataset.ignored] == ["Thumbs.db"]


def test_split_scan_names_the_folder_it_misses(tmp_path):
    with pytest.raises(DatasetError, match="absent.*Market-1501 layout"):
        read_split(tmp_path / "absent", MARKET_SCHEME, [])


# ---------------------------------------------------------------- PersonX


def _personx_tree(root: Path) -> None:
    for name in ("0001_c3s1_000001_00.jpg", "0001_c12s1_000101_00.jpg", "-1_c4s1_000201_00.jpg"):
        _image(root / "bounding_box_train" / name)
    _image(root / "query" / "0007_c8s1_000301_00.jpg")
    for name in ("0007_c4s1_000401_00.jpg", "0007_c10s1_000501_00.jpg", "0007_c11s1_000601_00.jpg",
                 "0000_c12s1_000701_00.jpg"):
        _image(root / "bounding_box_test" / name)


def test_personx_maps_its_six_sparse_cameras_in_order(tmp_path):
    _personx_tree(tmp_path / "PersonX")
    dataset = load_dataset("personx", tmp_path)  # the archive's sub-folder is found
    assert dataset.name == "personx" and dataset.root == tmp_path / "PersonX"
    assert _ids(dataset.train) == [(1, 5), (1, 0)]  # sorted by name: c12 before c3; junk -1 dropped
    assert _ids(dataset.query) == [(7, 2)]
    # cameras 3,4,8,10,11,12 -> 0..5; pid 0 kept (only -1 is junk)
    assert _ids(dataset.gallery) == [(0, 5), (7, 3), (7, 4), (7, 1)]
    assert dataset.num_cameras == 6 and dataset.rejected == []


@pytest.mark.parametrize("camera", [1, 5, 13])
def test_personx_camera_outside_its_set_is_named(tmp_path, camera):
    _personx_tree(tmp_path)
    _image(tmp_path / "query" / f"0009_c{camera}s1_000001_00.jpg")
    dataset = load_dataset("personx", tmp_path)  # bad names are collected for validation, not raised one by one
    assert _reason(dataset, f"0009_c{camera}s1_000001_00.jpg") == \
        f"file name '0009_c{camera}s1_000001_00.jpg': camera {camera} is not one of 3, 4, 8, 10, 11, 12"
    assert (9, camera) not in _ids(dataset.query)


# ---------------------------------------------------------------- VeRi-776


def _veri_tree(root: Path) -> None:
    for name in ("0001_c001_00016450_0.jpg", "0001_c019_00017085_1.jpg", "0776_c020_00099990_0.jpg"):
        _image(root / "image_train" / name)
    _image(root / "image_query" / "0002_c002_00030600_0.jpg")
    for name in ("0002_c020_00030875_0.jpg", "0002_c011_00084255_1.jpg"):
        _image(root / "image_test" / name)


def test_veri776_maps_cameras_1_to_20_and_drops_junk(tmp_path):
    _veri_tree(tmp_path)
    _image(tmp_path / "image_test" / "-1_c003_00000001_0.jpg")
    _text(tmp_path / "image_test" / "Thumbs.db")
    _text(tmp_path / "image_test" / "list.txt")
    dataset = load_dataset("veri776", tmp_path)
    assert _ids(dataset.train) == [(1, 0), (1, 18), (776, 19)]
    assert _ids(dataset.query) == [(2, 1)]
    assert _ids(dataset.gallery) == [(2, 10), (2, 19)]
    assert [Path(p).name for p, _ in dataset.rejected] == ["list.txt"]
    assert [Path(p).name for p, _ in dataset.ignored] == ["Thumbs.db"]


def test_veri776_camera_21_and_two_digit_cameras_are_named(tmp_path):
    _veri_tree(tmp_path)
    _image(tmp_path / "image_train" / "0003_c021_00000001_0.jpg")
    _image(tmp_path / "image_query" / "0003_c21_00000001_0.jpg")
    dataset = load_dataset("veri776", tmp_path)
    assert "camera 21 is outside 1..20" in _reason(dataset, "0003_c021_00000001_0.jpg")
    assert "does not follow" in _reason(dataset, "0003_c21_00000001_0.jpg")
    assert all(pid != 3 for pid, _ in _ids(dataset.train + dataset.query))


def test_veri776_missing_folder_is_named(tmp_path):
    _veri_tree(tmp_path)
    for path in (tmp_path / "image_query").iterdir():
        path.unlink()
    (tmp_path / "image_query").rmdir()
    with pytest.raises(DatasetError, match=r"image_query.*VeRi-776 layout"):
        load_dataset("veri776", tmp_path)


# ---------------------------------------------------------------- MSMT17, raw release


TRAIN_LIST = ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0000/0000_001_15_0303afternoon_0100_1.jpg 0",
              "1040/1040_004_07_0303noon_1155_2.jpg 1040"]
VAL_LIST = ["0001/0001_000_05_0303noon_0020_0.jpg 1"]
QUERY_LIST = ["0000/0000_000_03_0113morning_0004_0.jpg 0"]
GALLERY_LIST = ["0000/0000_003_15_0113noon_0707_1.jpg 0", "3059/3059_010_12_0113afternoon_0990_0.jpg 3059"]


def _msmt_raw(base: Path, train_dir: str = "train", test_dir: str = "test", query=None, gallery=None) -> None:
    lists = {"train": TRAIN_LIST, "val": VAL_LIST, "query": query or QUERY_LIST, "gallery": gallery or GALLERY_LIST}
    for split, lines in lists.items():
        _text(base / f"list_{split}.txt", "".join(f"{line}\n" for line in lines))
        images = base / (train_dir if split in ("train", "val") else test_dir)
        for line in lines:
            _image(images / line.split()[0])


def test_msmt17_raw_v1_train_is_train_plus_val_with_pids_as_listed(tmp_path):
    base = tmp_path / "MSMT17_V1"
    _msmt_raw(base)
    dataset = load_dataset("msmt17", tmp_path)
    assert dataset.name == "msmt17" and dataset.root == base
    # torchreid: camid = int(name.split('_')[2]) - 1; pid 0 is a real identity; camera 15 -> 14
    assert _ids(dataset.train) == [(0, 0), (0, 14), (1040, 6), (1, 4)]  # list_train then list_val, in file order
    assert dataset.train[0].path == str(base / "train" / "0000" / "0000_000_01_0303morning_0015_0.jpg")
    assert dataset.train[3].path == str(base / "train" / "0001" / "0001_000_05_0303noon_0020_0.jpg")
    assert _ids(dataset.query) == [(0, 2)]
    assert dataset.query[0].path == str(base / "test" / "0000" / "0000_000_03_0113morning_0004_0.jpg")
    assert _ids(dataset.gallery) == [(0, 14), (3059, 11)]
    assert dataset.rejected == []


def test_msmt17_raw_v2_uses_mask_folders_and_root_itself_may_be_the_release(tmp_path):
    base = tmp_path / "MSMT17_V2"
    _msmt_raw(base, train_dir="mask_train_v2", test_dir="mask_test_v2")
    for root in (tmp_path, base):
        dataset = load_dataset("msmt17", root)
        assert len(dataset.train) == 4 and dataset.root == base
        assert dataset.train[0].path.startswith(str(base / "mask_train_v2"))
        assert dataset.gallery[1].path.startswith(str(base / "mask_test_v2"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0000/0000_001_02_0113morning_0005_0.jpg", r"list_query\.txt line 2: expected '<relative path> <pid>'"),
        ("0000/0000_001_02_0113morning_0005_0.jpg zero", r"list_query\.txt line 2: pid 'zero'"),
        ("0000/0000_001_16_0113morning_0005_0.jpg 0", r"list_query\.txt line 2: camera 16 .* outside 1\.\.15"),
        ("0000/0000-001-02.jpg 0", r"list_query\.txt line 2: cannot read the camera"),
    ],
)
def test_msmt17_bad_list_line_is_named(tmp_path, line, message):
    _msmt_raw(tmp_path)
    (tmp_path / "list_query.txt").write_text(QUERY_LIST[0] + "\n" + line + "\n")
    with pytest.raises(DatasetError, match=message):
        load_dataset("msmt17", tmp_path)


def test_msmt17_listed_image_that_does_not_exist_is_named(tmp_path):
    _msmt_raw(tmp_path)
    with (tmp_path / "list_gallery.txt").open("a") as handle:
        handle.write("0005/0005_000_04_0113noon_0001_0.jpg 5\n")
    with pytest.raises(DatasetError, match=r"list_gallery\.txt line 3: image .*0005_000_04_0113noon_0001_0\.jpg "
                                           r"does not exist"):
        load_dataset("msmt17", tmp_path)


def test_msmt17_missing_list_or_image_folder_is_named(tmp_path):
    _msmt_raw(tmp_path)
    (tmp_path / "list_val.txt").unlink()
    with pytest.raises(DatasetError, match=r"list_val\.txt does not exist"):
        load_dataset("msmt17", tmp_path)
    other = tmp_path / "other"
    _text(other / "list_train.txt", "")
    with pytest.raises(DatasetError, match="none of the image folders train / mask_train_v2"):
        load_dataset("msmt17", other)


# ---------------------------------------------------------------- MSMT17, re-packed Market-style


def test_msmt17_repacked_layout_drops_junk_keeps_pid_0_and_maps_15_cameras(tmp_path):
    base = tmp_path / "MSMT17_V1"
    for name in ("0000_c1_0000.jpg", "0000_c15_0001.jpg", "-1_c3_0002.jpg", "1040_c7_0003.jpg"):
        _image(base / "bounding_box_train" / name)
    _image(base / "query" / "0007_c2_0000.jpg")
    for name in ("0000_c4_0003.jpg", "0007_c15_0004.jpg", "-1_c5_0005.jpg"):
        _image(base / "bounding_box_test" / name)
    dataset = load_dataset("msmt17", tmp_path)
    assert dataset.root == base
    # cluster-contrast: only -1 dropped, camid = camera - 1; sorted by name, so c15 sorts before c1_
    assert _ids(dataset.train) == [(0, 14), (0, 0), (1040, 6)]
    assert _ids(dataset.query) == [(7, 1)]
    assert _ids(dataset.gallery) == [(0, 3), (7, 14)]


@pytest.mark.parametrize("name", ["0007_c16_0000.jpg", "0007_c0_0000.jpg"])
def test_msmt17_repacked_camera_outside_1_to_15_is_named(tmp_path, name):
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        (tmp_path / folder).mkdir()
    _image(tmp_path / "bounding_box_test" / name)
    dataset = load_dataset("msmt17", tmp_path)
    assert "outside 1..15" in _reason(dataset, name) and dataset.gallery == []


def test_msmt17_unknown_layout_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="no MSMT17 found.*list_train.txt.*bounding_box_train"):
        load_dataset("msmt17", tmp_path)


# ---------------------------------------------------------------- folder tree and CSV manifest


def _folder_tree(root: Path) -> None:
    _image(root / "train" / "3" / "cam3" / "a.jpg")
    _image(root / "train" / "3" / "north_gate" / "b.png")
    _image(root / "train" / "12" / "cam10" / "c.JPG")
    _image(root / "query" / "5" / "cam3" / "d.jpeg")
    _image(root / "gallery" / "5" / "north_gate" / "e.jpg")
    _image(root / "gallery" / "0" / "cam10" / "f.jpg")
    _image(root / "gallery" / "-1" / "side_door" / "junk.jpg")  # junk: dropped, and its camera gets no camid


def test_folder_tree_maps_camera_names_to_sorted_camids_across_splits(tmp_path):
    _folder_tree(tmp_path)
    _text(tmp_path / "gallery" / "notes.txt")
    _text(tmp_path / "gallery" / "5" / "stray.jpg")
    _text(tmp_path / "gallery" / "5" / "cam3" / "readme.md")
    _image(tmp_path / "gallery" / "5" / "cam3" / "deeper" / "g.jpg")
    _text(tmp_path / "gallery" / "5" / "cam3" / ".hidden.txt")
    _text(tmp_path / "gallery" / "5" / "cam3" / "Thumbs.db")
    _text(tmp_path / "train" / "desktop.ini")
    dataset = load_dataset("folder", tmp_path)
    assert sorted(str(Path(p).relative_to(tmp_path)) for p, _ in dataset.ignored) == [
        "gallery/5/cam3/Thumbs.db", "train/desktop.ini"]
    camid = {"cam10": 0, "cam3": 1, "north_gate": 2}  # sorted names, contiguous, same in every split
    by_name = {Path(r.path).name: (r.pid, r.camid) for split in dataset.splits().values() for r in split}
    assert by_name == {"a.jpg": (3, camid["cam3"]), "b.png": (3, camid["north_gate"]),
                       "c.JPG": (12, camid["cam10"]), "d.jpeg": (5, camid["cam3"]),
                       "e.jpg": (5, camid["north_gate"]), "f.jpg": (0, camid["cam10"])}
    assert [Path(r.path).name for r in dataset.train] == ["c.JPG", "a.jpg", "b.png"]  # sorted folder walk
    assert dataset.query[0].path == str(tmp_path / "query" / "5" / "cam3" / "d.jpeg")
    assert dataset.num_cameras == 3
    rejected = {str(Path(p).relative_to(tmp_path)): why for p, why in dataset.rejected}
    assert set(rejected) == {"gallery/notes.txt", "gallery/5/stray.jpg", "gallery/5/cam3/readme.md",
                             "gallery/5/cam3/deeper/g.jpg"}
    assert "unexpected extension '.md'" in rejected["gallery/5/cam3/readme.md"]
    assert "nested below the camera folder" in rejected["gallery/5/cam3/deeper/g.jpg"]


def test_folder_tree_train_is_optional_but_query_and_gallery_are_named(tmp_path):
    _folder_tree(tmp_path)
    for path in sorted((tmp_path / "train").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (tmp_path / "train").rmdir()
    assert load_dataset("folder", tmp_path).train == []
    (tmp_path / "query" / "5" / "cam3" / "d.jpeg").rename(tmp_path / "d.jpeg")
    for folder in ("query/5/cam3", "query/5", "query"):
        (tmp_path / folder).rmdir()
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'query'}.*does not exist"):
        load_dataset("folder", tmp_path)


def test_folder_tree_person_folder_must_be_an_integer(tmp_path):
    _folder_tree(tmp_path)
    _image(tmp_path / "query" / "alice" / "cam3" / "x.jpg")
    with pytest.raises(DatasetError, match=r"query/alice.*integer pid"):
        load_dataset("folder", tmp_path)


def test_folder_csv_resolves_relative_paths_against_its_folder(tmp_path):
    data = tmp_path / "data"
    _image(data / "crops" / "a.jpg")
    _image(data / "crops" / "b.jpg")
    absolute = _image(tmp_path / "elsewhere" / "c.jpg")
    csv = _text(data / "mine.csv", "path,pid,camid,split\n"
                                   "crops/a.jpg,4,0,train\n"
                                   "crops/b.jpg,4,2,query\n"
                                   f"{absolute},4,1,gallery\n"
                                   "crops/missing-but-junk.jpg,-1,1,gallery\n")
    dataset = load_dataset("folder", csv)
    assert dataset.name == "folder" and dataset.root == data
    assert [(r.path, r.pid, r.camid) for r in dataset.train] == [(str(data / "crops" / "a.jpg"), 4, 0)]
    assert [(r.path, r.pid, r.camid) for r in dataset.query] == [(str(data / "crops" / "b.jpg"), 4, 2)]
    assert [(r.path, r.pid, r.camid) for r in dataset.gallery] == [(str(absolute), 4, 1)]


def test_folder_csv_bad_rows_are_named(tmp_path):
    csv = _text(tmp_path / "mine.csv", "path,pid,camid,split\ncrops/absent.jpg,4,0,train\n")
    with pytest.raises(DatasetError, match=r"mine\.csv.*'crops/absent\.jpg'.*does not exist"):
        load_dataset("folder", csv)
    csv.write_text("path,pid,camid,split\ncrops/a.jpg,4,0,validation\n")
    with pytest.raises(DatasetError, match=r"mine\.csv line 2"):
        load_dataset("folder", csv)


# ---------------------------------------------------------------- own data: unlabelled train, no test split


def _test_splits(root: Path) -> None:
    _image(root / "query" / "5" / "gate" / "q.jpg")
    _image(root / "gallery" / "5" / "lobby" / "g.jpg")


def test_flat_train_is_unlabelled_and_one_camera_of_its_own(tmp_path):
    for name in ("b.jpg", "a.png", "c.JPG"):
        _image(tmp_path / "train" / name)
    _text(tmp_path / "train" / "notes.txt")
    _test_splits(tmp_path)
    dataset = load_dataset("folder", tmp_path)
    assert [(Path(r.path).name, r.pid, r.camid) for r in dataset.train] == [
        ("a.png", UNLABELLED, 0), ("b.jpg", UNLABELLED, 0), ("c.JPG", UNLABELLED, 0)]
    assert _ids(dataset.query) == [(5, 1)] and _ids(dataset.gallery) == [(5, 2)]  # gate 1, lobby 2: other cameras
    assert not dataset.train_labelled and dataset.has_test_split
    assert "unexpected extension '.txt'" in _reason(dataset, "notes.txt")
    assert "train: 3 images, unlabelled" in dataset.summary()


def test_camera_folders_of_unlabelled_train_share_camids_with_the_test_splits(tmp_path):
    _image(tmp_path / "train" / "lobby" / "x.jpg")
    _image(tmp_path / "train" / "gate" / "y.jpg")
    _image(tmp_path / "train" / "gate" / "deeper" / "z.jpg")
    _test_splits(tmp_path)
    dataset = load_dataset("folder", tmp_path)
    assert [(Path(r.path).name, r.pid, r.camid) for r in dataset.train] == [("y.jpg", UNLABELLED, 0),
                                                                          ("x.jpg", UNLABELLED, 1)]
    assert _ids(dataset.query) == [(5, 0)] and _ids(dataset.gallery) == [(5, 1)]
    assert "nested below the camera folder" in _reason(dataset, "z.jpg")


def test_train_without_a_test_split_reads_and_half_a_test_split_is_named(tmp_path):
    _image(tmp_path / "train" / "cam1" / "x.jpg")
    dataset = load_dataset("folder", tmp_path)
    assert len(dataset.train) == 1 and dataset.query == [] and dataset.gallery == []
    assert not dataset.has_test_split
    _image(tmp_path / "query" / "5" / "gate" / "q.jpg")
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'gallery'} .*does not exist.*both query/ and gallery/"):
        load_dataset("folder", tmp_path)


def test_mixed_or_empty_train_folders_are_errors_that_name_the_folder(tmp_path):
    _image(tmp_path / "train" / "3" / "cam1" / "x.jpg")  # a pid folder ...
    _image(tmp_path / "train" / "cam2" / "y.jpg")  # ... next to a camera folder
    with pytest.raises(DatasetError, match=r"mixes camera folders.*train/cam2.*person folders.*train/3"):
        load_dataset("folder", tmp_path)
    (tmp_path / "train" / "cam2" / "y.jpg").rename(tmp_path / "train" / "y.jpg")
    (tmp_path / "train" / "cam2").rmdir()
    with pytest.raises(DatasetError, match=r"mixes images \(y\.jpg\) with folders \(3/\)"):
        load_dataset("folder", tmp_path)
    empty = tmp_path / "empty"
    _text(empty / "train" / "cam1" / "readme.md")
    with pytest.raises(DatasetError, match=rf"train folder {empty / 'train'} holds no images"):
        load_dataset("folder", empty)
    (empty / "other").mkdir()
    with pytest.raises(DatasetError, match=r"neither train/ nor query/ and gallery/"):
        load_dataset("folder", empty / "other")


def test_csv_train_rows_may_leave_pid_empty_and_round_trip(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _image(tmp_path / name)
    csv = _text(tmp_path / "mine.csv", "path,pid,camid,split\na.jpg,,0,train\nb.jpg,7,1,query\nc.jpg,7,0,gallery\n")
    dataset = load_dataset("folder", csv)
    assert _ids(dataset.train) == [(UNLABELLED, 0)] and _ids(dataset.query) == [(7, 1)]
    write_manifest(dataset, tmp_path / "copy.csv")
    assert (tmp_path / "copy.csv").read_text().splitlines()[1] == f"{tmp_path / 'a.jpg'},,0,train"
    assert _ids(read_manifest(tmp_path / "copy.csv").train) == [(UNLABELLED, 0)]
    csv.write_text("path,pid,camid,split\na.jpg,,0,train\nb.jpg,,1,query\n")
    with pytest.raises(DatasetError, match=r"mine\.csv line 3.*pid may be empty in train rows only"):
        load_dataset("folder", csv)
    csv.write_text("path,pid,camid,split\nb.jpg,-2,1,query\n")
    with pytest.raises(DatasetError, match=r"pids must be >= -1"):
        load_dataset("folder", csv)
