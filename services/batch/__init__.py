"""Batch inference: JSONL requests in, JSONL results out, run fast and in order.

The gateway's ``/v1/files`` and ``/v1/batches`` create files and batches (``store``); the
Prefect flow ``parallel_execution`` runs a batch through the steps in ``runner``
(prepare, analyze, execute, finalize); ``launcher`` starts that flow as a process and
restarts crashed runs.
"""

from services.batch import store
from services.batch.launcher import BatchLauncher, spawn_run
from services.batch.lines import BatchLine, LineError, parse_input
from services.batch.runner import Prepared, analyze, execute, finalize, prepare

__all__ = [
    "BatchLauncher",
    "BatchLine",
    "LineError",
    "Prepared",
    "analyze",
    "execute",
    "finalize",
    "parse_input",
    "prepare",
    "spawn_run",
    "store",
]
