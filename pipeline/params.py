"""The one typed loader of params.yaml: every stage reads its configuration through `load_params`.

Sections that configure the method are dsfnet's own dataclasses; the rest are defined here. Unknown
keys and wrong types are errors that name the dotted key, so a typo never silently becomes a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dsfnet.cluster import ClusterConfig
from dsfnet.config import DSFNetConfig
from dsfnet.data import SyntheticConfig
from dsfnet.models import ModelConfig
from dsfnet.trainer import TrainConfig


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
    min_nmi: float = 0.0
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
    min_rank1: float = 0.0  # percent


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


def _convert(value, annotation, key: str):
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(a for a in options if a is not type(None))
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `5e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a new field type must be taught here
        raise TypeError(f"params loader cannot convert {key} of type {annotation}")
    raise ParamsError(f"{key}: expected {annotation.__name__}, got {value!r}")


def _build(cls, data, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{prefix or 'params'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
            valid = ", ".join(f"{prefix + '.' if prefix else ''}{name}" for name in names)
            raise ParamsError(f"unknown key {prefix + '.' if prefix else ''}{key}{hint}; valid keys: {valid}")
    kwargs = {
        name: _convert(data[name], hints[name], f"{prefix}.{name}" if prefix else name)
        for name in names
        if name in data
    }
    return cls(**kwargs)


def params_from_dict(data: dict) -> Params:
    return _build(Params, data, "")


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} does not exist (run from the project root)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from error
    try:
        return params_from_dict(data)
    except ParamsError as error:
        raise ParamsError(f"{path}: {error}") from None
