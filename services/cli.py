"""The one command line: ``optengine serve | worker | migrate | make-test-model | demo |
dashboard | keys | flows | batch | experiments | optimize`` and ``optengine report costs``."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from services.experiments.cli import app as experiments_app
from services.settings import Settings, load_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from models import ApiKey, Batch

app = typer.Typer(help="Performance Optimization Engine", no_args_is_help=True)
keys_app = typer.Typer(help="API keys kept (hashed) in the metrics store")
app.add_typer(keys_app, name="keys")
flows_app = typer.Typer(help="Prefect flows: the control loops over the metrics store")
app.add_typer(flows_app, name="flows")
batch_app = typer.Typer(help="Batch inference: a JSONL file of requests, run by the "
                        "parallel_execution flow")
app.add_typer(batch_app, name="batch")
app.add_typer(experiments_app, name="experiments")
report_app = typer.Typer(help="Reports over the metrics store")
app.add_typer(report_app, name="report")
alerts_app = typer.Typer(help="Alert rules (settings.alerts) and the alerts they raised")
app.add_typer(alerts_app, name="alerts")

def _settings(**overrides: object) -> Settings:
    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    worker: Annotated[
        list[str] | None, typer.Option(help="upstream base URL (repeatable)")
    ] = None,
    log_level: str = "INFO",
) -> None:
    """Run the OpenAI-compatible gateway."""
    import uvicorn

    from services.gateway import create_app

    _logging(log_level)
    settings = _settings(host=host, port=port, workers=worker or None)
    uvicorn.run(
        create_app(settings, freeze_heap=True),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
    downgrade: Annotated[bool, typer.Option(help="downgrade to REVISION")] = False,
) -> None:
    """Bring the metrics-store schema to a revision (default: the newest)."""
    from migrations import alembic_config, downgrade_to

    settings = _settings()
    if downgrade:
        downgrade_to(revision, settings.database_url)
    else:
        from alembic import command

        command.upgrade(alembic_config(settings.database_url), revision)
    typer.echo(f"store at {revision}: {settings.database_url}")


@app.command("make-test-model")
def make_test_model_cmd(
    out_dir: Annotated[Path, typer.Argument(help="folder to write the model to")],
) -> None:
    """Build the tiny random Llama used by tests (gibberish output, real tokens)."""
    from services.workers import make_test_model

    path = make_test_model(out_dir)
    typer.echo(f"test model written to {path}")


@app.command()
def worker(
    model: Annotated[Path, typer.Option(help="model folder vLLM serves")],
    port: Annotated[int | None, typer.Option(help="port (default: a free one)")] = None,
    host: str = "127.0.0.1",
    served_model_name: Annotated[str | None, typer.Option(help="model id to serve as")] = None,
    gpus: Annotated[
        int | None, typer.Option(min=0, help="GPUs to use (default: detected; 0 = CPU)")
    ] = None,
    register: Annotated[bool, typer.Option(help="register in the shared workers table")] = True,
    dry_run: Annotated[bool, typer.Option(help="print the vLLM command line and exit")] = False,
) -> None:
    """Start a vLLM worker, wait until healthy, register it; on Ctrl-C or SIGTERM leave
    the registry, drain the requests in flight, then stop."""
    import shlex

    from models import create_store_engine, session_factory
    from services.execution import deregister_worker, register_worker
    from services.workers import VllmWorker

    _logging()
    settings = _settings()
    vllm = VllmWorker.from_settings(
        settings, model, host=host, port=port, served_model_name=served_model_name,
        gpu_count=gpus,
    )
    if dry_run:
        typer.echo(shlex.join(vllm.command))
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sessions = None
    with vllm:
        typer.echo(f"worker ready at {vllm.base_url} serving '{vllm.served_model_name}'")
        if register:
            from migrations import upgrade_to_head

            upgrade_to_head(settings.database_url)
            sessions = session_factory(create_store_engine(settings.database_url))
            register_worker(
                sessions, vllm.base_url, source="launched", models=[vllm.served_model_name],
                pid=vllm.pid, gpu_count=vllm.gpu_count,
            )
            typer.echo("registered: gateways on this store will route to it")
        while not stop.wait(1.0):
            if not vllm.is_running():
                typer.echo("vLLM exited unexpectedly; see " + str(vllm.log_path), err=True)
                break
        if sessions is not None:
            deregister_worker(sessions, vllm.base_url)
            typer.echo("deregistered; draining the requests in flight")
            vllm.drain(notice_s=settings.health_interval_s,
                       timeout_s=settings.worker_drain_timeout_s)
    typer.echo("worker stopped")


@app.command()
def demo(
    model: Annotated[Path | None, typer.Option(help="serve this model folder instead")] = None,
    fast: Annotated[bool, typer.Option(help="tiny test model (seconds, gibberish)")] = False,
    prompts: Annotated[Path | None, typer.Option(help="ShareGPT-format JSON workload")] = None,
    limit: Annotated[int | None, typer.Option(help="replay only the first N prompts")] = None,
    concurrency: int = 8,
    max_tokens: int = 64,
    chat: Annotated[bool, typer.Option(help="use /v1/chat/completions")] = False,
    port: Annotated[int | None, typer.Option(help="gateway port (default: a free one)")] = None,
    keep_running: Annotated[bool, typer.Option(help="leave the gateway up afterwards")] = False,
) -> None:
    """The main job: worker + gateway + the demo workload, then the store's figures."""
    from services.demo.run import DemoOptions, run_demo
    from services.demo.workload import DEMO_PROMPTS

    _logging("WARNING")
    options = DemoOptions(
        model_dir=model, fast=fast, prompts=prompts or DEMO_PROMPTS, limit=limit,
        concurrency=concurrency, max_tokens=max_tokens, chat=chat, port=port,
        keep_running=keep_running,
    )
    raise typer.Exit(run_demo(_settings(), options))


