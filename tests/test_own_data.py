"""Own data as users have it, through the real stages in a git + DVC repo (MLflow sqlite, tiny profile):
unlabelled training crops (flat, no cameras; a CSV with empty pids), with and without a labelled test split,
the register decision for a model nobody could evaluate, and a dataset root outside the project that changes.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from dsfnet.data import SyntheticConfig, generate_synthetic, parse_market_name
from dsfnet.visualize import LINE_H, THUMB
from tests.project import dvc, make_project, stale, write_params
from tests.test_serving import images_body, invoke, served

pytestmark = pytest.mark.e2e


def read(project: Path, name: str) -> dict:
    return json.loads((project / "metrics" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generated")
    generate_synthetic(root, SyntheticConfig(profile="tiny", height=64, width=32), progress=False)
    return root


def write_test_split(generated: Path, own: Path) -> None:
    """query/<pid>/cam<N>/ and gallery/<pid>/cam<N>/ from the generated Market layout (distractors dropped)."""
    for split, folder in (("query", "query"), ("gallery", "bounding_box_test")):
        for image in sorted((generated / folder).glob("*.jpg")):
            pid, camid = parse_market_name(image.name)
            if pid > 0:
                target = own / split / str(pid) / f"cam{camid}" / image.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(image, target)


def own_store() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def repro(project: Path, *args: str) -> subprocess.CompletedProcess:
    result = dvc(project, "repro", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def flat_run(generated, tmp_path_factory):
    """A pile of unlabelled crops from no known camera (train/<image>) next to a labelled test set whose
    cameras the training crops do not name, in a folder outside the project."""
    base = tmp_path_factory.mktemp("flat")
    own = base / "crops"
    (own / "train").mkdir(parents=True)
    for image in sorted((generated / "bounding_box_train").glob("*.jpg")):
        shutil.copy(image, own / "train" / image.name)
    write_test_split(generated, own)
    project = make_project(base / "project", dataset={"name": "folder", "root": str(own)})
    return project, own, repro(project)


def test_unlabelled_flat_crops_train_and_evaluate_on_a_labelled_test_set(flat_run, caplog):
    project, own, result = flat_run
    validation = read(project, "validate")
    assert validation["success"] is True and validation["train_ids"] == 0
    assert validation["train_unlabelled_images"] == len(list((own / "train").iterdir()))
    assert validation["train_cameras"] == 1 and validation["test_split"] is True
    manifest = pd.read_csv(project / "data/prepared/manifest.csv")
    train = manifest[manifest["split"] == "train"]
    assert train["pid"].isna().all() and (train["camid"] == 0).all()  # one camera of its own
    assert set(manifest.loc[manifest["split"] != "train", "camid"]) == {1, 2, 3}
    assert "cluster.camera_norm skipped: every training image comes from one camera" in result.stdout + result.stderr
    with Image.open(project / "reports/prepare/contact_sheet.png") as sheet:  # unlabelled: a row per camera
        assert sheet.size == (8 * THUMB[0], THUMB[1] + LINE_H)
        assert len(np.unique(np.asarray(sheet.convert("L")))) > 10  # crops, not a blank page
    epochs = pd.read_csv(project / "reports/train/epochs.csv")
    assert epochs["purity"].isna().all()  # no identities: no ground-truth scores
    monitor = read(project, "monitor")
    assert monitor["passed"] is True and monitor.get("purity") is None
    evaluation = read(project, "evaluate")
    assert evaluation["evaluated"] is True and evaluation["valid_queries"] > 0 and 0 <= evaluation["mAP"] <= 100
    register = read(project, "register")
    assert register["registered"] is True and register["alias"] == "champion" and register["evaluated"] is True


def test_a_changed_image_under_an_external_root_reruns_prepare_and_validate(flat_run):
    project, own, _ = flat_run
    assert stale(project) == {}
    retrain = subprocess.run([sys.executable, "-m", "pipeline.retrain_if_changed", "--dry-run"], cwd=project,
                             capture_output=True, text=True, env=own_store())
    assert retrain.returncode == 0 and "up to date" in retrain.stdout, retrain.stdout + retrain.stderr
    broken = sorted((own / "train").iterdir())[3]
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated JPEG, same name
    retrain = subprocess.run([sys.executable, "-m", "pipeline.retrain_if_changed", "--dry-run"], cwd=project,
                             capture_output=True, text=True, env=own_store())
    assert "changed since the last run" in retrain.stdout and "prepare" in retrain.stdout, retrain.stdout
    result = dvc(project, "repro", "validate")
    assert result.returncode != 0
    assert "Running stage 'validate'" in result.stdout and broken.name in result.stderr + result.stdout
    assert "does not decode" in result.stderr + result.stdout


@pytest.fixture(scope="module")
def unevaluated_run(generated, tmp_path_factory):
    """A CSV whose train rows leave pid empty, two cameras, and no query or gallery at all."""
    base = tmp_path_factory.mktemp("csv")
    rows = ["path,pid,camid,split"]
    for image in sorted((generated / "bounding_box_train").glob("*.jpg")):
        rows.append(f"{Path('..') / 'generated' / image.name},,{parse_market_name(image.name)[1] % 2},train")
        (base / "generated").mkdir(exist_ok=True)
        shutil.copy(image, base / "generated" / image.name)
    (base / "crops").mkdir()
    (base / "crops" / "mine.csv").write_text("\n".join(rows) + "\n")
    project = make_project(base / "project", dataset={"name": "folder", "root": str(base / "crops" / "mine.csv")})
    return project, repro(project)


def test_without_a_test_split_evaluate_says_so_and_register_refuses_by_default(unevaluated_run):
    project, _ = unevaluated_run
    assert read(project, "validate")["success"] is True and read(project, "validate")["test_split"] is False
    evaluation = read(project, "evaluate")
    assert evaluation["evaluated"] is False and "no labelled query and gallery" in evaluation["reason"]
    assert (project / "reports/evaluate/README.txt").read_text().startswith("not evaluated")
    register = read(project, "register")
    assert register["registered"] is False and register["evaluated"] is False
    assert "not evaluated" in register["reason"] and "register.require_evaluation: false" in register["reason"]


def test_with_require_evaluation_off_the_unevaluated_model_is_registered_served_and_searched(unevaluated_run,
                                                                                             tmp_path):
    project, _ = unevaluated_run
    write_params(project, dataset={"name": "folder", "root": str(project.parent / "crops" / "mine.csv")},
                 register={"require_evaluation": False})
    result = repro(project)
    assert "Running stage 'train'" not in result.stdout  # only register depends on the setting
    register = read(project, "register")
    assert register["registered"] is True and register["alias"] == "champion" and register["mAP"] is None
    assert "no version on folder has been evaluated" in register["reason"]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    version = MlflowClient().get_model_version_by_alias("dsfnet-reid", "champion")
    assert version.tags["evaluated"] == "false" and "mAP" not in version.tags
    # the champion behind a real `mlflow models serve` embeds an image
    image = sorted((project.parent / "generated").iterdir())[0]
    with served(project, f"sqlite:///{project / 'mlflow.db'}") as url:
        reply = invoke(url, images_body([base64.b64encode(image.read_bytes()).decode()]))
    assert reply.status_code == 200, reply.text
    embedding = np.asarray(reply.json()["predictions"], dtype=np.float32)
    assert embedding.shape[0] == 1 and np.linalg.norm(embedding[0]) == pytest.approx(1.0, abs=1e-4)
    # search over a gallery folder with the champion
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for other in sorted((project.parent / "generated").iterdir())[:6]:
        shutil.copy(other, gallery / other.name)
    search = subprocess.run([sys.executable, "-m", "pipeline.search", "--model", "models:/dsfnet-reid@champion",
                             "--gallery", str(gallery), "--query", str(image), "--top-k", "3",
                             "--png", str(tmp_path / "strip.png")], cwd=project, capture_output=True, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"})
    assert search.returncode == 0, search.stdout + search.stderr
    first = search.stdout.splitlines()[2].split()
    assert first[0] == "1" and first[-1] == str(gallery / image.name)  # the query's own copy ranks first
    assert (tmp_path / "strip.png").stat().st_size > 0
