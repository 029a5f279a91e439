"""Stage `register`: log the pyfunc model, register it, and promote it only when it earns it.

A model is registered only if the monitor gate passed and its mAP reaches register.min_map. It
becomes the alias (default `champion`) only if it beats the current champion's mAP.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dsfnet.checkpoint import load_checkpoint
from pipeline import tracking
from pipeline.cli import run_stage
from pipeline.io import read_json, write_json
from pipeline.params import Params
from pipeline.paths import CHECKPOINT, metrics_file
from pipeline.serving import ReIDEmbedder, requirements, signature

log = logging.getLogger(__name__)
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def _gate_failures(params: Params, evaluation: dict, monitor: dict) -> list[str]:
    failures = []
    if not monitor.get("passed", False):
        failures.append("monitor gate failed: " + "; ".join(monitor.get("failures", [])))
    if evaluation["mAP"] < params.register.min_map:
        failures.append(f"mAP {evaluation['mAP']:.2f}% is below register.min_map={params.register.min_map}%")
    return failures


def _champion_map(client: MlflowClient, name: str, alias: str) -> tuple[int | None, float | None]:
    try:
        champion = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None
    value = champion.tags.get("mAP")
    return int(champion.version), (float(value) if value is not None else None)


def register(params: Params) -> None:
    """Write metrics/register.json: registered, model_name, version, alias, reason."""
    evaluation = read_json(metrics_file("evaluate"))
    monitor = read_json(metrics_file("monitor"))
    name, alias = params.register.model_name, params.register.alias
    result = {"registered": False, "model_name": name, "version": None, "alias": None,
              "mAP": evaluation["mAP"], "rank1": evaluation["rank1"]}
    failures = _gate_failures(params, evaluation, monitor)
    if failures:
        result["reason"] = "not registered: " + "; ".join(failures)
        write_json(metrics_file("register"), result)
        log.warning("%s", result["reason"])
        return

    tracking.configure(params.mlflow)
    client = MlflowClient()
    model, _ = load_checkpoint(CHECKPOINT)
    with mlflow.start_run(run_id=tracking.training_run_id()):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ReIDEmbedder(),
            artifacts={"checkpoint": str(CHECKPOINT)},
            signature=signature(model.embedding_dim),
            code_paths=[str(PACKAGE_ROOT / "dsfnet"), str(PACKAGE_ROOT / "pipeline")],
            pip_requirements=requirements(),
            model_config={"flip": params.evaluate.flip},
            registered_model_name=name,
        )
    version = int(info.registered_model_version)
    for key in ("mAP", "rank1"):
        client.set_model_version_tag(name, str(version), key, repr(float(evaluation[key])))
    client.set_model_version_tag(name, str(version), "dataset", params.dataset.name)

    champion_version, champion_map = _champion_map(client, name, alias)
    promote = champion_map is None or evaluation["mAP"] > champion_map
    if champion_version is None:
        reason = f"first {alias}"
    elif champion_map is None:
        reason = f"{alias} v{champion_version} carries no mAP tag; replaced"
    elif promote:
        reason = f"mAP {evaluation['mAP']:.2f}% beats {alias} v{champion_version} ({champion_map:.2f}%)"
    else:
        reason = (f"mAP {evaluation['mAP']:.2f}% does not beat {alias} v{champion_version} "
                  f"({champion_map:.2f}%); {alias} unchanged")
    if promote:
        client.set_registered_model_alias(name, alias, str(version))
    result.update(registered=True, version=version, alias=alias if promote else None, reason=reason,
                  champion_version=version if promote else champion_version,
                  model_uri=f"models:/{name}/{version}")
    write_json(metrics_file("register"), result)
    log.info("registered %s v%s (%s)", name, version, result["reason"])


def main(argv: list[str] | None = None) -> int:
    return run_stage("register", register, argv)


if __name__ == "__main__":
    raise SystemExit(main())