@app.command()
def dashboard(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
) -> None:
    """Serve the Streamlit dashboard over the metrics store (read-only)."""
    import os
    import sys

    settings = _settings(dashboard_host=host, dashboard_port=port)
    root = Path(__file__).resolve().parents[1]  # ``python -m`` puts it on sys.path
    typer.echo(f"dashboard at http://{settings.dashboard_host}:{settings.dashboard_port}")
    command = [
        sys.executable, "-m", "streamlit", "run", str(root / "dashboards" / "app.py"),
        "--server.address", settings.dashboard_host,
        "--server.port", str(settings.dashboard_port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none", "--global.developmentMode", "false",
        "--client.toolbarMode", "viewer",
    ]
    # become Streamlit (exec, not a child process): a SIGTERM to this process then
    # stops the server itself instead of leaving it running as an orphan
    os.chdir(root)
    os.execv(sys.executable, command)


def _store_sessions(settings: Settings) -> sessionmaker[Session]:
    from migrations import upgrade_to_head
    from models import create_store_engine, session_factory

    upgrade_to_head(settings.database_url)
    return session_factory(create_store_engine(settings.database_url))


_BUDGET_USD_HELP = ("spending limit in USD per --budget-period; enforced on every request "
                    "made with the key (429 budget_exceeded past it)")
_BUDGET_PERIOD_HELP = ("day, month (the default) or total; day and month are UTC calendar "
                       "periods, each starting from zero")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="tenant the key belongs to")],
    name: Annotated[str | None, typer.Option(help="label")] = None,
    budget_usd: Annotated[float | None, typer.Option(help=_BUDGET_USD_HELP)] = None,
    budget_period: Annotated[str | None, typer.Option(help=_BUDGET_PERIOD_HELP)] = None,
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    from services.gateway.auth import create_api_key
    from services.routing.keys import key_budget

    try:
        key_budget(budget_usd, budget_period)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--budget-usd/--budget-period") from None
    sessions = _store_sessions(_settings())
    typer.echo(create_api_key(sessions, tenant=tenant, name=name, budget_usd=budget_usd,
                              budget_period=budget_period))


def _key_line(row: ApiKey) -> str:
    from services.routing.keys import describe_budget

    revoked = f"  revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else ""
    return (f"{row.id}\t{row.key_prefix}...\t{row.tenant}\t{row.name or '-'}\t"
            f"{describe_budget(row.budget_usd, row.budget_period)}{revoked}")


@keys_app.command("list")
def keys_list() -> None:
    """The stored keys: id (the ``key:<id>`` budget scope), prefix, tenant, name, budget,
    and when a revoked key was revoked."""
    from services.gateway.auth import list_api_keys

    for row in list_api_keys(_store_sessions(_settings())):
        typer.echo(_key_line(row))


