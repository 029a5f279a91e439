"""The scheduled deployment of the pipeline flow, as a user sees it in the Prefect UI.

    python -m pipeline.deploy serve    # serve it from this process (what `make serve-flow` runs)
    python -m pipeline.deploy show     # the deployment it would create

`serve` registers deployment `dsfnet-pipeline/<flow.deployment>` with the cron schedule of params.yaml
(`flow.cron`, `flow.timezone`; default nightly at 02:00 UTC) on the Prefect API that PREFECT_API_URL
names (`make ui` starts one on 127.0.0.1), then runs each scheduled or manual run in this process.
For a work pool instead (process, docker, kubernetes workers), `prefect deploy --all` reads prefect.yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect.schedules import Cron

from pipeline.flows import dsfnet_pipeline
from pipeline.params import load_params


def build_deployment(project_dir: str | Path = ".", name: str | None = None, cron: str | None = None):
    """The RunnerDeployment `serve` registers: the flow on this project, with params.yaml's schedule."""
    project = Path(project_dir).resolve()
    settings = load_params(project / "params.yaml").flow
    return dsfnet_pipeline.to_deployment(
        name=name or settings.deployment,
        schedule=Cron(cron or settings.cron, timezone=settings.timezone),
        parameters={"project_dir": str(project)},
        description="prepare → validate → train → monitor → evaluate → register (DVC stages), on a schedule",
        tags=["dsfnet", "reid"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["serve", "show"])
    parser.add_argument("--project-dir", default=".")
    parser.add_argument("--name", help="deployment name (default: flow.deployment in params.yaml)")
    parser.add_argument("--cron", help="schedule (default: flow.cron in params.yaml)")
    args = parser.parse_args(argv)
    deployment = build_deployment(args.project_dir, args.name, args.cron)
    if args.command == "show":
        schedule = deployment.schedules[0].schedule
        print(f"dsfnet-pipeline/{deployment.name}: cron {schedule.cron!r} ({schedule.timezone}), "
              f"parameters {deployment.parameters}")
        return 0
    from prefect import serve

    serve(deployment)  # blocks: polls for scheduled runs and executes them here
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
