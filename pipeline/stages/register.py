"""Stage `register`: log the pyfunc model, register it when every gate passed, promote it when it earns it.

A version is registered only if the validate, monitor and evaluate gates pass (register.min_map,
register.min_rank1). It becomes `champion` only if its mAP beats the current champion's on the same
dataset (a tie keeps the old one); otherwise it gets the alias `challenger`. The champion is always
re-derived from the registry itself — the best mAP among this dataset's registered versions, the
oldest on a tie — and re-read after setting, so two register stages running at once end with one
champion and both report it correctly.

Own data may have no labelled query/gallery: evaluate then says `evaluated: false`. With
register.require_evaluation (the default) such a model is refused; without it, it is registered on the validate
and monitor gates alone and becomes champion only while no version on the same dataset has been evaluated.
"""

from __future__ import annotations

import logging
import time

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import lineage, tracking
from pipeline.cli import run_stage
from pipeline.io import read_json, write_json
from pipeline.params import Params, flatten
from pipeline.paths import CHECKPOINT, metrics_file
from pipeline.serving import log_reid_model

log = logging.getLogger(__name__)
CHALLENGER = "challenger"


def was_evaluated(evaluation: dict) -> bool:
    return evaluation.get("evaluated", True)  # metrics from before the key existed were always evaluated


def gate_failures(params: Params, validation: dict, evaluation: dict, monitor: dict) -> list[str]:
    failures = []
    if not validation.get("success", False):
        failures.append("validate gate failed: the dataset did not pass validation")
    if not monitor.get("passed", False):
        failures.append("monitor gate failed: " + "; ".join(monitor.get("failures", [])))
    if not was_evaluated(evaluation):
        if params.register.require_evaluation:
            failures.append(f"evaluate gate failed: not evaluated ({evaluation.get('reason', 'no test split')}); "
                            f"set register.require_evaluation: false to register on the validate and monitor "
                            f"gates alone")
        return failures
    if evaluation["mAP"] < params.register.min_map:
        failures.append(f"evaluate gate failed: mAP {evaluation['mAP']:.2f}% is below "
                        f"register.min_map={params.register.min_map}%")
    if evaluation["rank1"] < params.register.min_rank1:
        failures.append(f"evaluate gate failed: rank-1 {evaluation['rank1']:.2f}% is below "
                        f"register.min_rank1={params.register.min_rank1}%")
    return failures


def _version_map(version) -> float | None:
    value = version.tags.get("mAP")
    return float(value) if value is not None else None


def best_version(client: MlflowClient, name: str, dataset: str) -> tuple[int, float] | None:
    """(version, mAP) that deserves the champion alias: the best mAP on `dataset`, the oldest on a tie."""
    candidates = [(int(v.version), _version_map(v)) for v in client.search_model_versions(f"name='{name}'")
                  if v.tags.get("dataset") == dataset and _version_map(v) is not None]
    if not candidates:
        return None
    return min(candidates, key=lambda c: (-c[1], c[0]))


def current_alias(client: MlflowClient, name: str, alias: str) -> tuple[int | None, float | None, str | None]:
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None, None
    return int(version.version), _version_map(version), version.tags.get("dataset")


def settle_champion(client: MlflowClient, name: str, alias: str, dataset: str, attempts: int = 5) -> int | None:
    """Point `alias` at the best version and re-read until the registry agrees (another register stage may
    be writing at the same time: both converge on the same version)."""
    for attempt in range(attempts):
        best = best_version(client, name, dataset)
        if best is None:
            return None
        holder, _, _ = current_alias(client, name, alias)
        if holder != best[0]:
            client.set_registered_model_alias(name, alias, str(best[0]))
        time.sleep(0.2 * (attempt + 1))  # let a concurrent writer land, then check again
        if best_version(client, name, dataset) == best and current_alias(client, name, alias)[0] == best[0]:
            return best[0]
    return current_alias(client, name, alias)[0]


def compete(client: MlflowClient, name: str, alias: str, dataset: str, version: int, mean_ap: float,
            previous_version: int | None, previous_map: float | None) -> tuple[int | None, str]:
    """An evaluated version: champion if its mAP is the best on `dataset` (see settle_champion)."""
    champion = settle_champion(client, name, alias, dataset)
    if previous_version is None or previous_map is None:
        return champion, f"first {alias} on {dataset}" if champion == version else f"{alias} is v{champion}"
    if champion == version:
        return champion, f"mAP {mean_ap:.2f}% beats {alias} v{previous_version} ({previous_map:.2f}%)"
    champion_map = current_alias(client, name, alias)[1]
    return champion, (f"mAP {mean_ap:.2f}% does not beat {alias} v{champion} ({champion_map:.2f}%); "
                      f"{alias} unchanged, this version is {CHALLENGER}")


