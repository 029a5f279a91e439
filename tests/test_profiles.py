"""Profiles rewrite a copy of the repository's params.yaml: the values change, its comments and layout do not."""

import re
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.params import load_params
from pipeline.profiles import (
    PROFILES_DIR,
    ProfileError,
    apply_profile,
    available_profiles,
    load_profile,
    main,
    plan_profile,
)

REPO_PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"
PAPER_PROFILES = ["market1501", "msmt17", "personx", "veri776"]


@pytest.fixture
def params_file(tmp_path) -> Path:
    """A copy of the repository's params.yaml: the tests never touch the real one."""
    path = tmp_path / "params.yaml"
    shutil.copyfile(REPO_PARAMS, path)
    return path


def comments(text: str) -> list[str]:
    """Every comment in order: whole comment lines and the inline comments after values."""
    return [match.group(0) for line in text.splitlines() if (match := re.search(r"(?:^|\s)#.*$", line))]


def layout(text: str) -> list[str]:
    """Each line reduced to its indentation and key (blank and comment lines kept as they are)."""
    return [line if not line.strip() or line.lstrip().startswith("#") else line.split(":")[0] for line in
            text.splitlines()]


def bad_profile(tmp_path: Path, text: str) -> Path:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "bad.yaml").write_text("# a broken profile\n" + text)
    return profiles


def test_repository_has_the_profiles():
    assert set(available_profiles()) >= {"cpu-default", *PAPER_PROFILES}
    assert PROFILES_DIR.is_dir()


def test_market1501_sets_the_paper_values(params_file):
    changes = apply_profile("market1501", params_file)
    params = load_params(params_file)
    assert params.dataset.name == "market1501" and params.dataset.root is None  # root is the user's to pass
    assert (params.model.arch, params.model.last_stride, params.model.pooling) == ("resnet50", 1, "avg")
    train = params.train
    assert (train.epochs, train.iters, train.batch_size, train.num_instances) == (50, 200, 256, 16)
    assert (train.height, train.width, train.workers, train.feature_batch_size) == (256, 128, 4, 256)
    assert train.lr == pytest.approx(3.5e-4) and train.weight_decay == pytest.approx(5e-4)
    assert (params.cluster.k1, params.cluster.k2, params.cluster.eps, params.cluster.min_samples) == (30, 6, 0.6, 4)
    assert params.dsfnet.finet.enabled and params.dsfnet.scnet.enabled and params.dsfnet.ddo.enabled
    assert params.evaluate.batch_size == 256
    assert params.synthetic == load_params(REPO_PARAMS).synthetic  # keys the profile does not set stay
    assert changes["cluster.eps"] == (0.5, 0.6) and changes["model.arch"] == ("resnet18", "resnet50")
    assert "train.lr" not in changes  # unchanged values are not reported (nor rewritten)


@pytest.mark.parametrize("name", ["cpu-default", *PAPER_PROFILES])
def test_every_profile_applies_and_holds_its_values(params_file, name):
    apply_profile(name, params_file)
    params = load_params(params_file)
    for key, value in load_profile(name).items():
        typed = params
        for part in key.split("."):
            typed = getattr(typed, part)
        assert typed == (float(value) if isinstance(typed, float) else value), key
    assert not [p for p in params_file.parent.iterdir() if p.name.startswith(".params.yaml")]  # no temp file left


def test_dataset_specific_values():
    assert load_profile("msmt17")["train.iters"] == 400 and load_profile("msmt17")["cluster.eps"] == 0.7
    veri = load_profile("veri776")
    assert (veri["dataset.name"], veri["train.iters"], veri["train.height"], veri["train.width"]) == (
        "veri776", 400, 224, 224)
    assert load_profile("personx")["dataset.name"] == "personx"


@pytest.mark.parametrize("name", PAPER_PROFILES)
def test_comments_key_order_and_blank_lines_survive(params_file, name):
    before = params_file.read_text()
    apply_profile(name, params_file)
    after = params_file.read_text()
    assert before != after
    assert comments(after) == comments(before)
    assert [line for line in after.splitlines() if line.lstrip().startswith("#")] == [
        line for line in before.splitlines() if line.lstrip().startswith("#")]
    assert layout(after) == layout(before)


def test_cpu_default_matches_the_repository_params():
    """cpu-default is params.yaml's own values: a change to one must be made in the other too."""
    drift = [(s.key, s.current, s.value) for s in plan_profile("cpu-default", REPO_PARAMS) if s.changes]
    assert drift == []


def test_cpu_default_after_a_paper_profile_restores_the_file(params_file, tmp_path):
    original = params_file.read_bytes()
    (tmp_path / "market").mkdir()
    apply_profile("market1501", params_file, root=tmp_path / "market")
    assert params_file.read_bytes() != original
    apply_profile("cpu-default", params_file)
    assert yaml.safe_load(params_file.read_bytes()) == yaml.safe_load(original)
    assert params_file.read_bytes() == original  # inline comments went back to their columns too