@keys_app.command("update")
def keys_update(
    key_id: Annotated[int, typer.Argument(help="the key's id (optengine keys list)",
                                          min=1, max=2**31 - 1)],
    name: Annotated[str | None, typer.Option(help="new label ('' clears it)")] = None,
    budget_usd: Annotated[float | None, typer.Option(help=_BUDGET_USD_HELP)] = None,
    budget_period: Annotated[str | None, typer.Option(help=_BUDGET_PERIOD_HELP)] = None,
    unlimited: Annotated[bool, typer.Option(
        "--unlimited", help="drop the key's spending limit")] = False,
) -> None:
    """Change a key's label or spending limit; what is not given stays. Every gateway
    enforces the change within ``api_key_refresh_s`` (10 s by default)."""
    from services.errors import EngineError
    from services.gateway.auth import update_api_key

    try:
        row = update_api_key(_store_sessions(_settings()), key_id, name=name,
                             budget_usd=budget_usd, budget_period=budget_period,
                             unlimited=unlimited)
    except EngineError as exc:
        raise typer.BadParameter(exc.message, param_hint=_hint(exc.param)) from None
    typer.echo(_key_line(row))


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[int, typer.Argument(help="the key's id (optengine keys list)",
                                          min=1, max=2**31 - 1)],
) -> None:
    """Revoke a key: every gateway refuses it (401) within ``api_key_refresh_s``. The key
    stays in the store, so its requests and costs keep their key id."""
    from services.errors import EngineError
    from services.gateway.auth import revoke_api_key

    try:
        row, revoked = revoke_api_key(_store_sessions(_settings()), key_id)
    except EngineError as exc:
        raise typer.BadParameter(exc.message, param_hint=_hint(exc.param)) from None
    if not revoked:
        typer.echo(f"key {key_id} was already revoked")
    typer.echo(_key_line(row))


def _hint(param: str | None) -> str | None:
    return {"key_id": "KEY_ID", None: None}.get(param, f"--{(param or '').replace('_', '-')}")


def _prefect_env() -> None:
    from flows.prefect_env import apply_prefect_defaults

    apply_prefect_defaults()


@flows_app.command("run")
def flows_run(name: Annotated[str, typer.Argument(help="flow name, e.g. cache_optimization")]
              ) -> None:
    """Run one flow now, in this process."""
    _prefect_env()
    import asyncio
    import inspect

    from flows.deployments import FLOWS

    if name not in FLOWS:
        raise typer.BadParameter(f"unknown flow {name!r}; known: {', '.join(sorted(FLOWS))}")
    result = FLOWS[name]()
    if inspect.isawaitable(result):
        result = asyncio.run(result)
    typer.echo(result)


@flows_app.command("serve")
def flows_serve() -> None:
    """Serve every flow on its schedule (Ctrl-C stops)."""
    _prefect_env()
    from prefect import serve

    from flows.deployments import deployments

    serve(*deployments())


@flows_app.command("deploy")
def flows_deploy(
    port: Annotated[int, typer.Option(help="port of a local Prefect server")] = 4200,
    wait: Annotated[bool, typer.Option(help="stay up while the server/worker started here "
                                       "run (Ctrl-C stops them)")] = True,
    worker: Annotated[bool, typer.Option(help="start a process worker when none of the "
                                         "pool's is online (off where workers run apart)")
                      ] = True,
) -> None:
    """Register every flow's deployment (prefect.yaml) on a Prefect server, starting a
    local server (unless PREFECT_API_URL is set) and a process worker when needed."""
    _prefect_env()
    _logging("WARNING")
    from flows.deploy import deployed, ensure_server, ensure_work_pool, ensure_worker, register
    from flows.deployments import WORK_POOL

    settings = _settings()
    local = ensure_server(settings.prefect_api_url, settings.data_dir, port)
    try:
        if ensure_work_pool(local):
            typer.echo(f"created the process work pool '{WORK_POOL}'")
        register(local)
        names = deployed(local.api_url)
        typer.echo(f"{len(names)} deployments registered: {', '.join(names)}")
        if worker and ensure_worker(local):
            typer.echo(f"started a process worker for the pool '{WORK_POOL}'")
        typer.echo(f"Prefect UI at {local.ui_url}  (API: {local.api_url}; give the gateway "
                   f"PREFECT_API_URL={local.api_url} to start runs through it)")
        if not local.processes or not wait:
            local.processes.clear()  # left running on purpose
            return
        typer.echo("press Ctrl-C to stop the Prefect processes started here")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0) and all(p.poll() is None for p in local.processes):
            pass
    finally:
        local.stop()


