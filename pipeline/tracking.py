"""MLflow: one place that decides the tracking store, the experiment and how params are logged."""

from __future__ import annotations

import dataclasses
import math
import os

import mlflow

from pipeline.io import read_json
from pipeline.params import MlflowParams, Params
from pipeline.paths import RUN_INFO


def tracking_uri(config: MlflowParams) -> str:
    """MLFLOW_TRACKING_URI wins over params.yaml, so tests and CI can point at their own store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or config.tracking_uri


def configure(config: MlflowParams) -> None:
    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment(config.experiment)


def flatten(params: Params) -> dict[str, object]:
    """params.yaml as dotted keys (train.lr, cluster.eps, ...), the way DVC names them too."""
    flat: dict[str, object] = {}
    for section, values in dataclasses.asdict(params).items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


def finite(metrics: dict[str, object]) -> dict[str, float]:
    """The numeric, finite entries: MLflow rejects NaN and strings."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def training_run_id() -> str:
    """The MLflow run the train stage opened; later stages log into it."""
    return read_json(RUN_INFO)["run_id"]
