import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsfnet.baselines import camera_confusion, colour_histogram_features
from dsfnet.data import (
    DatasetError,
    SyntheticConfig,
    generate_synthetic,
    load_dataset,
    parse_market_name,
    read_manifest,
    write_manifest,
)
from dsfnet.evaluation import compute_map_cmc, cosine_distance
from dsfnet.visualize import contact_sheet

TINY = SyntheticConfig(profile="tiny", num_train_ids=6, num_test_ids=5, num_cameras=4, cameras_per_id=3,
                       images_per_camera=3, num_distractors=3, num_junk=2, height=64, width=32, seed=7)


def _touch_jpg(path: Path, colour=(120, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 32), colour).save(path)


def test_market_reader_drops_junk_keeps_distractors_and_maps_cameras(tmp_path):
    root = tmp_path / "Market-1501-v15.09.15"
    for name in ("0002_c1s1_000451_03.jpg", "0002_c6s2_000801_01.jpg", "-1_c2s1_000001_00.jpg"):
        _touch_jpg(root / "bounding_box_train" / name)
    _touch_jpg(root / "query" / "0007_c3s1_001051_00.jpg")
    for name in ("0007_c1s1_001001_02.jpg", "0000_c5s1_000000_01.jpg", "-1_c4s1_000051_00.jpg"):
        _touch_jpg(root / "bounding_box_test" / name)
    dataset = load_dataset("market1501", tmp_path)  # the archive's own sub-folder is found
    assert [(r.pid, r.camid) for r in dataset.train] == [(2, 0), (2, 5)]
    assert [(r.pid, r.camid) for r in dataset.query] == [(7, 2)]
    assert sorted((r.pid, r.camid) for r in dataset.gallery) == [(0, 4), (7, 0)]


def test_market_reader_collects_malformed_files(tmp_path):
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        (tmp_path / folder).mkdir()
    _touch_jpg(tmp_path / "query" / "person7.jpg")
    _touch_jpg(tmp_path / "query" / "0007_c1s1_000001_00.png")
    dataset = load_dataset("market1501", tmp_path)  # every bad file is collected, for validation to report
    assert sorted((Path(p).name, why) for p, why in dataset.rejected) == [
        ("0007_c1s1_000001_00.png", "unexpected extension '.png', expected '.jpg'"),
        ("person7.jpg", "file name 'person7.jpg' does not follow PPPP_cCsS_FFFFFF_BB.jpg"),
    ]
    assert dataset.query == []


def test_unknown_dataset_and_missing_root_are_named(tmp_path):
    with pytest.raises(DatasetError, match=r"unknown dataset 'market1502'.*market1501"):
        load_dataset("market1502", tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("market1501", tmp_path / "absent")


def test_parse_market_name():
    assert parse_market_name("0123_c4s2_000151_01.jpg") == (123, 3)
    assert parse_market_name("-1_c1s1_000000_00.jpg") == (-1, 0)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return root, generate_synthetic(root, TINY, progress=False)


def test_synthetic_writes_market_layout_and_protocol(synthetic):
    root, dataset = synthetic
    train_ids = {r.pid for r in dataset.train}
    test_ids = {r.pid for r in dataset.query}
    assert train_ids == set(range(1, 7)) and test_ids == set(range(7, 12))
    for pid in train_ids:  # every identity: 2..cameras_per_id cameras, 2..images_per_camera images each
        cams = [r.camid for r in dataset.train if r.pid == pid]
        assert 2 <= len(set(cams)) <= 3 and all(2 <= cams.count(c) <= 3 for c in set(cams))
    for record in dataset.query:  # one query per identity per camera, each with a cross-camera match
        assert any(g.pid == record.pid and g.camid != record.camid for g in dataset.gallery)
    assert len({(r.pid, r.camid) for r in dataset.query}) == len(dataset.query)
    assert sum(r.pid == 0 for r in dataset.gallery) == 3  # distractors kept as negatives
    junk = list((root / "bounding_box_test").glob("-1_*.jpg"))
    assert len(junk) == 2 and all(r.pid != -1 for r in dataset.gallery)  # junk written, dropped at load
    reread = load_dataset("synthetic", root)
    assert reread.train == dataset.train
    with Image.open(dataset.train[0].path) as image:
        assert image.size == (32, 64)


def test_profiles_set_sizes_and_explicit_keys_override():
    assert SyntheticConfig(profile="market").resolved().num_train_ids == 750
    custom = SyntheticConfig(profile="default", num_cameras=8).resolved()
    assert custom.num_cameras == 8 and custom.num_train_ids == 100
    with pytest.raises(DatasetError, match="synthetic.profile"):
        SyntheticConfig(profile="huge").resolved()


def test_synthetic_is_hard_where_real_reid_is_hard(tmp_path):
    """Colour histograms retrieve poorly; cameras change a person more than identities differ in one camera."""
    config = SyntheticConfig(profile="default", num_train_ids=40, num_test_ids=40, num_distractors=20)
    dataset = generate_synthetic(tmp_path, config, progress=False)
    arrays = lambda rs: (np.array([r.pid for r in rs]), np.array([r.camid for r in rs]))  # noqa: E731
    (qp, qc), (gp, gc) = arrays(dataset.query), arrays(dataset.gallery)
    q, g = colour_histogram_features(dataset.query), colour_histogram_features(dataset.gallery)
    mean_ap, _ = compute_map_cmc(cosine_distance(q, g), qp, gp, qc, gc)
    assert mean_ap < 0.15  # measured 0.056 here; 0.023 on the full default profile
    tp, tc = arrays(dataset.train)
    assert camera_confusion(colour_histogram_features(dataset.train), tp, tc) > 0.4  # measured ~0.7


def test_contact_sheet_shows_identities_across_cameras(synthetic):
    _, dataset = synthetic
    sheet = contact_sheet(dataset.train, num_ids=3, per_id=4, thumb=(32, 64))
    assert sheet.size == (4 * 32, 3 * (64 + 14))  # a 14-pixel label line under each crop
    pixels = np.asarray(sheet)
    assert pixels[:64, :32].std() > 5  # a real image was pasted in the first cell


def test_synthetic_is_deterministic(synthetic, tmp_path):
    root, dataset = synthetic
    again = generate_synthetic(tmp_path, TINY, progress=False)
    digest = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    assert [digest(r.path) for r in again.train] == [digest(r.path) for r in dataset.train]


def test_synthetic_cameras_change_colour(synthetic):
    _, dataset = synthetic
    mean_by_camera = {}
    for record in dataset.train:
        with Image.open(record.path) as image:
            mean_by_camera.setdefault(record.camid, []).append(np.asarray(image, dtype=float).mean(axis=(0, 1)))
    means = np.array([np.mean(v, axis=0) for v in mean_by_camera.values()])
    assert np.ptp(means, axis=0).max() > 10  # camera casts move the average colour by > 10 levels


def test_manifest_round_trip(synthetic, tmp_path):
    _, dataset = synthetic
    write_manifest(dataset, tmp_path / "manifest.csv")
    back = read_manifest(tmp_path / "manifest.csv")
    assert back.train == dataset.train and back.query == dataset.query and back.gallery == dataset.gallery


def test_manifest_bad_row_is_named(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("path,pid,camid,split\na.jpg,1,0,train\nb.jpg,x,0,train\n")
    with pytest.raises(DatasetError, match="line 3"):
        read_manifest(path)