@batch_app.command("run")
def batch_run(
    file: Annotated[Path, typer.Argument(help="JSONL: one {custom_id, method, url, body} a line",
                                         exists=True, dir_okay=False)],
    output: Annotated[Path | None, typer.Option(help="results JSONL (default FILE.output.jsonl)")
                      ] = None,
    tenant: str = "default",
    completion_window: str = "24h",
) -> None:
    """Run a batch file now, in this process, with a progress bar; writes the results."""
    from services.batch import store
    from services.batch.lines import guess_endpoint

    content = file.read_bytes()
    try:
        endpoint = guess_endpoint(content)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="FILE") from None
    settings, engine = _batch_store()
    stored = store.create_file(engine, tenant=tenant, filename=file.name, purpose="batch",
                               content=content)
    batch = store.create_batch(engine, tenant=tenant, input_file_id=stored.id, endpoint=endpoint,
                               completion_window=completion_window)
    store.claim_run(engine, batch.id, stale_after_s=settings.batch_stale_after_s)
    typer.echo(f"batch {batch.id}: {file} -> {endpoint}")
    _follow_batch(engine, batch.id, output or file.with_suffix(".output.jsonl"))


@batch_app.command("resume")
def batch_resume(
    batch_id: Annotated[str, typer.Argument(help="batch id (batch_...)")],
    output: Annotated[Path | None, typer.Option(help="results JSONL (default BATCH_ID.jsonl)")
                      ] = None,
) -> None:
    """Resume a batch whose run stopped: finished lines are kept, the rest run now."""
    from services.batch import store
    from services.errors import NotFound

    settings, engine = _batch_store()
    output = output or Path(f"{batch_id}.jsonl")
    try:
        batch = store.get_batch(engine, batch_id)
    except NotFound as exc:
        raise typer.BadParameter(exc.message, param_hint="BATCH_ID") from None
    if batch.status in store.TERMINAL:
        _write_results(engine, batch, output)
        return
    if not store.claim_run(engine, batch_id, stale_after_s=settings.batch_stale_after_s):
        typer.echo(f"batch {batch_id} is being run by another process (its checkpoints are "
                   f"fresh); try again after {settings.batch_stale_after_s:.0f} s", err=True)
        raise typer.Exit(1)
    _follow_batch(engine, batch_id, output)


def _batch_store() -> tuple[Settings, Engine]:
    from migrations import upgrade_to_head
    from models import create_store_engine

    _prefect_env()
    _logging("WARNING")
    settings = _settings()
    upgrade_to_head(settings.database_url)
    return settings, create_store_engine(settings.database_url)


def _follow_batch(engine: Engine, batch_id: str, output: Path) -> None:
    """Run the flow in a thread and draw its progress from the store's checkpoints."""
    import asyncio

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from flows.parallel_execution import parallel_execution
    from services.batch import store

    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(parallel_execution(batch_id))
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    worker = threading.Thread(target=run, name="batch-flow", daemon=True)
    worker.start()
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        bar = progress.add_task("lines", total=None)
        while worker.is_alive():
            worker.join(0.5)
            batch = store.get_batch(engine, batch_id)
            progress.update(bar, total=batch.total or None,
                            completed=batch.completed + batch.failed,
                            description=f"{batch.status} ({batch.failed} failed)")
    if failure:
        raise failure[0]
    _write_results(engine, store.get_batch(engine, batch_id), output)


def _write_results(engine: Engine, batch: Batch, output: Path) -> None:
    from services.batch import store

    typer.echo(f"batch {batch.id} {batch.status}: {batch.completed} completed, "
               f"{batch.failed} failed of {batch.total}")
    for file_id, path in ((batch.output_file_id, output),
                          (batch.error_file_id, output.with_suffix(".errors.jsonl"))):
        if file_id is not None:
            path.write_bytes(store.get_file(engine, file_id, tenant=batch.tenant).content)
            typer.echo(f"wrote {path}")
    if batch.status != "completed":
        raise typer.Exit(1)


