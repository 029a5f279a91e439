"""The CUHK03 manifest writer of the real-image bench, on generated stand-in files (never real images)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from dsfnet.cluster import knn_choice
from dsfnet.config import DSFNetConfig
from dsfnet.data import load_dataset
from pipeline.profiles import profile_params
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


def fake_market_train(root: Path) -> None:
    """bounding_box_train of 5 identities (pids 2, 7, 9, 11, 13), each seen by cameras 1 and 3, plus litter."""
    folder = root / "bounding_box_train"
    folder.mkdir(parents=True)
    for pid in (2, 7, 9, 11, 13):
        for camera, frame in ((1, 100), (1, 200), (3, 150), (3, 250), (3, 350)):
            name = f"{pid:04d}_c{camera}s1_{frame:06d}_00.jpg"
            Image.new("RGB", (16, 32), (pid * 15, camera * 40, 90)).save(folder / name)
    (folder / "Thumbs.db").write_bytes(b"thumbs")
    for split in ("query", "bounding_box_test"):  # the official test split: never read by the validation split
        (root / split).mkdir()
        Image.new("RGB", (16, 32)).save(root / split / "0500_c2s1_000001_00.jpg")


def test_market_validation_split_holds_out_the_last_ids_one_query_per_camera(tmp_path):
    fake_market_train(tmp_path / "market")
    out = tmp_path / "splits" / "market_val.csv"
    done = subprocess.run([sys.executable, "bench/real/market_split.py", "--root", str(tmp_path / "market"),
                           "--out", str(out), "--val-ids", "2"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          check=True)
    assert "3 train ids, 2 validation ids; 15 train, 4 query, 6 gallery" in done.stdout
    data = load_dataset("folder", out)
    assert sorted({r.pid for r in data.train}) == [2, 7, 9]
    assert sorted((r.pid, r.camid, Path(r.path).name) for r in data.query) == [
        (11, 0, "0011_c1s1_000100_00.jpg"), (11, 2, "0011_c3s1_000150_00.jpg"),
        (13, 0, "0013_c1s1_000100_00.jpg"), (13, 2, "0013_c3s1_000150_00.jpg")]
    assert sorted(Path(r.path).name for r in data.gallery if r.pid == 11) == [
        "0011_c1s1_000200_00.jpg", "0011_c3s1_000250_00.jpg", "0011_c3s1_000350_00.jpg"]
    assert all("bounding_box_train" in r.path for split in data.splits().values() for r in split)
    assert not out.read_text().count(str(tmp_path))  # relative paths


def test_market_validation_split_refuses_holding_out_every_identity(tmp_path):
    fake_market_train(tmp_path / "market")
    done = subprocess.run([sys.executable, "bench/real/market_split.py", "--root", str(tmp_path / "market"),
                           "--out", str(tmp_path / "val.csv"), "--val-ids", "5"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "--val-ids 5: the train split has 5 identities; hold out 1..4" in done.stderr
    assert not (tmp_path / "val.csv").exists()


def test_bench_real_rows_carry_dataset_and_protocol_and_resume(tmp_path):
    """bench_real.py on a generated Market-layout folder (the official protocol's route), tiny budget."""
    from dsfnet.data import SyntheticConfig, generate_synthetic

    generate_synthetic(tmp_path / "market", SyntheticConfig(profile="tiny", height=64, width=32), progress=False)
    out = tmp_path / "rows.json"
    command = [sys.executable, "bench/bench_real.py", "--dataset", "market1501", "--root", str(tmp_path / "market"),
               "--protocol", "official", "--inits", "random", "--seeds", "5", "--variants", "untrained", "baseline",
               "--epochs", "1", "--iters", "2", "--size", "32x16", "--eps", "0.7", "--out", str(out)]
    first = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    rows = json.loads(out.read_text())
    assert [(r["variant"], r["seed"], r["dataset"], r["protocol"], r["init"]) for r in rows] == [
        ("untrained", 5, "market1501", "official", "random"), ("baseline", 5, "market1501", "official", "random")]
    assert all(0 <= r["mAP"] <= 100 for r in rows) and rows[1]["settings"].startswith("e1x2 32x16 eps0.7")
    assert [r["knn_backend"] for r in rows] == ["torch", "torch"]  # what `auto` searched with on this CPU
    assert "baseline seed 5" in first.stdout
    again = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert "seed 5:" not in again.stdout and len(json.loads(out.read_text())) == 2  # finished rows are skipped
    validation = subprocess.run([*command[:-2], "--protocol", "validation", "--variants", "untrained",
                                 "--out", str(out)], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert "untrained seed 5" in validation.stdout  # another protocol is another row
    assert [r["protocol"] for r in json.loads(out.read_text())] == ["official", "official", "validation"]


def test_variants_of_a_profile_switch_parts_and_keep_the_profiles_part_settings(monkeypatch):
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "bench"))
    from bench_real import variant_method

    params = profile_params("cpu-imagenet")
    assert params.model.arch == "mobilenet_v2" and params.model.pretrained == "imagenet"
    base = params.dsfnet
    on = {name: {p for p in ("finet", "scnet", "ddo") if getattr(variant_method(name, base), p).enabled}
          for name in ("baseline", "full", "full-finet", "full-scnet", "scnet", "finet+ddo")}
    profile_parts = {p for p in ("finet", "scnet", "ddo") if getattr(base, p).enabled}
    assert on["baseline"] == set() and on["full"] == profile_parts
    assert on["full-finet"] == profile_parts - {"finet"} and on["full-scnet"] == profile_parts - {"scnet"}
    assert on["scnet"] == {"scnet"} and on["finet+ddo"] == {"finet", "ddo"}
    assert variant_method("scnet", base).scnet.split == base.scnet.split  # the profile's part settings stay
    with pytest.raises(SystemExit, match="variant 'full-bogus'"):
        variant_method("full-bogus", base)


