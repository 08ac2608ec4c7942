"""What the control loop decided, read from the tables its flows write: the autoscaler's
decisions with the forecasts and measurements behind them (``scaling_decisions``,
``forecast_scores``: services.forecasting) and the live experiments and canaries
(``experiments`` and their results: services.experiments, read through its own
``describe``). Both are small tables, read with a limit."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, or_, select

from dashboards.data import Filters, StoreNotReady, has_table, utc
from models.tables import Experiment, ForecastScore, ScalingDecision
from services.experiments import describe
from services.forecasting.control import BIN_S

LIVE = ("running", "paused")


def _require(engine: Engine, table: str, fix: str) -> None:
    if not has_table(engine, table):
        raise StoreNotReady(f"The store has no {table} table yet: run `optengine migrate`. "
                            f"{fix}")


# -- capacity ------------------------------------------------------------------------------


@dataclass
class Capacity:
    decisions: list[dict[str, Any]]  # in the range, oldest first
    latest: list[dict[str, Any]]  # the newest decision per model
    demand: list[dict[str, Any]]  # long form: measured demand and forecasts, tokens/s
    scores: list[dict[str, Any]]  # each model's newest backtest

    @property
    def desired_replicas(self) -> int:
        return sum(d["desired"] for d in self.latest)

    @property
    def not_actuated(self) -> int:
        return sum(1 for d in self.decisions if not d["actuated"])


def capacity(engine: Engine, filters: Filters, *, limit: int = 5000) -> Capacity:
    """Scaling decisions of the range (the newest ``limit``) and the latest backtest
    scores; the model filter narrows both."""
    _require(engine, ScalingDecision.__tablename__,
             "The demand_forecasting flow writes its decisions there.")
    start, end = filters.window
    query = select(ScalingDecision).where(ScalingDecision.decided_at >= start,
                                          ScalingDecision.decided_at < end)
    scores = select(ForecastScore).order_by(ForecastScore.evaluated_at.desc()).limit(500)
    if filters.model:
        query = query.where(ScalingDecision.model == filters.model)
        scores = scores.where(ForecastScore.model == filters.model)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(ScalingDecision.decided_at.desc()).limit(limit)
                            ).mappings().all()
        score_rows = conn.execute(scores).mappings().all()
    decisions = [_decision(r) for r in reversed(rows)]
    latest: dict[str, dict[str, Any]] = {}
    for d in decisions:
        latest[d["model"]] = d
    return Capacity(decisions=decisions, latest=sorted(latest.values(),
                                                       key=lambda d: d["model"]),
                    demand=[point for d in decisions for point in _demand(d)],
                    scores=_newest_scores(score_rows))


def _decision(row: Any) -> dict[str, Any]:
    inputs = row["inputs"] or {}
    return {
        "time": utc(row["decided_at"]), "model": row["model"],
        "current": row["current_replicas"], "desired": row["desired_replicas"],
        "reactive": row["reactive_replicas"], "predictive": row["predictive_replicas"],
        "forecaster": row["forecaster"], "recent_wape": inputs.get("recent_wape"),
        "demand_tokens_s": inputs.get("demand_tokens_s"),
        "forecast_upper_tokens_s": inputs.get("forecast_upper_tokens_s"),
        "next_bin": inputs.get("next_bin"), "next_bin_forecast": inputs.get("next_bin_forecast"),
        "actuated": bool(row["actuated"]), "actuator_error": row["actuator_error"],
        "reason": row["reason"],
    }


def _demand(d: dict[str, Any]) -> list[dict[str, Any]]:
    """The decision's measured demand and its forecasts as points of one chart: the
    forecast mean of the next bin is drawn at that bin's time, so it lines up with the
    demand measured then."""
    points = []
    if d["demand_tokens_s"] is not None:
        points.append({"time": d["time"], "model": d["model"], "series": "measured",
                       "tokens_s": float(d["demand_tokens_s"])})
    if d["forecast_upper_tokens_s"] is not None:
        points.append({"time": d["time"], "model": d["model"], "series": "forecast upper",
                       "tokens_s": float(d["forecast_upper_tokens_s"])})
    if d["next_bin"] is not None and d["next_bin_forecast"] is not None:
        points.append({"time": utc(datetime.fromisoformat(d["next_bin"])),
                       "model": d["model"], "series": "forecast mean",
                       "tokens_s": float(d["next_bin_forecast"]) / BIN_S})
    return points


def _newest_scores(rows: Any) -> list[dict[str, Any]]:
    newest: dict[str, datetime] = {}
    out = []
    for r in rows:  # newest first
        at = newest.setdefault(r["model"], r["evaluated_at"])
        if r["evaluated_at"] == at:
            out.append({"model": r["model"], "series": r["series"],
                        "forecaster": r["forecaster"], "horizon_s": r["horizon_s"],
                        "wape": r["wape"], "smape": r["smape"], "coverage": r["coverage"],
                        "origins": r["origins"], "chosen": bool(r["chosen"]),
                        "evaluated_at": utc(r["evaluated_at"])})
    return sorted(out, key=lambda s: (s["model"], s["horizon_s"], s["wape"] is None,
                                      s["wape"] or 0.0))


# -- experiments ---------------------------------------------------------------------------


@dataclass
class Experiments:
    live: list[dict[str, Any]] = field(default_factory=list)  # running or paused
    ended: list[dict[str, Any]] = field(default_factory=list)  # ended in the range

    def count(self, kind: str, status: str = "running") -> int:
        return sum(1 for e in self.live if e["kind"] == kind and e["status"] == status)


def experiments(engine: Engine, filters: Filters, *, limit: int = 100) -> Experiments:
    """Live experiments and canaries with their current step and latest analysis, and
    those that ended in the range (the newest ``limit`` of each)."""
    _require(engine, Experiment.__tablename__,
             "Experiments are created with `optengine experiments create`.")
    start, end = filters.window
    query = (select(Experiment.name, Experiment.status).where(or_(
        Experiment.status.in_(LIVE),
        (Experiment.ended_at >= start) & (Experiment.ended_at < end)))
        .order_by(Experiment.created_at.desc()).limit(2 * limit))
    with engine.connect() as conn:
        names = conn.execute(query).all()
    result = Experiments()
    for name, status in names:
        target = result.live if status in LIVE else result.ended
        if len(target) < limit:
            target.append(_experiment(describe(engine, name)))
    return result


def _experiment(e: dict[str, Any]) -> dict[str, Any]:
    steps = e["steps"] or []
    last = e["last_result"] or {}
    started = e["started_at"]
    return {
        "name": e["name"], "kind": e["kind"], "status": e["status"],
        "step": f"{e['step'] + 1} of {len(steps)}" if steps else "",
        "canary_share": steps[e["step"]] if steps else None,
        "arms": ", ".join(f"{a['name']}={a['config']} ({a['weight']:.0%})" for a in e["arms"]),
        "started": None if started is None else utc(datetime.fromisoformat(started)),
        "step_length": str(timedelta(seconds=e["step_seconds"])) if steps else "",
        "last_decision": last.get("decision"), "last_reason": last.get("reason") or e["reason"],
        "analysed": None if not last else utc(datetime.fromisoformat(last["at"])),
    }


__all__ = ["Capacity", "Experiments", "capacity", "experiments"]
