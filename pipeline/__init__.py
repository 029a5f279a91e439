"""The operations layer: DVC stages, Prefect flows, MLflow tracking/registry, GX validation, evidently.

Importing this package switches off the analytics of every tool it drives (no network at run time).
Prefect reads its settings at import, so this must run before `prefect` is imported anywhere.
"""

import os

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
