"""The canary controller: one look at every running experiment, and what follows.

Each look reads the current step's requests from ``request_log`` per arm, compares
the treatment with control on the experiment's guardrails (``analysis.evaluate``:
always-valid p-values, confidence sequences, family-wise alpha) and decides:

- ``rollback``: a guardrail is breached (the treatment is worse beyond its tolerance at
  every value the confidence sequence allows): the experiment ends and gateways drop it
  at their next refresh, so every unit is back on the default config;
- ``hold``: too few samples in an arm (``min_samples``), the step's time
  (``step_seconds``) not over, a sample-ratio mismatch (p < 0.001: assignment or logging
  is broken, so no estimate is trusted), a paused experiment, or an A/B test (those end
  by hand);
- ``advance``: a canary moves to its next share; reaching 100% is ``promote``.

No data is never a pass: an arm with no rows holds the step however long it lasts, and
a store that cannot be read changes nothing (``run_once`` reports it and returns).
Every look is written to ``experiment_results`` with the counts, effects, confidence
bounds and p-values; a rollback also raises a critical ``alerts`` row.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from models import Alert, Experiment, ExperimentResult, RequestLog, RequestRating
from services.experiments.analysis import ArmData, evaluate, guardrail
from services.experiments.stats import sample_ratio_mismatch
from services.experiments.store import arms_of, audit, set_canary_share

log = logging.getLogger(__name__)

SRM_P = 0.001
ACTOR = "flow:experiments"


@dataclass
class Decision:
    experiment: str
    decision: str  # hold | advance | promote | rollback
    reason: str
    step: int
    detail: dict[str, Any] = field(default_factory=dict)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite drops the zone


def _number(value: float | int | None) -> float:
    return math.nan if value is None else float(value)


def read_arms(session: Session, name: str, arm_names: list[str], since: datetime,
              unit: str = "header") -> tuple[dict[str, ArmData], dict[str, int]]:
    """Per-arm data of requests logged since ``since``: server errors (5xx) out of all
    requests; per answered request its latency, cost, TTFT, tokens, the cascade's verdict
    and score and the user's rating (``request_ratings``); and the units seen per arm:
    distinct tenants or API keys, or requests for header units (the log does not keep
    the header; those units are many and small, users, so requests stand in)."""
    log_ = RequestLog
    rows = session.execute(
        select(log_.experiment_arms, log_.status_code, log_.tenant, log_.api_key_id,
               log_.latency_ms, log_.cost_usd, log_.ttft_ms, log_.prompt_tokens,
               log_.completion_tokens, log_.prompt_tokens_before_optimization,
               log_.cascade_decision, log_.cascade_score, RequestRating.score)
        .outerjoin(RequestRating, RequestRating.request_id == log_.id)
        .where(log_.created_at >= since, log_.experiment_arms.like(f"%{name}=%"))).all()
    answered: dict[str, list[list[float]]] = {a: [] for a in arm_names}
    counts = {a: {"requests": 0, "errors": 0, "escalations": 0, "cascaded": 0,
                  "ratings": 0, "rating_sum": 0.0} for a in arm_names}
    units: dict[str, set[str | None]] = {a: set() for a in arm_names}
    for (arms, status, tenant, key, latency, cost, ttft, prompt, completion, before,
         cascade, judge, rating) in rows:
        arm = next((p.partition("=")[2] for p in arms.split(",")
                    if p.partition("=")[0] == name), None)
        if arm not in answered:
            continue
        if unit != "header":
            units[arm].add(tenant if unit == "tenant" else key)
        count = counts[arm]
        count["requests"] += 1
        count["errors"] += status >= 500
        if status != 200:
            continue
        answered[arm].append([_number(v) for v in (
            latency, cost, ttft, prompt, completion,
            before if before is not None else prompt,
            judge if cascade is not None else None)])
        if cascade is not None:
            count["cascaded"] += 1
            count["escalations"] += cascade == "escalated"
        if rating is not None:
            count["ratings"] += 1
            count["rating_sum"] += rating
    data = {}
    for arm, values in answered.items():
        cols = np.array(values, dtype=float).reshape(-1, 7).T
        data[arm] = ArmData(
            latency_ms=cols[0], cost_usd=cols[1], ttft_ms=cols[2], prompt_tokens=cols[3],
            completion_tokens=cols[4], tokens_in=cols[5],
            judge_scores=cols[6][np.isfinite(cols[6])], **counts[arm])
    if unit == "header":
        return data, {a: d.requests for a, d in data.items()}
    return data, {a: len(u) for a, u in units.items()}


def analyse(session: Session, exp: Experiment, now: datetime) -> Decision:
    arms = arms_of(session, exp.name)
    since = _aware(exp.step_started_at or exp.started_at or now)
    data, unit_counts = read_arms(session, exp.name, [a.name for a in arms], since, exp.unit)
    control = arms[0]
    guards = [guardrail(g["metric"], float(g.get("tolerance", 0.0))) for g in exp.guardrails]
    detail: dict[str, Any] = {"since": since.isoformat(), "arms": {
        a.name: {"weight": a.weight, "requests": data[a.name].requests,
                 "errors": data[a.name].errors, **data[a.name].summary()} for a in arms},
        "comparisons": {}}
    p_values = dict(exp.p_values or {})
    breached: list[str] = []
    for arm in arms[1:]:
        if arm.weight <= 0 and exp.kind == "ab":
            continue
        result = evaluate(data[control.name], data[arm.name], guards, alpha=exp.alpha,
                          previous_p={k.partition("/")[2]: v for k, v in p_values.items()
                                      if k.startswith(f"{arm.name}/")})
        detail["comparisons"][arm.name] = [c.as_dict() for c in result.comparisons]
        for c in result.comparisons:
            p_values[f"{arm.name}/{c.metric}"] = c.p_value
            if c.metric in result.breached:
                breached.append(f"{arm.name} {c.metric} {c.effect:+.1%} "
                                f"[{c.ci_low:+.1%}, {c.ci_high:+.1%}]")
    exp.p_values = p_values
    weights = {a.name: a.weight for a in arms}
    srm = sample_ratio_mismatch(unit_counts, weights)
    detail["srm_p"] = srm
    step = exp.step
    if breached:
        return Decision(exp.name, "rollback", "guardrail breached: " + "; ".join(breached),
                        step, detail)
    if exp.status == "paused":
        return Decision(exp.name, "hold", "paused", step, detail)
    if exp.kind != "canary":
        return Decision(exp.name, "hold", "A/B test: no guardrail breached; end it by hand",
                        step, detail)
    fewest = min(data[a.name].requests for a in arms if a.weight > 0)
    if fewest < exp.min_samples:
        return Decision(exp.name, "hold", f"waiting for samples: {fewest} of "
                        f"{exp.min_samples} in the smallest arm", step, detail)
    if srm < SRM_P:
        return Decision(exp.name, "hold", f"sample ratio mismatch (p={srm:.2g}): "
                        "assignment or logging is off", step, detail)
    elapsed = (now - since).total_seconds()
    if elapsed < exp.step_seconds:
        return Decision(exp.name, "hold", f"step time {elapsed:.0f} of {exp.step_seconds:.0f}"
                        " s", step, detail)
    steps = exp.steps or [1.0]
    nxt = steps[min(step + 1, len(steps) - 1)]
    return Decision(exp.name, "promote" if nxt >= 1.0 else "advance",
                    f"step {steps[step]:.0%} passed; to {nxt:.0%}", step + 1, detail)


def apply(session: Session, exp: Experiment, decision: Decision, now: datetime) -> None:
    if decision.decision == "rollback":
        exp.status, exp.ended_at, exp.reason = "rolled_back", now, decision.reason[:512]
        session.add(Alert(source="experiments", severity="critical", created_at=now,
                          message=f"experiment {exp.name} rolled back: {decision.reason}",
                          details={"experiment": exp.name, "step": exp.step}))
    elif decision.decision in ("advance", "promote"):
        steps = exp.steps or [1.0]
        exp.step = min(decision.step, len(steps) - 1)
        set_canary_share(session, exp, steps[exp.step])
        exp.step_started_at, exp.p_values = now, {}
        if decision.decision == "promote":
            exp.status, exp.ended_at = "promoted", now
        exp.reason = decision.reason[:512]
    else:
        return
    audit(session, ACTOR, f"experiment.{decision.decision}", exp.name,
          {"reason": decision.reason, "step": exp.step}, at=now)


def run_once(engine: Engine, now: datetime | None = None) -> list[Decision]:
    """Analyse every running or paused experiment, act on it and record the look.
    A store that cannot be read or written changes nothing: the steps are held."""
    now = now or datetime.now(UTC)
    decisions = []
    try:
        with Session(engine) as session:
            names = list(session.scalars(select(Experiment.name).where(
                Experiment.status.in_(("running", "paused")))))
        for name in names:
            with Session(engine) as session, session.begin():
                exp = session.get(Experiment, name, with_for_update=True)
                if exp is None or exp.status not in ("running", "paused"):
                    continue
                decision = analyse(session, exp, now)
                apply(session, exp, decision, now)
                session.add(ExperimentResult(
                    experiment=name, at=now, step=exp.step, decision=decision.decision,
                    reason=decision.reason[:512], detail=_json_safe(decision.detail)))
            decisions.append(decision)
    except SQLAlchemyError as exc:
        log.warning("experiments: store unreachable, every step held: %s", exc)
        decisions.append(Decision("*", "hold", f"store unreachable: {type(exc).__name__}", -1))
    return decisions


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
