"""``optengine flows deploy``: the deployments of ``prefect.yaml`` on a Prefect server.

With ``PREFECT_API_URL`` set, that server is used; otherwise a local one is started
(``prefect server start``, state under ``data_dir/prefect``). The process work pool is
created when missing, the deployments are registered with ``prefect deploy --all`` run
from the project root (so workers load the flows from this checkout), and a process
worker is started when none of the pool's workers is online. Whatever this started is
stopped together when the command ends.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from flows.deployments import PREFECT_YAML, ROOT, WORK_POOL
from flows.prefect_env import PREFECT_DEFAULTS

log = logging.getLogger(__name__)


@dataclass
class LocalPrefect:
    """The Prefect server and worker processes one deploy started (none when the
    server was configured and a worker was already online)."""

    api_url: str
    log_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def env(self) -> dict[str, str]:
        """The environment of every Prefect command and process started here."""
        return {**PREFECT_DEFAULTS, **os.environ, "PREFECT_API_URL": self.api_url}

    def start(self, name: str, args: list[str], extra_env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "prefect", *args], cwd=ROOT,
                env={**self.env(), **(extra_env or {})}, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.processes.append(process)
        log.info("started %s (pid %d), log %s", name, process.pid, log_path)
        return process

    def prefect(self, *args: str) -> str:
        """Run a Prefect CLI command to completion against this server."""
        done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args],
                              cwd=ROOT, env=self.env(), capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"`prefect {' '.join(args)}` failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()


def healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(api_url: str, process: subprocess.Popen[bytes] | None, timeout_s: float,
                 log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy(api_url):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {process.returncode}; "
                               f"see {log_path}")
        time.sleep(0.5)
    raise TimeoutError(f"the Prefect server at {api_url} was not ready after {timeout_s:.0f} s")


def ensure_server(api_url: str, data_dir: Path, port: int, timeout_s: float = 180
                  ) -> LocalPrefect:
    """Use the configured server (it must answer), or start a local one."""
    log_dir = data_dir / "logs"
    if api_url:
        local = LocalPrefect(api_url.rstrip("/"), log_dir)
        wait_healthy(local.api_url, None, timeout_s=30)
        return local
    local = LocalPrefect(f"http://127.0.0.1:{port}/api", log_dir)
    if healthy(local.api_url):  # one started earlier is still up
        return local
    home = (data_dir / "prefect").resolve()
    server = local.start("prefect-server",
                         ["server", "start", "--host", "127.0.0.1", "--port", str(port)],
                         {"PREFECT_HOME": str(home)})
    wait_healthy(local.api_url, server, timeout_s, log_dir / "prefect-server.log")
    return local


def ensure_work_pool(local: LocalPrefect, pool: str = WORK_POOL) -> bool:
    """Create the process work pool when missing; True when it was created."""
    if httpx.get(f"{local.api_url}/work_pools/{pool}", timeout=10).status_code == 200:
        return False
    local.prefect("work-pool", "create", pool, "--type", "process")
    return True


def register(local: LocalPrefect, prefect_file: Path = PREFECT_YAML) -> str:
    """``prefect deploy --all`` from the project root: the root becomes every run's
    working directory."""
    return local.prefect("deploy", "--all", "--prefect-file", str(prefect_file))


def online_workers(api_url: str, pool: str = WORK_POOL) -> int:
    response = httpx.post(f"{api_url}/work_pools/{pool}/workers/filter", json={"limit": 100},
                          timeout=10)
    response.raise_for_status()
    return sum(1 for worker in response.json() if worker.get("status") == "ONLINE")


def ensure_worker(local: LocalPrefect, pool: str = WORK_POOL,
                  extra_env: dict[str, str] | None = None) -> bool:
    """Start a process worker when none of the pool's is online; True when started."""
    if online_workers(local.api_url, pool):
        return False
    local.start("prefect-worker", ["worker", "start", "--pool", pool, "--type", "process"],
                extra_env)
    return True


def deployed(api_url: str) -> list[str]:
    """``flow/deployment`` names on the server."""
    response = httpx.post(f"{api_url}/deployments/filter", json={"limit": 200}, timeout=10)
    response.raise_for_status()
    flows = httpx.post(f"{api_url}/flows/filter", json={"limit": 200}, timeout=10).json()
    names = {f["id"]: f["name"] for f in flows}
    return sorted(f"{names.get(d['flow_id'], '?')}/{d['name']}" for d in response.json())
