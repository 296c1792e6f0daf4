"""Safe process-wide defaults applied before Prefect is imported: no telemetry, patient ephemeral server."""
from __future__ import annotations

import os

# Values are only defaults: anything the user exported wins.
SAFE_DEFAULTS: dict[str, str] = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The first start of Prefect's temporary server migrates SQLite: 15-30 s on a loaded 2-core box.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_API_HOST": "127.0.0.1",
    # Task/flow results are in our own store; Prefect need not pickle them too.
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    # No hub is reachable on the reference machines; fail fast instead of hanging on a download.
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_DISABLED": "true",
}


def apply_safe_defaults() -> None:
    for key, value in SAFE_DEFAULTS.items():
        os.environ.setdefault(key, value)
