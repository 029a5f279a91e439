"""`python -m pipeline.search`: ranking, the embedding cache, the PNG strip, user errors, MLflow model URIs.

Real models and images throughout: a random-init network (retrieval quality is not the point, the
arithmetic is) over the tiny synthetic gallery at 32×16.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image, ImageOps

from dsfnet.checkpoint import load_checkpoint, save_checkpoint
from dsfnet.data import ImageRecord, SyntheticConfig, generate_synthetic
from dsfnet.data.images import ImageLimits
from dsfnet.features import extract_features
from dsfnet.models import ModelConfig, build_model
from dsfnet.visualize import BORDER, THUMB
from pipeline.search import CACHE_DIRNAME, QueryError, Searcher, main
from pipeline.serving import log_reid_model

HEIGHT, WIDTH = 32, 16


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(checkpoint, gallery folder, query folder), built once: the tests copy what they modify."""
    root = tmp_path_factory.mktemp("search")
    torch.manual_seed(0)
    ckpt = root / "model.pt"
    save_checkpoint(ckpt, build_model(ModelConfig()), ModelConfig(), height=HEIGHT, width=WIDTH)
    generate_synthetic(root / "data", SyntheticConfig(profile="tiny", height=HEIGHT, width=WIDTH), progress=False)
    return ckpt, root / "data/bounding_box_test", root / "data/query"


@pytest.fixture
def gallery(assets, tmp_path) -> Path:
    """A private copy of the gallery, so the default cache (inside it) and added files stay per test."""
    return Path(shutil.copytree(assets[1], tmp_path / "gallery"))


def jpgs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg"))


def test_self_query_is_rank_one_and_scores_are_the_cosine_similarities(assets, tmp_path):
    ckpt, gallery_dir, _ = assets
    searcher = Searcher(ckpt).index(gallery_dir, cache_dir=tmp_path / "cache")
    assert searcher.paths == jpgs(gallery_dir)  # every image, sorted (junk boxes included: no labels here)
    query = searcher.paths[7]

    matches = searcher.search(query, k=10)

    assert len(matches) == 10
    assert matches[0].path == query and matches[0].score == pytest.approx(1.0, abs=1e-4)
    scores = [m.score for m in matches]
    assert scores == sorted(scores, reverse=True)
    model, _ = load_checkpoint(ckpt)
    records = [ImageRecord(str(p), 0, 0) for p in searcher.paths]
    features = extract_features(model, records, HEIGHT, WIDTH, batch_size=searcher.batch_size, progress=False)
    np.testing.assert_array_equal(searcher.embeddings, features)  # the evaluate stage's embeddings, bit for bit
    cosine = features @ features[searcher.paths.index(query)]
    for path, score in matches:
        assert score == pytest.approx(float(cosine[searcher.paths.index(path)]), abs=1e-4)
    top = [searcher.paths[i] for i in np.argsort(-cosine, kind="stable")[:10]]
    assert {m.path for m in matches[1:]} == set(top[1:])  # exact search: no better image left out
    assert len(searcher.search(query, k=1000)) == len(searcher.paths)  # k beyond the gallery: all of it


def test_cache_embeds_only_new_or_changed_images(assets, gallery, tmp_path):
    ckpt, _, query_dir = assets
    n = len(jpgs(gallery))
    first = Searcher(ckpt).index(gallery)
    cache = gallery / CACHE_DIRNAME
    assert first.embedded == n and len(list(cache.glob("*.npy"))) == n

    second = Searcher(ckpt).index(gallery)
    assert second.embedded == 0 and second.paths == first.paths  # the cache folder is not indexed
    np.testing.assert_array_equal(second.embeddings, first.embeddings)

    # one new image, in a subfolder and with an upper-case suffix: found, and the only one embedded
    (gallery / "new").mkdir()
    added = gallery / "new/extra.PNG"
    Image.open(jpgs(query_dir)[0]).save(added)
    third = Searcher(ckpt).index(gallery)
    assert third.embedded == 1 and added in third.paths and len(third.paths) == n + 1
    assert third.search(added, k=1)[0].path == added

    # a changed file is re-embedded (the key is its bytes, not its name); another model shares nothing
    changed = jpgs(gallery)[0]
    Image.open(jpgs(query_dir)[1]).save(changed)
    assert Searcher(ckpt).index(gallery).embedded == 1
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    save_checkpoint(other, build_model(ModelConfig()), ModelConfig(), height=HEIGHT, width=WIDTH)
    assert Searcher(other).index(gallery).embedded == n + 1