def test_a_full_variant_with_every_part_off_is_shown_with_the_baselines_rows(monkeypatch):
    """A profile whose parts are all off trains `full` once, as the baseline; the table lists the row under both
    names (and the untrained row under its own), so `make bench-real` prints a full line, not a gap."""
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "bench"))
    from bench_ablation import enabled_parts
    from bench_real import labelled, variant_method

    base = profile_params("cpu-imagenet").dsfnet
    off = DSFNetConfig(*(replace(getattr(base, part), enabled=False) for part in ("finet", "scnet", "ddo")))
    methods = {"untrained": None, "baseline": variant_method("baseline", off), "full": variant_method("full", off)}
    baseline_row = {"variant": "baseline", "seed": 4, "mAP": 39.8, "method": enabled_parts(methods["baseline"])}
    untrained_row = {"variant": "untrained", "seed": 4, "mAP": 3.0, "method": None}
    shown = labelled([untrained_row, baseline_row], methods)
    assert [(r["variant"], r["mAP"]) for r in shown] == [("untrained", 3.0), ("baseline", 39.8), ("full", 39.8)]
    with_parts = {**methods, "full": variant_method("scnet+ddo", base)}  # parts on: the baseline row is not full
    assert [r["variant"] for r in labelled([baseline_row], with_parts)] == ["baseline"]


def test_a_row_written_before_a_new_switch_matches_the_switch_at_its_default(monkeypatch):
    """Rows store every part setting; one added later (e.g. ddo.base) is read at its default, so the finished
    rows of `make bench-real` are not trained again, and a non-default value is another row."""
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "bench"))
    from bench_ablation import enabled_parts, stored_parts
    from bench_real import row_key, variant_method

    method = variant_method("scnet+ddo", profile_params("cpu-imagenet").dsfnet)  # DDO on, whatever the profile has
    now = enabled_parts(method)
    older = {name: ({k: v for k, v in value.items() if k != "base"} if name == "ddo" else value)
             for name, value in now.items()}
    assert "base" not in older["ddo"] and stored_parts(older) == now
    row = {"init": "imagenet", "settings": "s", "method": older, "dataset": "d", "protocol": "official",
           "memory_format": "channels_last"}
    assert row_key(row) == ("imagenet", "s", now, "d", "official", "channels_last")
    other = enabled_parts(replace(method, ddo=replace(method.ddo, base="global")))
    assert stored_parts(older) != other and stored_parts(None) is None and stored_parts(older)["finet"] is False