def place_unevaluated(client: MlflowClient, name: str, alias: str, dataset: str,
                      version: int) -> tuple[int | None, str]:
    """A version nobody could evaluate never displaces an evaluated champion; with none on `dataset`, the
    newest unevaluated version serves (there is no score to prefer an older one by)."""
    best = best_version(client, name, dataset)
    if best is not None:
        holder = current_alias(client, name, alias)[0]
        return holder, (f"not evaluated, so it cannot displace {alias} v{best[0]}, evaluated on {dataset} "
                        f"(mAP {best[1]:.2f}%); this version is {CHALLENGER}")
    client.set_registered_model_alias(name, alias, str(version))
    return version, (f"not evaluated: {alias} because no version on {dataset} has been evaluated "
                     f"(the newest unevaluated version serves)")


def register(params: Params) -> None:
    """Write metrics/register.json: registered, version, alias, the numbers compared and the reason."""
    evaluation = read_json(metrics_file("evaluate"))
    monitor = read_json(metrics_file("monitor"))
    validation = read_json(metrics_file("validate"))
    name, alias, dataset = params.register.model_name, params.register.alias, params.dataset.name
    evaluated = was_evaluated(evaluation)
    result = {"registered": False, "model_name": name, "version": None, "alias": None, "dataset": dataset,
              "evaluated": evaluated, "mAP": evaluation.get("mAP"), "rank1": evaluation.get("rank1")}
    failures = gate_failures(params, validation, evaluation, monitor)
    if failures:
        result["reason"] = "not registered: " + "; ".join(failures)
        write_json(metrics_file("register"), result)
        log.warning("%s", result["reason"])
        return

    tracking.configure(params.mlflow)
    client = MlflowClient()
    scores = ({"mAP": repr(float(evaluation["mAP"])), "rank1": repr(float(evaluation["rank1"]))} if evaluated
              else {"evaluated": "false"})
    tags = {"dataset": dataset, **scores, "gates": "passed",
            **lineage.lineage_tags(flatten(params), dataset, params.dataset.root)}
    with mlflow.start_run(run_id=tracking.training_run_id()):
        mlflow.set_tags({k: v for k, v in tags.items() if k not in ("mAP", "rank1")})
        if lineage.DVC_LOCK.is_file():
            mlflow.log_artifact(str(lineage.DVC_LOCK), artifact_path="lineage")
        info = log_reid_model(CHECKPOINT, flip=params.evaluate.flip, registered_model_name=name)
    version = str(info.registered_model_version)
    for key, value in tags.items():  # mAP and dataset make the version a champion candidate
        client.set_model_version_tag(name, version, key, value)

    # the champion this version competes with, read as late as possible (another stage may have just moved it)
    previous_version, previous_map, previous_dataset = current_alias(client, name, alias)
    if previous_dataset is not None and previous_dataset != dataset:
        previous_version, previous_map = None, None  # another dataset's champion is no yardstick
    if evaluated:
        champion, reason = compete(client, name, alias, dataset, int(version), evaluation["mAP"], previous_version,
                                   previous_map)
    else:
        champion, reason = place_unevaluated(client, name, alias, dataset, int(version))
    promoted = champion == int(version)
    if not promoted:
        client.set_registered_model_alias(name, CHALLENGER, version)
    scored = (f"mAP {evaluation['mAP']:.2f}%, rank-1 {evaluation['rank1']:.2f}%" if evaluated else "not evaluated")
    client.update_model_version(name, version, description=f"{'champion' if promoted else CHALLENGER}: {reason}. "
                                f"{scored} on {dataset}; "
                                f"git {tags['git.commit'][:12]}, data md5 {tags['dvc.data_md5'][:12]}")
    client.set_model_version_tag(name, version, "decision", reason)
    result.update(registered=True, version=int(version), alias=alias if promoted else CHALLENGER, reason=reason,
                  champion_version=champion, previous_champion_version=previous_version,
                  previous_champion_mAP=previous_map, model_uri=f"models:/{name}/{version}",
                  lineage={k: v for k, v in tags.items() if k not in ("mAP", "rank1", "dataset", "evaluated")})
    write_json(metrics_file("register"), result)
    log.info("registered %s v%s as %s (%s)", name, version, result["alias"], reason)


def main(argv: list[str] | None = None) -> int:
    return run_stage("register", register, argv)


if __name__ == "__main__":
    raise SystemExit(main())
