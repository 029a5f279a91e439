"""The operations layer: DVC stages, Prefect flows, MLflow tracking/registry, GX validation, evidently.

Importing this package switches off the analytics of every tool it drives (no network at run time).
Prefect reads its settings at import, so this must run before `prefect` is imported anywhere.
`OFFLINE_ENV` is the one list of those settings: processes that do not import `pipeline` (`mlflow ui`,
`prefect server start`, `mlflow models serve`, `dvc` itself in CI) get it from `python -m pipeline.env`
(the Makefile and the GitHub workflow); the Dockerfile keeps a copy, which a test compares with this one.

It also silences known-harmless third-party warnings, each by category and module or message, so that any
other warning still shows. Every stage process, the flow and the tests import this package.
"""

import os
import warnings

OFFLINE_ENV = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)

# (category, module regex, message regex): each matches one known warning only
HARMLESS_WARNINGS = [
    # MLflow registers its local-filesystem dataset source twice (for "" and "file:" URIs), so every local
    # path matches "both" (the same class); a source that matches two different classes still warns
    (UserWarning, r"mlflow\.data\.dataset_source_registry",
     r"The specified dataset source can be interpreted in multiple ways: "
     r"LocalArtifactDatasetSource, LocalArtifactDatasetSource\."),
]


def silence_harmless_warnings() -> None:
    """Ignore exactly the warnings in HARMLESS_WARNINGS (import does it; call again inside catch_warnings)."""
    for category, module, message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


silence_harmless_warnings()