def test_bench_speedup_runs_both_code_paths_and_resumes(tmp_path):
    out = tmp_path / "speedup.json"
    command = [sys.executable, "bench/bench_speedup.py", "--profile", "cpu-default", "--arch", "mobilenet_v2",
               "--synthetic", "tiny", "--epochs", "1", "--iters", "2", "--seeds", "1", "--out", str(out)]
    first = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    rows = json.loads(out.read_text())
    assert [(r["path"], r["arch"], r["channels_last"], r["runtime"]) for r in rows] == [
        ("old", "mobilenet_v2", False, "torch"), ("new", "mobilenet_v2", True, "torch")]  # 49 images: no export
    assert [r["knn_backend"] for r in rows] == ["faiss", "auto"]  # the old path keeps faiss's CPU kNN
    assert [r["knn_ran"] for r in rows] == ["faiss", "torch"]  # `auto` with no measurement here (conftest.py)
    for row in rows:
        assert row["minutes"] > 0 and row["eval_minutes"] > 0 and 0 <= row["mAP"] <= 100
        assert len(row["extract_s_per_epoch"]) == len(row["train_s_per_epoch"]) == 1
    assert "seed 1 old (channels-last False, torch, kNN faiss):" in first.stdout
    assert "new / old training time:" in first.stdout
    again = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert "seed 1" not in again.stdout and len(json.loads(out.read_text())) == 2  # finished rows are skipped
    profile_parts = [p for p in ("finet", "scnet", "ddo") if getattr(profile_params("cpu-default").dsfnet, p).enabled]
    assert [r["parts"] for r in rows] == [profile_parts] * 2
    other = subprocess.run([*command, "--parts", "finet", "--paths", "new"], cwd=PROJECT_ROOT, capture_output=True,
                           text=True, check=True)
    assert "seed 1 new" in other.stdout  # other parts are another row, not the profile's finished one
    assert [r["parts"] for r in json.loads(out.read_text())] == [profile_parts] * 2 + [["finet"]]
    before_the_knn_switch = [{k: v for k, v in r.items() if k != "knn_backend"} for r in json.loads(out.read_text())]
    out.write_text(json.dumps(before_the_knn_switch))
    rerun = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert "seed 1 new" in rerun.stdout and "seed 1 old" not in rerun.stdout  # such a new-path row is not reused
    # a machine where `python -m dsfnet.warmup` measured the symmetric search fastest: `auto` clusters with it
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / knn_choice.CHOICE_FILE).write_text(json.dumps(
        {"backend": "faiss", "self_search": "symmetric", "seconds": {"torch": 2.0, "faiss": 1.0, "symmetric": 0.7},
         "shape": [64, 8, 4], "machine": knn_choice.machine(), "measured_at": "2026-12-07T00:00:00Z"}))
    measured = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
                              env={**os.environ, "DSFNET_CACHE_DIR": str(tmp_path / "cache")})
    assert "seed 1 new (channels-last True, torch, kNN symmetric)" in measured.stdout
    assert "seed 1 old" not in measured.stdout
    assert json.loads(out.read_text())[-1]["knn_ran"] == "symmetric"


def test_the_table_gives_the_mean_and_the_sample_std_over_seeds(monkeypatch):
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "bench"))
    import statistics

    from bench_real import table

    row = {"init": "imagenet", "variant": "baseline", "rank1": 50.0, "purity": 0.45, "pair_f1": 0.2, "clusters": 300,
           "minutes": 10.0, "cross_camera_pair_recall_per_epoch": [0.1, 0.5]}
    rows = [dict(row, seed=seed, mAP=value) for seed, value in ((4, 27.25), (5, 26.98), (6, 28.01), (7, 99.0))]
    line = table(rows, ["imagenet"], ["baseline"], [4, 5, 6]).splitlines()[1]  # seed 7 is not asked for
    mean, std = statistics.mean([27.25, 26.98, 28.01]), statistics.stdev([27.25, 26.98, 28.01])
    assert f"{mean:6.2f} ± {std:<5.2f}" in line and "0.500" in line  # the last epoch's cross-camera recall
    assert line.endswith("4: 27.25 / 10.0, 5: 26.98 / 10.0, 6: 28.01 / 10.0")  # each seed's row, in seed order
    single = table(rows[:1], ["imagenet"], ["baseline"], [4]).splitlines()[1]
    assert "27.25 ± 0.00" in single


