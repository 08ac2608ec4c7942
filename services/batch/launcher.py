"""Starting batch runs as processes, and restarting the ones that died.

A batch runs as a run of the ``parallel_execution`` deployment on the Prefect server
when one is configured (``prefect_api_url``: a work-pool worker runs it, and it shows
in the Prefect UI, the same path as ``POST /admin/flows/{name}/runs``), else - or when
that server cannot be reached - as ``python -m flows.parallel_execution BATCH_ID``.
Either way it is its own process, so a long job never competes with the gateway's event
loop, and a gateway restart does not stop it. A run proves it is alive by its
checkpoints (``heartbeat_at``); the sweep claims any active batch silent for
``batch_stale_after_s`` (one atomic update, so two gateway replicas never both restart
it) and starts it again, where it resumes from its checkpoints. After
``batch_max_attempts`` starts the batch is failed instead, so a batch that crashes its
run every time cannot loop forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine

from services.background import cancel_and_wait, every
from services.batch import store
from services.errors import EngineError
from services.orchestration import FlowRuns
from services.settings import Settings

log = logging.getLogger(__name__)

BATCH_FLOW = "parallel_execution"  # the flow (and its deployment) that runs a batch


def run_env(settings: Settings) -> dict[str, str]:
    """The environment of a run: this process's, plus the settings it was built with."""
    env = dict(os.environ)
    env["OPTENGINE_DATABASE_URL"] = settings.database_url
    env["OPTENGINE_DATA_DIR"] = str(settings.data_dir)
    env["OPTENGINE_WORKERS"] = ",".join(settings.workers)
    return env


def spawn_run(settings: Settings, batch_id: str) -> subprocess.Popen[bytes]:
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{batch_id}.log").open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.parallel_execution", batch_id],
            env=run_env(settings), stdout=out, stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2], start_new_session=True,
        )
    log.info("batch %s: run started (pid %d)", batch_id, process.pid)
    return process


class BatchLauncher:
    """Starts runs for new batches and sweeps for stale ones (kept on ``app.state``)."""

    def __init__(self, settings: Settings, engine: Engine,
                 flow_runs: FlowRuns | None = None) -> None:
        self._settings = settings
        self._engine = engine
        self._flow_runs = flow_runs if settings.prefect_api_url else None
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._task: asyncio.Task[None] | None = None

    def launch(self, batch_id: str) -> bool:
        """Start a run if nobody runs the batch (blocking: call it in a thread)."""
        if not store.claim_run(self._engine, batch_id,
                               stale_after_s=self._settings.batch_stale_after_s):
            return False
        if self._flow_runs is not None:
            try:
                run = self._flow_runs.start(BATCH_FLOW, {"batch_id": batch_id})
            except EngineError as exc:  # the server is down or has no such deployment
                log.warning("batch %s: Prefect could not start it (%s); running it here",
                            batch_id, exc.message)
            else:
                log.info("batch %s: Prefect flow run %s", batch_id, run.id)
                return True
        self._processes[batch_id] = spawn_run(self._settings, batch_id)
        return True

    def sweep(self) -> list[str]:
        """Restart stale runs (or fail them after too many attempts); returns restarted ids."""
        self._reap()
        restarted = []
        for batch in store.stale_batches(self._engine,
                                         stale_after_s=self._settings.batch_stale_after_s):
            if batch.id in self._processes:
                continue  # our own run is still alive (maybe starting up): not stale
            if batch.attempts >= self._settings.batch_max_attempts:
                log.error("batch %s failed after %d attempts", batch.id, batch.attempts)
                store.set_status(self._engine, batch.id, status="failed", errors=[{
                    "code": "too_many_attempts", "line": None,
                    "message": f"the run stopped {batch.attempts} times without finishing"}])
            elif self.launch(batch.id):
                restarted.append(batch.id)
        return restarted

    def _reap(self) -> None:
        for batch_id, process in list(self._processes.items()):
            if process.poll() is not None:
                del self._processes[batch_id]

    async def start(self) -> None:
        self._task = every(self._settings.batch_sweep_interval_s, self.sweep,
                           name="batch-sweep", failure="batch sweep failed")

    async def stop(self) -> None:
        """Stop sweeping; runs go on (they are their own processes and resume anyway)."""
        await cancel_and_wait(self._task)
        self._task = None
