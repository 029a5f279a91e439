from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import pytest

# the kNN backend `auto` picks on the CPU is measured per machine (`python -m dsfnet.warmup`, stored under
# DSFNET_CACHE_DIR): tests, and the processes they start, see no measurement, so `auto` is torch for all of them
os.environ["DSFNET_CACHE_DIR"] = tempfile.mkdtemp(prefix="dsfnet-test-cache-")

import pipeline  # noqa: F401 - its OFFLINE_ENV and warning filters, before any test module imports prefect


def clustered_features(num_ids: int, per_id: int, dim: int, noise: float, seed: int = 0):
    """L2-normalised features around random identity centres, so neighbourhoods look like ReID."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(num_ids), per_id)
    feats = centres[labels] + noise * rng.normal(size=(labels.size, dim)) / np.sqrt(dim)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return feats.astype(np.float32), labels


@pytest.fixture(autouse=True)
def _fresh_mlflow_state():
    """MLflow keeps the active experiment and runs per process: one test's must not leak into the next."""
    before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:  # set_experiment() exports its id
        if key not in before:
            del os.environ[key]
    os.environ.update(before)
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.tracking.fluent._active_experiment_id = None  # what set_experiment() sets; no public reset


@pytest.fixture
def make_clustered():
    return clustered_features


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's own test harness: a temporary API server and database for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
