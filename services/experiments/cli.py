"""``optengine experiments ...``: config versions, experiments and canaries from a shell.

Changes are audited as ``cli:$USER`` (or ``--actor``). Bad input prints the same
message the admin API returns and exits 2.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml

from models import create_store_engine
from services.errors import EngineError
from services.experiments import controller, proposals, store
from services.settings import load_settings

T = TypeVar("T")
app = typer.Typer(help="A/B tests and canary rollouts of config versions", no_args_is_help=True)
Actor = Annotated[str | None, typer.Option(help="who makes the change (audit log)")]


def _run(call: Callable[[Any], T]) -> T:
    engine = create_store_engine(load_settings().database_url)
    try:
        return call(engine)
    except EngineError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    finally:
        engine.dispose()


def _actor(actor: str | None) -> str:
    return actor or f"cli:{getpass.getuser()}"


def _echo(value: object) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


@app.command("config")
def config(
    name: Annotated[str, typer.Argument(help="version name (immutable once written)")],
    set_: Annotated[list[str], typer.Option("--set", help="SETTING=VALUE (repeatable)")],
    description: Annotated[str | None, typer.Option(help="what this version is for")] = None,
    actor: Actor = None,
) -> None:
    """Write a config version: overrides of per-request settings."""
    overrides: dict[str, Any] = {}
    for item in set_:
        key, sep, raw = item.partition("=")
        if not sep:
            typer.echo(f"error: --set needs SETTING=VALUE, got {item!r}", err=True)
            raise typer.Exit(2)
        overrides[key.strip()] = yaml.safe_load(raw) if raw.strip() else raw
    _echo(_run(lambda e: store.create_config(e, name, overrides, actor=_actor(actor),
                                             description=description,
                                             worker_pools=load_settings().worker_pools)))


@app.command("configs")
def configs() -> None:
    """List config versions."""
    _echo(_run(store.list_configs))


@app.command("create")
def create(
    name: Annotated[str, typer.Argument()],
    arm: Annotated[list[str], typer.Option(help="NAME=CONFIG[:WEIGHT], control first")],
    kind: Annotated[str, typer.Option(help="ab | canary")] = "canary",
    unit: Annotated[str, typer.Option(help="tenant | api_key | header")] = "tenant",
    tenant: Annotated[list[str] | None, typer.Option(help="limit to tenants")] = None,
    steps: Annotated[str, typer.Option(help="canary shares, e.g. 0.05,0.25,0.5,1")] = "",
    step_seconds: Annotated[float, typer.Option(help="least time per step")] = 300.0,
    min_samples: Annotated[int, typer.Option(help="least requests per arm per step")] = 200,
    guardrail: Annotated[list[str] | None, typer.Option(
        help="METRIC[:TOLERANCE] (repeatable; default latency, error rate, cost): "
             "latency_ms ttft_ms cost_usd prompt_tokens completion_tokens error_rate "
             "escalation_rate rating judge_score")] = None,
    start: Annotated[bool, typer.Option(help="start it right away")] = False,
    actor: Actor = None,
) -> None:
    """Create an experiment (a draft unless --start)."""
    arms = []
    for item in arm:
        arm_name, _, rest = item.partition("=")
        config_name, _, weight = rest.partition(":")
        arms.append({"name": arm_name, "config": config_name,
                     **({"weight": weight} if weight else {})})
    try:
        plan = [float(s) for s in steps.split(",")] if steps else None
        guards = [{"metric": m, "tolerance": float(t or 0)}
                  for m, _, t in (g.partition(":") for g in guardrail)] if guardrail else None
    except ValueError:
        typer.echo(f"error: --steps and guardrail tolerances must be numbers, got "
                   f"{steps!r} {guardrail!r}", err=True)
        raise typer.Exit(2) from None

    def make(engine: Any) -> dict[str, Any]:
        made = store.create_experiment(
            engine, name, arms, actor=_actor(actor), kind=kind, unit=unit, tenants=tenant,
            steps=plan, step_seconds=step_seconds, min_samples=min_samples,
            guardrails=guards)
        if start:
            made = store.transition(engine, name, "start", actor=_actor(actor))
        return made

    _echo(_run(make))


@app.command("propose")
def propose(
    path: Annotated[Path, typer.Argument(help="proposed settings (YAML), e.g. the file "
                                              "optengine optimize writes")],
    prefix: Annotated[str | None, typer.Option(
        help="name prefix of the canaries and versions (default optimize-<UTC time>)")] = None,
    steps: Annotated[str, typer.Option(help="canary shares, e.g. 0.05,0.25,0.5,1")] = "",
    step_seconds: Annotated[float, typer.Option(help="least time per step")] = 300.0,
    min_samples: Annotated[int, typer.Option(help="least requests per arm per step")] = 200,
    start: Annotated[bool, typer.Option(help="start the canaries right away")] = True,
    actor: Actor = None,
) -> None:
    """Start proposed settings as canaries: one per part the gateway applies per request."""
    try:
        proposal = yaml.safe_load(path.read_text())
        plan = [float(s) for s in steps.split(",")] if steps else None
    except (OSError, yaml.YAMLError, ValueError) as exc:
        typer.echo(f"error: cannot read {path} / --steps: {exc}", err=True)
        raise typer.Exit(2) from None
    result = _run(lambda e: proposals.start_proposal(
        e, proposal, actor=_actor(actor), steps=plan, step_seconds=step_seconds,
        min_samples=min_samples, start=start, worker_pools=load_settings().worker_pools,
        prefix=prefix or f"optimize-{datetime.now(UTC):%Y%m%d-%H%M}"))
    _echo({"canaries": result.canaries, "skipped": result.skipped})
    if not result.canaries:
        raise typer.Exit(2)


@app.command("list")
def list_() -> None:
    """List experiments with their arms and last analysis."""
    _echo(_run(store.list_experiments))


@app.command("show")
def show(name: str) -> None:
    _echo(_run(lambda e: store.describe(e, name)))


def _action(action: str) -> Callable[..., None]:
    def command(name: str, reason: Annotated[str, typer.Option()] = "",
                actor: Actor = None) -> None:
        _echo(_run(lambda e: store.transition(e, name, action, actor=_actor(actor),
                                              reason=reason)))

    command.__doc__ = f"{action.capitalize()} an experiment."
    return command


for _name in ("start", "pause", "resume", "promote", "abort", "complete"):
    app.command(_name)(_action(_name))


@app.command("analyse")
def analyse() -> None:
    """One look now (what the experiments flow does every minute)."""
    _echo([vars(d) for d in _run(lambda e: controller.run_once(e, datetime.now(UTC)))])


@app.command("audit")
def audit(subject: Annotated[str | None, typer.Argument()] = None,
          limit: Annotated[int, typer.Option()] = 50) -> None:
    """Who changed which config or experiment, and when."""
    _echo(_run(lambda e: store.audit_log(e, subject, limit)))
