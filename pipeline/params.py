"""The one typed loader of params.yaml: every stage reads its configuration through `load_params`.

Sections that configure the method are dsfnet's own dataclasses; the rest are defined here. The
dataclass defaults are the only defaults (params.yaml spells each one out, because DVC tracks every key
it holds; a test keeps the two equal). pydantic validates the tree strictly, so unknown keys and wrong
types are errors that name the dotted key, and a typo never silently becomes a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ConfigDict, TypeAdapter, ValidationError
from ruamel.yaml import YAML, YAMLError

from dsfnet.config import ClusterConfig, DSFNetConfig, ModelConfig, TrainConfig
from dsfnet.data import SyntheticConfig


class ParamsError(ValueError):
    """params.yaml is missing, malformed, or holds an unknown key or a wrongly typed value."""


@dataclass
class DatasetParams:
    name: str = "synthetic"
    root: str | None = None


@dataclass
class ValidateParams:
    check_images: bool = True  # fully decode every image (catches truncated files; ~3 ms an image)
    min_side: int = 16  # image width/height outside [min_side, max_side] px is an error
    max_side: int = 4096
    max_identity_size_ratio: float = 10.0  # warning: an identity with this many times the median images
    min_images_per_camera: int = 5  # warning: a camera with fewer images in a split


@dataclass
class MonitorParams:
    """Gates on the last epoch's pseudo-labels (the ground-truth ones apply only when the data has ids)."""

    max_outlier_ratio: float = 0.5
    min_clusters: int = 2
    max_largest_cluster_ratio: float = 0.5
    max_label_churn: float = 0.5  # 1 − ARI between the last two epochs' labels
    min_nmi: float = 0.3
    min_purity: float = 0.0
    stop_on_failure: bool = False  # true: a failed gate fails the stage (and `dvc repro` stops there)
    embedding_rows: int = 1000  # embeddings compared for drift (evidently's t-SNE view costs ~O(n log n))


@dataclass
class EvaluateParams:
    batch_size: int = 128
    max_rank: int = 50
    flip: bool = True  # average each image's feature with its mirror image's
    rerank: bool = False  # also report k-reciprocal re-ranked metrics
    rerank_k1: int = 20
    rerank_k2: int = 6
    rerank_lambda: float = 0.3
    rank_list_queries: int = 8  # queries shown in reports/evaluate/rank_list.png


@dataclass
class RegisterParams:
    model_name: str = "dsfnet-reid"
    alias: str = "champion"
    min_map: float = 1.0  # percent; below it the model is not registered
    min_rank1: float = 1.0  # percent
    # a model that could not be evaluated (own data without a labelled query/gallery): true refuses it;
    # false registers it on the validate and monitor gates alone, never as champion over an evaluated version
    require_evaluation: bool = True


@dataclass
class MlflowParams:
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "dsfnet"


@dataclass
class StageTimeouts:
    """Wall-clock limit of each stage in the Prefect flow, in minutes; past it the stage is killed."""

    prepare: float = 30.0
    validate: float = 60.0
    train: float = 720.0
    monitor: float = 30.0
    evaluate: float = 60.0
    register: float = 30.0


@dataclass
class FlowParams:
    """How the Prefect flow runs the stages (no DVC stage reads these: changing them retrains nothing)."""

    train_retries: int = 1  # a failed train task is retried this many times (it resumes from its checkpoint)
    retry_delay_s: float = 10.0
    timeout_min: StageTimeouts = field(default_factory=StageTimeouts)
    deployment: str = "nightly"  # name of the scheduled deployment (`make serve-flow`, prefect.yaml)
    cron: str = "0 2 * * *"  # its schedule
    timezone: str = "UTC"


@dataclass
class Params:
    dataset: DatasetParams = field(default_factory=DatasetParams)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    validate: ValidateParams = field(default_factory=ValidateParams)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    dsfnet: DSFNetConfig = field(default_factory=DSFNetConfig)
    monitor: MonitorParams = field(default_factory=MonitorParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    register: RegisterParams = field(default_factory=RegisterParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)
    flow: FlowParams = field(default_factory=FlowParams)


def _schema(cls) -> None:
    """Let pydantic validate the dataclass tree strictly: unknown keys and wrong types are errors."""
    cls.__pydantic_config__ = ConfigDict(extra="forbid", strict=True)
    for hint in typing.get_type_hints(cls).values():
        if dataclasses.is_dataclass(hint):
            _schema(hint)


_schema(Params)
_VALIDATOR = TypeAdapter(Params)


def _field_at(loc: tuple) -> tuple[type, str]:
    """(the dataclass holding the last key of `loc`, that key's annotation as text)."""
    cls = Params
    for key in loc[:-1]:
        cls = typing.get_type_hints(cls)[key]
    hint = typing.get_type_hints(cls).get(loc[-1]) if loc else Params
    return cls, getattr(hint, "__name__", str(hint))


def _explain(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = tuple(str(part) for part in first["loc"])
    dotted = ".".join(loc) or "params"
    if first["type"] != "unexpected_keyword_argument":
        expected = "a mapping" if first["type"] == "dataclass_type" else _field_at(loc)[1]
        return f"{dotted}: expected {expected}, got {first['input']!r}"
    names = [f.name for f in dataclasses.fields(_field_at(loc)[0])]
    prefix = "".join(f"{part}." for part in loc[:-1])
    close = difflib.get_close_matches(loc[-1], names, n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    return f"unknown key {dotted}{hint}; valid keys: {', '.join(prefix + name for name in names)}"


def flatten(data, prefix: str = "") -> dict[str, object]:
    """Dotted leaf keys (`dsfnet.finet.enabled`), the way DVC names params; takes Params or a nested dict."""
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)
    flat: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def params_from_dict(data: dict | None) -> Params:
    try:
        params = _VALIDATOR.validate_json(json.dumps(data or {}))  # JSON mode: strict types, mappings as input
    except ValidationError as error:
        raise ParamsError(_explain(error)) from None
    try:
        params.dsfnet.check()  # the ranges of DSFNet's settings (dsfnet.finet.num_parts 2 or 3, ...)
        params.model.check()
        params.train.check()
        params.cluster.check()
    except ValueError as error:
        raise ParamsError(str(error)) from None
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} does not exist (run from the project root)")
    try:
        data = YAML(typ="safe").load(path.read_text())  # YAML 1.2, as DVC reads it: `5e-4` is a float
    except YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from error
    try:
        return params_from_dict(data)
    except ParamsError as error:
        raise ParamsError(f"{path}: {error}") from None


def tracking_uri(config: MlflowParams | None = None) -> str:
    """The one store rule for stages and tools: MLFLOW_TRACKING_URI wins (tests and CI point at their own
    store), then `config`, else ./params.yaml's `mlflow.tracking_uri` when there is one, else the default."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if config is None:
        config = load_params().mlflow if Path("params.yaml").is_file() else MlflowParams()
    return config.tracking_uri
