"""MLflow: one place that decides the tracking store, the experiment and how params are logged."""

from __future__ import annotations

import math
import os

import mlflow

from pipeline.io import read_json
from pipeline.params import MlflowParams
from pipeline.paths import RUN_INFO


def tracking_uri(config: MlflowParams | None = None) -> str:
    """The one store rule for stages and tools: MLFLOW_TRACKING_URI wins (tests and CI point at their own
    store), then `config`, else ./params.yaml's `mlflow.tracking_uri` when there is one, else the default."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if config is None:
        from pipeline.params import load_params

        config = load_params().mlflow if os.path.isfile("params.yaml") else MlflowParams()
    return config.tracking_uri


def configure(config: MlflowParams) -> None:
    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment(config.experiment)


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
