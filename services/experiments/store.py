"""Config versions and experiments in the store: validated writes, audited changes.

A config version is immutable once written (a change is a new version), and holds only
settings the gateway can change per request (``OVERRIDABLE``); anything else is refused.
An experiment's arms have weights that sum to 1; two live experiments (running, paused
or promoted) may not claim the same setting for overlapping tenants, whatever their unit,
since one request would then get two values for one setting. Every change goes to
``config_audit`` with who made it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from models import ConfigAudit, ConfigVersion, Experiment, ExperimentArm, ExperimentResult
from services.errors import Conflict, InvalidRequest, NotFound
from services.experiments.analysis import METRICS
from services.experiments.stats import DEFAULT_GUARDRAILS
from services.tokens import Policy

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
UNITS = ("tenant", "api_key", "header")
KINDS = ("ab", "canary")
LIVE = ("running", "paused", "promoted")  # statuses gateways apply
ENDED = ("rolled_back", "aborted", "completed")
DEFAULT_STEPS = (0.05, 0.25, 0.5, 1.0)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("on", "true", "1", "off", "false", "0"):
        return value.lower() in ("on", "true", "1")
    raise ValueError("must be true or false")


def _probability(value: Any) -> float:
    number = float(value)
    if not 0 < number <= 1:
        raise ValueError("must be in (0, 1]")
    return number


def _positive(value: Any) -> float:
    number = float(value)
    if not (number > 0 and math.isfinite(number)):
        raise ValueError("must be a positive number")
    return number


def _model(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 256:
        raise ValueError("must be a model name of 1-256 characters")
    return value


def _pool(value: Any) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise ValueError("must be a worker pool name (settings worker_pools) of 1-64 "
                         "a-z 0-9 . _ -")
    return value


def _token_policy(value: Any) -> str:
    return str(Policy.parse(str(value), param="token_optimization"))


# the settings a request can be given by an arm, and how each value is checked
OVERRIDABLE: dict[str, Callable[[Any], Any]] = {
    "cache_enabled": _bool,  # false: the arm neither reads nor writes the response cache
    "cache_semantic": _bool,  # semantic matching on/off (X-Cache-Semantic)
    "cache_semantic_min_probability": _probability,  # the verifier's threshold
    "token_optimization": _token_policy,  # off | lossless | budget=N | ratio=R
    "model": _model,  # the serving model (a routing tier name routes it)
    "worker_pool": _pool,  # the workers that serve it (settings worker_pools): a vLLM version
    "max_latency_ms": _positive,  # routing's latency budget (X-Max-Latency-Ms)
}


def validate_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise InvalidRequest(f"unknown setting(s) {unknown}: a config version may override "
                             f"only {sorted(OVERRIDABLE)}", param="overrides")
    clean = {}
    for key, value in overrides.items():
        try:
            clean[key] = OVERRIDABLE[key](value)
        except (ValueError, TypeError, InvalidRequest) as exc:
            message = exc.message if isinstance(exc, InvalidRequest) else str(exc)
            raise InvalidRequest(f"setting {key}: {message}", param=key) from None
    return clean


def _name(value: str, what: str) -> str:
    if not NAME.match(value or ""):
        raise InvalidRequest(f"{what} name {value!r} must be 1-64 of a-z 0-9 . _ - "
                             "(starting with a letter or digit)", param="name")
    return value


def audit(session: Session, actor: str, action: str, subject: str,
          detail: Mapping[str, Any] | None = None, at: datetime | None = None) -> None:
    session.add(ConfigAudit(actor=actor[:128], action=action, subject=subject,
                            detail=dict(detail) if detail else None, at=at or datetime.now(UTC)))


def check_pool(overrides: Mapping[str, Any], worker_pools: Collection[str] | None) -> None:
    """Refuse a ``worker_pool`` the settings do not define (when they are known)."""
    pool = overrides.get("worker_pool")
    if worker_pools is not None and pool is not None and pool not in worker_pools:
        raise InvalidRequest(f"setting worker_pool: no pool {pool!r} in the settings' "
                             f"worker_pools {sorted(worker_pools)}", param="worker_pool")


def create_config(engine: Engine, name: str, overrides: Mapping[str, Any], *, actor: str,
                  description: str | None = None,
                  worker_pools: Collection[str] | None = None) -> dict[str, Any]:
    """Write a config version. ``worker_pools``: the pools the settings define, when the
    caller knows them (admin API, CLI): a version naming another one is refused."""
    clean = validate_overrides(overrides)
    check_pool(clean, worker_pools)
    with Session(engine) as session, session.begin():
        if session.get(ConfigVersion, _name(name, "config version")) is not None:
            raise Conflict(f"config version {name!r} exists; versions are immutable: "
                           "write a new one", param="name")
        session.add(ConfigVersion(name=name, overrides=clean, description=description,
                                  created_by=actor))
        audit(session, actor, "config.create", name, {"overrides": clean})
    return {"name": name, "overrides": clean, "description": description}


def list_configs(engine: Engine) -> list[dict[str, Any]]:
    with Session(engine) as session:
        rows = session.scalars(select(ConfigVersion).order_by(ConfigVersion.created_at))
        return [{"name": r.name, "overrides": r.overrides, "description": r.description,
                 "created_at": r.created_at.isoformat(), "created_by": r.created_by}
                for r in rows]


def audit_log(engine: Engine, subject: str | None = None, limit: int = 100
              ) -> list[dict[str, Any]]:
    with Session(engine) as session:
        query = select(ConfigAudit).order_by(ConfigAudit.id.desc()).limit(limit)
        if subject:
            query = query.where(ConfigAudit.subject == subject)
        return [{"at": r.at.isoformat(), "actor": r.actor, "action": r.action,
                 "subject": r.subject, "detail": r.detail} for r in session.scalars(query)]


def _overlap(a: Sequence[str] | None, b: Sequence[str] | None) -> bool:
    return a is None or b is None or bool(set(a) & set(b))


def check_conflicts(session: Session, name: str, tenants: list[str] | None,
                     settings: list[str]) -> None:
    for other in session.scalars(select(Experiment).where(Experiment.status.in_(LIVE))):
        if other.name == name:
            continue
        shared = sorted(set(other.settings) & set(settings))
        if shared and _overlap(other.tenants, tenants):
            raise Conflict(f"experiment {other.name!r} ({other.status}) already sets {shared} "
                           "for these tenants: end it first", param="arms")


def check_pacing(steps: Sequence[float] | None, step_seconds: float, min_samples: int
                 ) -> list[float]:
    """The canary's steps (the default plan without ``steps``), after checking them and
    the least time and samples per step."""
    if min_samples < 30:
        raise InvalidRequest("min_samples must be at least 30 per arm", param="min_samples")
    if not step_seconds >= 0:
        raise InvalidRequest("step_seconds must be >= 0", param="step_seconds")
    plan = [float(s) for s in (steps or DEFAULT_STEPS)]
    if any(not 0 < s <= 1 for s in plan) or plan != sorted(set(plan)) or plan[-1] != 1.0:
        raise InvalidRequest("steps must rise strictly within (0, 1] and end at 1 (100%)",
                             param="steps")
    return plan


def create_experiment(
    engine: Engine, name: str, arms: Sequence[Mapping[str, Any]], *, actor: str,
    kind: str = "ab", unit: str = "tenant", tenants: Sequence[str] | None = None,
    steps: Sequence[float] | None = None, step_seconds: float = 300.0, min_samples: int = 200,
    guardrails: Sequence[Mapping[str, Any]] | None = None, alpha: float = 0.05,
) -> dict[str, Any]:
    """A draft experiment. ``arms``: ``[{"name", "config", "weight"}]``; a canary has
    exactly two, control first and the canary second, and its weights follow ``steps``."""
    _name(name, "experiment")
    if kind not in KINDS:
        raise InvalidRequest(f"kind must be one of {KINDS}", param="kind")
    if unit not in UNITS:
        raise InvalidRequest(f"unit must be one of {UNITS}", param="unit")
    if not 0 < alpha < 0.5:
        raise InvalidRequest("alpha must be in (0, 0.5)", param="alpha")
    plan: list[float] | None = check_pacing(steps if kind == "canary" else None,
                                            step_seconds, min_samples)
    if len(arms) < 2 or len({a.get("name") for a in arms}) != len(arms):
        raise InvalidRequest("an experiment needs at least two arms with distinct names",
                             param="arms")
    if kind == "canary":
        if len(arms) != 2:
            raise InvalidRequest("a canary has two arms: control, then canary", param="arms")
        weights = [1 - plan[0], plan[0]]
    else:
        plan = None  # an A/B test keeps its weights until it ends
        try:
            weights = [float(a["weight"]) for a in arms]
        except (KeyError, TypeError, ValueError):
            raise InvalidRequest("every arm needs a numeric weight", param="arms") from None
        if any(w < 0 for w in weights) or abs(sum(weights) - 1) > 1e-9:
            raise InvalidRequest(f"arm weights must be >= 0 and sum to 1, got {sum(weights)}",
                                 param="arms")
    guards = [dict(g) for g in (guardrails or [
        {"metric": g.metric, "tolerance": g.tolerance} for g in DEFAULT_GUARDRAILS])]
    for g in guards:
        if g.get("metric") not in METRICS:
            raise InvalidRequest(f"guardrail metric must be one of {METRICS}",
                                 param="guardrails")
        g["tolerance"] = float(g.get("tolerance", 0.0))
    with Session(engine) as session, session.begin():
        if session.get(Experiment, name) is not None:
            raise Conflict(f"experiment {name!r} exists", param="name")
        settings: set[str] = set()
        for arm in arms:
            _name(str(arm.get("name", "")), "arm")
            version = session.get(ConfigVersion, str(arm.get("config", "")))
            if version is None:
                raise InvalidRequest(f"arm {arm['name']}: unknown config version "
                                     f"{arm.get('config')!r}", param="arms")
            settings |= set(version.overrides)
        session.add(Experiment(
            name=name, kind=kind, status="draft", unit=unit,
            tenants=sorted(tenants) if tenants else None, settings=sorted(settings),
            steps=plan, step=0, step_seconds=step_seconds, min_samples=min_samples,
            guardrails=guards, alpha=alpha, created_by=actor,
        ))
        session.flush()
        for i, (arm, weight) in enumerate(zip(arms, weights, strict=True)):
            session.add(ExperimentArm(experiment=name, name=arm["name"], position=i,
                                      config_version=arm["config"], weight=weight))
        audit(session, actor, "experiment.create", name,
              {"kind": kind, "unit": unit, "tenants": tenants, "arms": [dict(a) for a in arms],
               "steps": plan})
    return describe(engine, name)


def _get(session: Session, name: str) -> Experiment:
    row = session.get(Experiment, name)
    if row is None:
        raise NotFound(f"no experiment {name!r}", param="name")
    return row


def arms_of(session: Session, name: str) -> list[ExperimentArm]:
    return list(session.scalars(select(ExperimentArm).where(ExperimentArm.experiment == name)
                                .order_by(ExperimentArm.position)))


def set_canary_share(session: Session, exp: Experiment, share: float) -> None:
    control, canary = arms_of(session, exp.name)
    control.weight, canary.weight = 1 - share, share


def transition(engine: Engine, name: str, action: str, *, actor: str, reason: str = "",
               now: datetime | None = None) -> dict[str, Any]:
    """Manual (or flow) control: start, pause, resume, promote, abort. Promote puts a
    canary at 100% (it stays applied until aborted); abort and rollback drop the
    experiment from every gateway at their next refresh."""
    now = now or datetime.now(UTC)
    allowed = {
        "start": ("draft",), "pause": ("running",), "resume": ("paused",),
        "promote": ("running", "paused"), "abort": LIVE + ("draft",),
        "rollback": ("running", "paused"), "complete": ("running", "paused"),
    }
    if action not in allowed:
        raise InvalidRequest(f"action must be one of {sorted(allowed)}", param="action")
    with Session(engine) as session, session.begin():
        exp = _get(session, name)
        if exp.status not in allowed[action]:
            raise Conflict(f"experiment {name!r} is {exp.status}: cannot {action}",
                           param="action")
        if action == "start":
            check_conflicts(session, name, exp.tenants, exp.settings)
            exp.status, exp.started_at, exp.step_started_at = "running", now, now
        elif action == "pause":
            exp.status = "paused"
        elif action == "resume":
            exp.status, exp.step_started_at = "running", now
        elif action == "promote":
            if exp.kind != "canary":
                raise Conflict("only a canary can be promoted; end an A/B test with "
                               "complete and start a canary of the winner", param="action")
            set_canary_share(session, exp, 1.0)
            exp.status, exp.step, exp.ended_at = "promoted", len(exp.steps or []) - 1, now
        elif action == "rollback":
            exp.status, exp.ended_at = "rolled_back", now
        elif action == "complete":
            exp.status, exp.ended_at = "completed", now
        else:
            exp.status, exp.ended_at = "aborted", now
        exp.reason = (reason or f"{action} by {actor}")[:512]
        audit(session, actor, f"experiment.{action}", name, {"reason": reason}, at=now)
    return describe(engine, name)


def describe(engine: Engine, name: str) -> dict[str, Any]:
    with Session(engine) as session:
        exp = _get(session, name)
        last = session.scalars(select(ExperimentResult).where(
            ExperimentResult.experiment == name).order_by(ExperimentResult.id.desc()).limit(1)
        ).first()
        return {
            "name": exp.name, "kind": exp.kind, "status": exp.status, "unit": exp.unit,
            "tenants": exp.tenants, "settings": exp.settings, "steps": exp.steps,
            "step": exp.step, "step_seconds": exp.step_seconds,
            "min_samples": exp.min_samples, "guardrails": exp.guardrails, "alpha": exp.alpha,
            "reason": exp.reason, "created_by": exp.created_by,
            "started_at": exp.started_at.isoformat() if exp.started_at else None,
            "arms": [{"name": a.name, "config": a.config_version, "weight": a.weight}
                     for a in arms_of(session, name)],
            "last_result": {"at": last.at.isoformat(), "decision": last.decision,
                            "reason": last.reason, "detail": last.detail} if last else None,
        }


def list_experiments(engine: Engine) -> list[dict[str, Any]]:
    with Session(engine) as session:
        names = list(session.scalars(select(Experiment.name).order_by(Experiment.created_at)))
    return [describe(engine, n) for n in names]