def test_unreadable_gallery_image_is_skipped_with_a_warning(assets, gallery, caplog):
    broken = gallery / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    searcher = Searcher(assets[0]).index(gallery)
    assert broken not in searcher.paths and len(searcher.paths) == len(jpgs(gallery)) - 1
    assert [p for p, _ in searcher.skipped] == [broken]
    assert str(broken) in caplog.text


def thumbnail(path: Path) -> np.ndarray:
    """The crop as the strip should show it: fitted into THUMB, grey bands around it."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.pad(image.convert("RGB"), THUMB, color=(200, 200, 200)))


def test_cli_prints_the_ranking_and_writes_the_png_strip(assets, gallery, tmp_path, capsys):
    ckpt, _, query_dir = assets
    query = jpgs(query_dir)[0]  # not in the gallery: its tile differs from every match's
    out = tmp_path / "strip.png"

    code = main(["--model", str(ckpt), "--gallery", str(gallery), "--query", str(query), "--top-k", "4",
                 "--png", str(out), "--cache", str(tmp_path / "cache")])

    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"query: {query}" and len(lines) == 2 + 4
    ranks, scores, paths = zip(*(line.split() for line in lines[2:]), strict=True)
    assert ranks == ("1", "2", "3", "4") and list(scores) == sorted(scores, key=float, reverse=True)
    expected = Searcher(ckpt).index(gallery, cache_dir=tmp_path / "cache").search(query, k=4)
    assert list(paths) == [str(m.path) for m in expected]
    assert not (gallery / CACHE_DIRNAME).exists()  # --cache was honoured

    with Image.open(out) as image:
        assert image.format == "PNG"
        strip = np.asarray(image.convert("RGB"))
    shown = [query, *map(Path, paths)]  # what a reader expects: the query, then the matches best first
    tile_w = strip.shape[1] // len(shown)
    assert strip.shape[1] == len(shown) * tile_w and tile_w < strip.shape[0]  # N+1 equal tiles side by side
    for i, path in enumerate(shown):
        tile = strip[:, i * tile_w : (i + 1) * tile_w]
        np.testing.assert_array_equal(tile[BORDER : BORDER + THUMB[1], BORDER : BORDER + THUMB[0]],
                                      thumbnail(path), err_msg=f"tile {i} should show {path}")


def test_images_over_the_servers_limits_are_refused_as_the_server_refuses_them(assets, gallery, caplog):
    big = gallery / "big.png"
    Image.new("RGB", (64, 64), (90, 20, 20)).save(big)
    searcher = Searcher(assets[0])
    searcher.limits = ImageLimits(max_pixels=32 * 32)  # the served model's `max_pixels`, scaled down
    searcher.index(gallery, cache_dir=gallery.parent / "cache")
    assert big not in searcher.paths and searcher.skipped == [(big, "64×64 pixels, over the 1,024 pixel limit")]
    with pytest.raises(QueryError, match=r"cannot read query image .*big\.png: 64×64 pixels, over the 1,024"):
        searcher.embed_query(big)


def test_undecodable_query_fails_cleanly_naming_the_file(assets, tmp_path, capsys):
    bad = tmp_path / "garbage.jpg"
    bad.write_bytes(b"\x00\x01garbage bytes, not an image")
    code = main(["--model", str(assets[0]), "--gallery", str(assets[1]), "--query", str(bad),
                 "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "Traceback" not in err


@pytest.mark.parametrize("case", ["missing model", "not a checkpoint", "empty gallery", "missing gallery"])
def test_user_errors_exit_non_zero_with_a_message(assets, tmp_path, capsys, case):
    ckpt, gallery_dir, query_dir = assets
    (tmp_path / "empty/sub").mkdir(parents=True)
    (tmp_path / "empty/sub/notes.txt").write_text("no images here")
    (tmp_path / "fake.pt").write_bytes(b"not a checkpoint")
    model, gallery, culprit = {
        "missing model": (tmp_path / "nope.pt", gallery_dir, "nope.pt"),
        "not a checkpoint": (tmp_path / "fake.pt", gallery_dir, "fake.pt"),
        "empty gallery": (ckpt, tmp_path / "empty", "no images"),
        "missing gallery": (ckpt, tmp_path / "absent", "absent"),
    }[case]
    code = main(["--model", str(model), "--gallery", str(gallery), "--query", str(jpgs(query_dir)[0]),
                 "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code != 0 and culprit in err and "Traceback" not in err


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A private sqlite store via MLFLOW_TRACKING_URI; MLflow's process-wide URIs are restored afterwards.

    Runs in tmp_path: a sqlite store keeps artifacts in ./mlruns, which must not land in the project.
    """
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)  # else an earlier test's set_tracking_uri wins
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


