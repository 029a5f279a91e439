import dataclasses

import pytest

from dsfnet.config import SCNetConfig
from pipeline.params import ParamsError, load_params, params_from_dict


def test_repository_params_load_with_types():
    params = load_params("params.yaml")
    assert params.dataset.name == "synthetic"
    assert isinstance(params.train.lr, float) and params.train.lr == pytest.approx(3.5e-4)
    assert isinstance(params.train.weight_decay, float)
    assert params.cluster.k1 == 30 and params.cluster.k2 == 6
    assert params.model.pretrained is None


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 5e-4\n")  # YAML 1.1 reads this as a string
    assert load_params(path).train.lr == pytest.approx(5e-4)


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ParamsError, match=r"unknown key train\.epoch \(did you mean train\.epochs\?\)"):
        params_from_dict({"train": {"epoch": 3}})
    with pytest.raises(ParamsError) as error:
        params_from_dict({"dsfnet": {"scnet": {"lamda_hard": 0.5}}})
    listed = str(error.value).split("valid keys: ")[1].split(", ")
    assert listed == [f"dsfnet.scnet.{f.name}" for f in dataclasses.fields(SCNetConfig)]


def test_wrong_type_names_the_dotted_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("cluster:\n  min_samples: four\n")
    with pytest.raises(ParamsError, match=r"params\.yaml: cluster\.min_samples: expected int, got 'four'"):
        load_params(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match="nope.yaml does not exist"):
        load_params(tmp_path / "nope.yaml")
