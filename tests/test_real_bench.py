"""The CUHK03 manifest writer of the real-image bench, on generated stand-in files (never real images)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

from dsfnet.data import load_dataset
from tests.project import PROJECT_ROOT


def fake_cuhk03(folder: Path, ids: int) -> None:
    """`<pid4>_<idx2>.jpg` crops: identity p has images 00-02 (camera A) and 05-06 (camera B)."""
    folder.mkdir(parents=True)
    for pid in range(ids):
        for idx in (0, 1, 2, 5, 6):
            Image.new("RGB", (16, 32), (pid * 20 % 256, idx * 30, 90)).save(folder / f"{pid:04d}_{idx:02d}.jpg")
    (folder / "notes.txt").write_text("not an image")


def test_manifest_splits_identities_by_sorted_id_with_one_query_per_camera(tmp_path):
    images = tmp_path / "cuhk03" / "full"
    fake_cuhk03(images, ids=5)
    out = tmp_path / "cuhk03" / "manifest.csv"
    done = subprocess.run([sys.executable, "bench/real/cuhk03_manifest.py", "--images", str(images), "--out", str(out),
                           "--train-ids", "3"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert "5 identities, 15 train, 4 query, 6 gallery" in done.stdout
    data = load_dataset("folder", out)  # what bench_real.py and the pipeline's `folder` reader read
    assert sorted({r.pid for r in data.train}) == [1, 2, 3]  # 0000 → 1: pid 0 means distractor
    assert sorted({r.pid for r in data.query}) == [4, 5]
    assert sorted((r.pid, r.camid, Path(r.path).name) for r in data.query) == [
        (4, 0, "0003_00.jpg"), (4, 1, "0003_05.jpg"), (5, 0, "0004_00.jpg"), (5, 1, "0004_05.jpg")]
    assert {(r.pid, r.camid) for r in data.gallery} == {(4, 0), (4, 1), (5, 0), (5, 1)}
    assert {r.camid for r in data.train if Path(r.path).name.endswith(("_05.jpg", "_06.jpg"))} == {1}
    assert not out.read_text().count(str(tmp_path))  # paths are relative to the manifest: it travels with them
