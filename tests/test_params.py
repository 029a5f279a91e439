import dataclasses
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from dsfnet.config import SCNetConfig
from pipeline.params import Params, ParamsError, flatten, load_params, params_from_dict


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


def test_params_yaml_spells_out_exactly_the_dataclass_defaults():
    """One source of defaults: params.yaml holds every key (DVC tracks them) with the dataclasses' values;
    it leaves out only optional overrides whose default is None (synthetic.num_train_ids, ...)."""
    shipped = flatten(YAML(typ="safe").load(Path("params.yaml").read_text()))
    defaults = flatten(Params())
    assert set(shipped) <= set(defaults)
    assert {key for key in defaults if key not in shipped and defaults[key] is not None} == set()
    assert {key: (value, defaults[key]) for key, value in shipped.items() if value != defaults[key]} == {}


def test_derived_network_settings_are_not_user_keys():
    with pytest.raises(ParamsError, match=r"unknown key model\.num_parts"):
        params_from_dict({"model": {"num_parts": 2}})


def test_empty_section_and_wrong_shape_are_named():
    with pytest.raises(ParamsError, match=r"^train: expected a mapping, got \[1, 2\]"):
        params_from_dict({"train": [1, 2]})
    with pytest.raises(ParamsError, match=r"^dsfnet\.finet\.enabled: expected bool, got 'yes'"):
        params_from_dict({"dsfnet": {"finet": {"enabled": "yes"}}})


def test_out_of_range_method_setting_is_a_params_error():
    with pytest.raises(ParamsError, match=r"dsfnet\.finet\.num_parts must be 2 or 3, got 4"):
        params_from_dict({"dsfnet": {"finet": {"num_parts": 4}}})
    with pytest.raises(ParamsError, match=r"cluster\.knn_backend must be one of \['auto', 'faiss', 'torch', "
                                          r"'symmetric'\], got 'annoy'"):
        params_from_dict({"cluster": {"knn_backend": "annoy"}})