def test_mlflow_model_uri_searches_like_the_checkpoint_file(assets, tmp_path, mlflow_store, monkeypatch, capsys):
    ckpt, gallery_dir, query_dir = assets
    with mlflow.start_run():  # as pipeline/stages/register.py logs it, with test-time flip switched on
        log_reid_model(ckpt, flip=True, registered_model_name="dsfnet-reid")
    MlflowClient().set_registered_model_alias("dsfnet-reid", "champion", "1")
    query = jpgs(query_dir)[0]

    def results(model_ref, cache: str, flip: bool | None = None) -> tuple[Searcher, list]:
        searcher = Searcher(model_ref, flip=flip).index(gallery_dir, cache_dir=tmp_path / cache)
        return searcher, searcher.search(query, k=8)

    by_uri, uri_matches = results("models:/dsfnet-reid/1", "uri")
    by_file, file_matches = results(ckpt, "file", flip=True)
    assert by_uri.flip and by_uri.model_id == by_file.model_id  # the very same checkpoint bytes
    assert by_uri.embedded == by_file.embedded == len(by_file.paths)  # separate caches: both really embedded
    assert [m.path for m in uri_matches] == [m.path for m in file_matches]
    np.testing.assert_allclose([m.score for m in uri_matches], [m.score for m in file_matches], atol=1e-6)
    # the same URI with flip off is the plain checkpoint search (extract_features' embeddings)
    _, plain_uri = results("models:/dsfnet-reid/1", "uri-plain", flip=False)
    _, plain_file = results(ckpt, "file-plain")
    assert [m.path for m in plain_uri] == [m.path for m in plain_file]
    np.testing.assert_allclose([m.score for m in plain_uri], [m.score for m in plain_file], atol=1e-6)
    assert not np.allclose([m.score for m in plain_uri], [m.score for m in file_matches], atol=1e-6)

    code = main(["--model", "models:/dsfnet-reid@champion", "--gallery", str(gallery_dir), "--query", str(query),
                 "--top-k", "8", "--cache", str(tmp_path / "file")])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and [line.split()[2] for line in out[2:]] == [str(m.path) for m in file_matches]

    code = main(["--model", "models:/no-such-model/1", "--gallery", str(gallery_dir), "--query", str(query),
                 "--cache", str(tmp_path / "file")])
    err = capsys.readouterr().err
    assert code != 0 and "models:/no-such-model/1" in err and "Traceback" not in err

    # no MLFLOW_TRACKING_URI: the store is params.yaml's `mlflow.tracking_uri`, else ./mlflow.db, as for the stages
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / "mlflow.db").rename(tmp_path / "registry.db")
    args = ["--model", "models:/dsfnet-reid/1", "--gallery", str(gallery_dir), "--query", str(query),
            "--top-k", "8", "--cache", str(tmp_path / "file")]
    assert main(args) == 2 and "no MLflow store at mlflow.db" in capsys.readouterr().err
    (tmp_path / "params.yaml").write_text("mlflow:\n  tracking_uri: sqlite:///registry.db\n")
    assert main(args) == 0
    assert [line.split()[2] for line in capsys.readouterr().out.strip().splitlines()[2:]] == [
        str(m.path) for m in file_matches]