def test_an_untrained_row_is_evaluated_once_per_distinct_weights(monkeypatch):
    """ImageNet weights with no random layer give every seed the same network: its row is reused, not re-evaluated
    (1.3 min a seed on real Market); random weights differ by seed and each is evaluated."""
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "bench"))
    import bench_real
    import torch

    from dsfnet.config import ModelConfig, TrainConfig

    evaluated = []
    monkeypatch.setattr(bench_real, "retrieval", lambda model, data, config: evaluated.append(model) or (12.5, 30.0))
    random_init = ModelConfig(arch="resnet18")
    first = bench_real.untrained(None, random_init, 1, TrainConfig())
    second = bench_real.untrained(None, random_init, 2, TrainConfig(), [first])
    assert len(evaluated) == 2 and first["weights_sha256"] != second["weights_sha256"]
    assert "same_weights_as_seed" not in second

    def fixed_weights(config):  # stands in for pretrained weights: the same network whatever the seed
        torch.manual_seed(0)
        return torch.nn.Linear(4, 3)

    monkeypatch.setattr(bench_real, "build_model", fixed_weights)
    evaluated.clear()
    seed4 = bench_real.untrained(None, random_init, 4, TrainConfig(), [first, second])
    seed5 = bench_real.untrained(None, random_init, 5, TrainConfig(), [first, second, seed4])
    assert len(evaluated) == 1  # seed 5 found seed 4's weights
    assert seed5 == {**seed4, "seed": 5, "same_weights_as_seed": 4}
    assert bench_real.weights_digest(fixed_weights(None)) == seed4["weights_sha256"]


def test_cluster_probe_scores_the_profiles_ddo_part_pairs_on_one_checkpoint(tmp_path):
    """cluster_probe.py --ddo-part-pairs: one row per part_pairs and one with DDO off, on the checkpoint's features."""
    import numpy as np
    import torch

    from dsfnet.cluster.dbscan import camera_normalise, cluster_features
    from dsfnet.data import SyntheticConfig, generate_synthetic
    from dsfnet.features import extract_branches
    from dsfnet.models import build_model

    generate_synthetic(tmp_path / "market", SyntheticConfig(profile="tiny", height=64, width=32), progress=False)
    manifest = tmp_path / "val.csv"
    subprocess.run([sys.executable, "bench/real/market_split.py", "--root", str(tmp_path / "market"), "--out",
                    str(manifest), "--val-ids", "4"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    params = profile_params("cpu-default")
    assert params.dsfnet.ddo.enabled
    torch.manual_seed(0)
    model = build_model(params.model, params.dsfnet)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    done = subprocess.run([sys.executable, "bench/real/cluster_probe.py", "--manifest", str(manifest), "--profile",
                           "cpu-default", "--checkpoint", str(tmp_path / "model.pt"), "--ddo-part-pairs", "all",
                           "same_camera"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    rows = {line.split("  ")[0].strip(): line.split() for line in done.stdout.splitlines()
            if line.strip().startswith("DDO")}
    assert list(rows) == ["DDO part_pairs all", "DDO part_pairs same_camera", "DDO off"]
    # DDO off is the baseline's clustering of the camera-normalised global feature: recomputed here
    data = load_dataset("folder", manifest)
    camids = np.array([r.camid for r in data.train])
    branches = extract_branches(model, data.train, params.train.height, params.train.width, progress=False)
    expected = cluster_features(camera_normalise(branches["global"], camids), params.cluster, camids).labels
    assert rows["DDO off"][2:4] == [str(expected.max() + 1), str((expected < 0).sum())]
    refused = subprocess.run([sys.executable, "bench/real/cluster_probe.py", "--manifest", str(manifest),
                              "--ddo-part-pairs", "all"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert refused.returncode != 0 and "needs --profile" in refused.stderr
    ddo_off = subprocess.run([sys.executable, "bench/real/cluster_probe.py", "--manifest", str(manifest), "--profile",
                              "cpu-default", "--parts", "scnet", "--ddo-part-pairs", "all"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True)
    assert ddo_off.returncode != 0 and "DDO is off" in ddo_off.stderr and "--parts scnet ddo" in ddo_off.stderr
