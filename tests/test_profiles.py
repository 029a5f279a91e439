"""Profiles rewrite a copy of the repository's params.yaml: the values change, its comments and layout do not."""

import re
import shutil
from pathlib import Path

import pytest

from pipeline.params import Params, flatten, load_params
from pipeline.profiles import (
    PROFILES_DIR,
    ProfileError,
    apply_profile,
    available_profiles,
    describe,
    load_profile,
    main,
    plan_profile,
    render_profile,
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


def reset_keys() -> set[str]:
    """The keys every apply resets to the default first: those any profile sets, and the two local paths."""
    return set().union(*(load_profile(name) for name in available_profiles())) | {"dataset.root", "model.pretrained"}


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
    assert (train.height, train.width, train.workers, train.feature_batch_size) == (256, 128, 8, 256)
    assert train.bn_group == 64  # BN over 64 images, as on each of the published runs' 4 GPUs
    assert train.lr == pytest.approx(3.5e-4) and train.weight_decay == pytest.approx(5e-4)
    assert (params.cluster.k1, params.cluster.k2, params.cluster.eps, params.cluster.min_samples) == (30, 6, 0.6, 4)
    # every DSFNet part off: none earned its place on real Market images (validation split and official protocol)
    assert not (params.dsfnet.finet.enabled or params.dsfnet.scnet.enabled or params.dsfnet.ddo.enabled)
    assert not params.dsfnet.scnet.split  # the real-image settings stay for whoever turns SCNet on
    assert params.evaluate.batch_size == 256
    assert params.synthetic == load_params(REPO_PARAMS).synthetic  # keys the profile does not set stay
    assert changes["cluster.eps"] == (0.5, 0.6) and changes["model.arch"] == ("resnet18", "resnet50")
    assert "train.lr" not in changes  # unchanged values are not reported (nor rewritten)


@pytest.mark.parametrize("name", ["cpu-default", *PAPER_PROFILES])
def test_every_profile_applies_and_holds_its_values(params_file, name):
    before = flatten(load_params(params_file))
    apply_profile(name, params_file)
    after, own, defaults = flatten(load_params(params_file)), load_profile(name), flatten(Params())
    for key in after:  # its own values; every other profile key at its default; the rest as it was
        expected = own[key] if key in own else defaults[key] if key in reset_keys() else before[key]
        assert after[key] == (float(expected) if isinstance(after[key], float) else expected), key
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


def test_cpu_default_holds_no_copy_of_the_defaults():
    """The defaults live in the dataclasses: cpu-default sets at most the keys where it differs from them."""
    defaults = flatten(Params())
    assert [key for key, value in load_profile("cpu-default").items() if defaults[key] == value] == []
    assert "CPU default" in describe("cpu-default")
    settings = plan_profile("cpu-default", REPO_PARAMS)
    assert {s.key for s in settings} == reset_keys()
    assert all(s.value == defaults[s.key] for s in settings)


def test_a_profile_of_comments_only_sets_nothing(tmp_path, params_file):
    profiles = bad_profile(tmp_path, "\n# nothing else\n")
    assert load_profile("bad", profiles) == {}
    settings = plan_profile("bad", params_file, profiles_dir=profiles)  # no profile there sets a key
    assert [(s.key, s.value, s.changes) for s in settings] == [("dataset.root", None, False),
                                                               ("model.pretrained", None, False)]


def test_msmt17_then_cpu_default_leaves_every_key_at_its_default(params_file):
    before = flatten(load_params(params_file))
    apply_profile("msmt17", params_file)
    assert flatten(load_params(params_file)) != before
    apply_profile("cpu-default", params_file)
    defaults, after = flatten(Params()), flatten(load_params(params_file))
    assert after == {key: defaults[key] if key in reset_keys() else before[key] for key in before}
    assert comments(params_file.read_text()) == comments(REPO_PARAMS.read_text())
    assert layout(params_file.read_text()) == layout(REPO_PARAMS.read_text())


def test_profiles_are_order_independent(params_file, tmp_path):
    alone = tmp_path / "alone" / "params.yaml"
    alone.parent.mkdir()
    shutil.copyfile(REPO_PARAMS, alone)
    apply_profile("market1501", alone)
    (tmp_path / "msmt").mkdir()
    apply_profile("msmt17", params_file, root=tmp_path / "msmt")
    apply_profile("market1501", params_file)  # resets msmt17's iters, eps and dataset.root too
    assert params_file.read_bytes() == alone.read_bytes()
    assert load_params(params_file).dataset.root is None


def test_cpu_default_after_a_paper_profile_restores_the_file(params_file, tmp_path):
    apply_profile("cpu-default", params_file)  # a no-op once params.yaml holds the dataclass defaults
    original = params_file.read_bytes()
    (tmp_path / "market").mkdir()
    apply_profile("market1501", params_file, root=tmp_path / "market")
    assert params_file.read_bytes() != original
    apply_profile("cpu-default", params_file)
    assert params_file.read_bytes() == original  # inline comments went back to their columns too


def test_floats_keep_the_profile_s_spelling(params_file, tmp_path):
    profiles = bad_profile(tmp_path, "train:\n  lr: 3.0e-4\n  weight_decay: 1e-4\n")
    text, changes = render_profile("bad", params_file, profiles_dir=profiles)  # not 0.0003, not 0.0001
    assert "  lr: 3.0e-4\n" in text and "  weight_decay: 1e-4\n" in text
    assert load_params(params_file).train.lr != 3e-4  # render does not write
    apply_profile("bad", params_file, profiles_dir=profiles)
    assert params_file.read_text() == text
    assert (load_params(params_file).train.lr, load_params(params_file).train.weight_decay) == (3e-4, 1e-4)


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
    assert f"train.epochs: 50 → {Params().train.epochs}" in out and err == ""


def test_show_lists_the_keys_and_what_differs_without_writing(params_file, capsys):
    before = params_file.read_bytes()
    assert main(["show", "veri776", "--params", str(params_file)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"train\.height = 224 +\(now 64", out)
    assert re.search(r"train\.gamma = 0\.1 +\(same\)", out)
    assert params_file.read_bytes() == before
    assert main(["show", "cpu-default", "--params", str(params_file)]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"model\.arch = {Params().model.arch} +\(", out) and "cluster.eps = " in out
    assert re.search(rf"\d+ of {len(reset_keys())} values differ", out)


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
    ("- train\n", r"bad\.yaml: expected a mapping"),
    ("train: {epochs: [\n", r"bad\.yaml is not valid YAML"),
])
def test_invalid_profile_values_are_refused(params_file, tmp_path, text, message):
    profiles = bad_profile(tmp_path, text)
    before = params_file.read_bytes()
    with pytest.raises(ProfileError, match=message):
        apply_profile("bad", params_file, profiles_dir=profiles)
    assert params_file.read_bytes() == before


def test_a_broken_profile_next_to_a_good_one_is_refused(params_file, tmp_path):
    """Every apply resets the keys all profiles set, so a broken one is named even when applying another."""
    profiles = bad_profile(tmp_path, "cluster:\n  eps: wide\n")
    shutil.copyfile(PROFILES_DIR / "market1501.yaml", profiles / "market1501.yaml")
    before = params_file.read_bytes()
    with pytest.raises(ProfileError, match=r"bad\.yaml: cluster\.eps: expected float"):
        apply_profile("market1501", params_file, profiles_dir=profiles)
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
        '  tracking_uri: "sqlite:///b.db"      # quoted, with a hash inside',  # quotes and comment column kept
        "  experiment: a-much-longer-name # short gap",
    ]
    loaded = load_params(params)
    assert (loaded.dataset.root, loaded.mlflow.tracking_uri) == ("d", "sqlite:///b.db")