@report_app.command("costs")
def report_costs(
    since: Annotated[str, typer.Option(help="period start, ISO 8601 with a timezone, e.g. "
                                       "2026-11-01T00:00Z")],
    until: Annotated[str | None, typer.Option(help="period end (exclusive); default now")
                     ] = None,
    tenant: Annotated[str | None, typer.Option(help="one tenant (default: all)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="md, csv or html")] = "md",
) -> None:
    """Print a cost report: spend, savings by lever, budget, ROI (rollups updated first)."""
    from datetime import UTC, datetime

    from migrations import upgrade_to_head
    from models import create_store_engine
    from services.costs.reports import report_now
    from services.errors import InvalidRequest

    if fmt not in ("md", "csv", "html"):
        raise typer.BadParameter(f"{fmt!r}: use md, csv or html", param_hint="--format")
    bounds = {}
    for name, text in (("since", since), ("until", until)):
        try:
            bounds[name] = datetime.now(UTC) if text is None else datetime.fromisoformat(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not an ISO 8601 date or time",
                                     param_hint=f"--{name}") from None
    settings = _settings()
    upgrade_to_head(settings.database_url)
    engine = create_store_engine(settings.database_url)
    try:
        doc = report_now(engine, settings, bounds["since"], bounds["until"], tenant)
    except InvalidRequest as exc:
        raise typer.BadParameter(exc.message, param_hint=f"--{exc.param or 'since'}") from None
    finally:
        engine.dispose()
    typer.echo(doc.render(fmt), nl=False)


@app.command()
def optimize(
    days: Annotated[float, typer.Option(help="stored traffic to read, in days")] = 7.0,
    output: Annotated[Path, typer.Option(help="proposed settings (YAML)")] = Path(
        "optimize.yaml"),
) -> None:
    """Estimate what each lever that is off would save per month; write the settings."""
    from datetime import UTC, datetime, timedelta

    import yaml

    from migrations import upgrade_to_head
    from models import create_store_engine
    from services.costs import PriceCatalog
    from services.costs.reports.planner import plan, proposed_settings
    from services.routing.config import RoutingConfig

    if days <= 0:
        raise typer.BadParameter("must be > 0", param_hint="--days")
    settings = _settings()
    upgrade_to_head(settings.database_url)
    engine = create_store_engine(settings.database_url)
    until = datetime.now(UTC)
    try:
        routing = RoutingConfig.model_validate(settings.routing) if settings.routing else None
        estimates = plan(engine, PriceCatalog.from_settings(settings),
                         until - timedelta(days=days), until, routing)
    finally:
        engine.dispose()
    if not estimates:
        typer.echo(f"no data: nothing to estimate in the last {days:g} days (or every "
                   "estimated lever is on already)")
        return
    for e in estimates:
        typer.echo(f"{e.tenant}: {e.lever} ~${e.monthly_saving_usd:,.2f}/month "
                   f"(${e.window_saving_usd:,.6f} in the window): {e.method}")
    output.write_text(yaml.safe_dump(proposed_settings(estimates), sort_keys=False))
    typer.echo(f"wrote {output}")


@alerts_app.command("check")
def alerts_check() -> None:
    """Check the alert rules against the tenants and models the config and store know."""
    from migrations import upgrade_to_head
    from models import create_store_engine
    from services.alerts import AlertConfigError, AlertEngine

    settings = _settings()
    upgrade_to_head(settings.database_url)
    engine = create_store_engine(settings.database_url)
    try:
        AlertEngine(settings, engine).check()
    except AlertConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    typer.echo(f"{len(settings.alerts.rules)} alert rules OK")


@alerts_app.command("list")
def alerts_list(
    pending: Annotated[bool, typer.Option(help="also list pending alerts")] = False,
) -> None:
    """Print the alerts firing now (as ``GET /admin/alerts``)."""
    from models import create_store_engine
    from services.alerts import open_alerts

    engine = create_store_engine(_settings().database_url)
    try:
        rows = open_alerts(engine, states=("firing", "pending") if pending else ("firing",))
    finally:
        engine.dispose()
    for row in rows:
        typer.echo(f"{row['state']:8} {row['severity']:8} {row['since']}  {row['message']}")
    if not rows:
        typer.echo("no alerts")


if __name__ == "__main__":
    app()
