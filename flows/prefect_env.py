"""Prefect's environment defaults for this platform, beside the flows that need them.

Prefect runs offline here: analytics off (without a network they log an error per
run) and a generous ephemeral-server start on a busy 2-core machine. Every entry point
that runs Prefect (the CLI, ``python -m flows.<flow>``, the deploy helper) applies them;
a value already in the environment wins.
"""

from __future__ import annotations

import os

PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def apply_prefect_defaults() -> None:
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
