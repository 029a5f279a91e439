"""MLflow: one place that decides the tracking store, the experiment and how params are logged."""

from __future__ import annotations

import math

import mlflow

from pipeline.io import read_json
from pipeline.params import MlflowParams, tracking_uri

__all__ = ["configure", "finite", "tracking_uri", "training_run_id"]
from pipeline.paths import RUN_INFO


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