def test_root_inside_the_project_is_written_relative(params_file, tmp_path):
    (tmp_path / "data" / "market").mkdir(parents=True)
    changes = apply_profile("market1501", params_file, root=tmp_path / "data" / "market")
    assert load_params(params_file).dataset.root == "data/market"
    assert changes["dataset.root"] == (None, "data/market")


def test_root_outside_the_project_is_written_absolute(tmp_path):
    project, data = tmp_path / "project", tmp_path / "datasets" / "Market-1501 v15"
    project.mkdir()
    data.mkdir(parents=True)
    shutil.copyfile(REPO_PARAMS, project / "params.yaml")
    assert main(["apply", "personx", "--params", str(project / "params.yaml"), "--root", str(data)]) == 0
    params = load_params(project / "params.yaml")
    assert params.dataset.root == str(data) and params.dataset.name == "personx"


def test_apply_prints_the_changes_and_warns_without_pretrained_weights(params_file, capsys):
    assert main(["apply", "market1501", "--params", str(params_file)]) == 0
    out, err = capsys.readouterr()
    assert "train.epochs: 12 → 50" in out and "cluster.eps: 0.5 → 0.6" in out
    assert "model.pretrained" in err and "ImageNet" in err
    assert main(["apply", "cpu-default", "--params", str(params_file)]) == 0
    out, err = capsys.readouterr()
    assert "train.epochs: 50 → 12" in out and err == ""


def test_show_lists_the_keys_and_what_differs_without_writing(params_file, capsys):
    before = params_file.read_bytes()
    assert main(["show", "veri776", "--params", str(params_file)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"train\.height = 224 +\(now 64", out)
    assert re.search(r"train\.gamma = 0\.1 +\(same\)", out)
    assert params_file.read_bytes() == before


def test_list_names_each_profile_with_its_purpose(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ["cpu-default", *PAPER_PROFILES]:
        assert re.search(rf"^{name} +\S", out, re.MULTILINE)
    assert "MSMT17" in out


def test_unknown_profile_lists_the_available_ones(params_file, capsys):
    before = params_file.read_bytes()
    assert main(["apply", "market", "--params", str(params_file)]) == 2
    err = capsys.readouterr().err
    assert "unknown profile 'market'" in err and "market1501" in err and "cpu-default" in err
    assert len(err.strip().splitlines()) == 1
    assert params_file.read_bytes() == before


def test_typo_key_is_named_and_nothing_is_written(params_file, tmp_path, capsys):
    profiles = bad_profile(tmp_path, "model:\n  arch: resnet50\ntrain:\n  epoch: 50\n")
    before = params_file.read_bytes()
    assert main(["--profiles-dir", str(profiles), "apply", "bad", "--params", str(params_file)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "train.epoch " in err and "did you mean train.epochs" in err
    assert params_file.read_bytes() == before
    with pytest.raises(ProfileError, match=r"bad\.yaml: unknown key train\.epoch"):
        apply_profile("bad", params_file, profiles_dir=profiles)


@pytest.mark.parametrize("text, message", [
    ("train:\n  epochs: many\n", r"train\.epochs: expected int"),
    ("dsfnet:\n  finet:\n    num_parts: 4\n", r"dsfnet\.finet\.num_parts must be 2 or 3"),
    ("synthetic:\n  num_train_ids: 50\n", r"bad\.yaml sets synthetic\.num_train_ids, but .*params\.yaml does not hold"),
    ("train: 3\n", r"train: expected a mapping"),
])
def test_invalid_profile_values_are_refused(params_file, tmp_path, text, message):
    profiles = bad_profile(tmp_path, text)
    before = params_file.read_bytes()
    with pytest.raises(ProfileError, match=message):
        apply_profile("bad", params_file, profiles_dir=profiles)
    assert params_file.read_bytes() == before


def test_missing_root_is_an_error(params_file, tmp_path, capsys):
    before = params_file.read_bytes()
    assert main(["apply", "market1501", "--params", str(params_file), "--root", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "--root" in err and "nope" in err and len(err.strip().splitlines()) == 1
    assert params_file.read_bytes() == before


def test_missing_params_file_is_an_error(tmp_path, capsys):
    assert main(["apply", "market1501", "--params", str(tmp_path / "params.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_quoted_values_empty_values_and_inline_comments(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "dataset:\n"
        "  name: market1501\n"
        "  root:\n"
        "mlflow:\n"
        '  tracking_uri: "sqlite:///a #1.db"   # quoted, with a hash inside\n'
        "  experiment: dsfnet # short gap\n"
    )
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "p.yaml").write_text(
        "# test\nmlflow:\n  tracking_uri: sqlite:///b.db\n  experiment: a-much-longer-name\n"
    )
    (tmp_path / "d").mkdir()
    apply_profile("p", params, root=tmp_path / "d", profiles_dir=profiles)
    assert params.read_text().splitlines()[2:] == [
        "  root: d",
        "mlflow:",
        "  tracking_uri: sqlite:///b.db        # quoted, with a hash inside",  # the comment keeps its column
        "  experiment: a-much-longer-name # short gap",
    ]
    loaded = load_params(params)
    assert (loaded.dataset.root, loaded.mlflow.tracking_uri) == ("d", "sqlite:///b.db")
