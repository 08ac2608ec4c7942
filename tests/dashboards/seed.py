"""A metrics store with known contents, for the dashboard's tests: the expected figures
are computed here from the rows inserted, independently of ``dashboards.data``."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from models import (
    Alert,
    ApiKey,
    CacheReport,
    CostReport,
    CostRollupState,
    KeyCostRollup,
    RequestLog,
)
from models.tables import (
    ConfigVersion,
    Experiment,
    ExperimentArm,
    ExperimentResult,
    ForecastScore,
    RouterVersion,
    ScalingDecision,
)
from services.costs.reports import live_summary, pricing
from services.costs.reports.rollup import WATERMARK
from services.settings import load_settings

TENANTS = ("acme", "globex")
MODELS = ("tiny-llama", "gemma-3-270m")
LAYERS = ("L1", "L2", "MISS", "MISS", "SEMANTIC", None)


@dataclass
class Seeded:
    now: datetime
    rows: list[dict[str, Any]] = field(default_factory=list)

    def select(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.rows if tenant is None or r["tenant"] == tenant]

    def requests(self, tenant: str | None = None) -> int:
        return len(self.select(tenant))

    def errors(self, tenant: str | None = None) -> int:
        return sum(1 for r in self.select(tenant) if r["status_code"] >= 400)

    def cost(self, tenant: str | None = None) -> float:
        return sum(r["cost_usd"] or 0 for r in self.select(tenant))

    def baseline(self, tenant: str | None = None) -> float:
        """The rows' own baselines summed: not what the pages show (``priced_baseline``)."""
        return sum(r["baseline_cost_usd"] or 0 for r in self.select(tenant))

    # the baseline as the cost rollup prices it (an escalated attempt's counted once, on
    # its request's final row): what the Costs page shows, set by ``seed``
    priced_baseline: float = 0.0

    def latency_p50(self) -> float:
        ok = [r["latency_ms"] for r in self.rows if r["status_code"] < 400]
        return statistics.quantiles(ok, n=100, method="inclusive")[49]

    def tokens_saved(self) -> int:
        return sum(r["prompt_tokens_before_optimization"] - r["prompt_tokens_after_optimization"]
                   for r in self.rows if r["prompt_tokens_before_optimization"] is not None)

    # the control loop's rows (seed_control_loop): what the Capacity and Experiments
    # pages must show
    models_scaled: int = 2
    desired_replicas: int = 5  # tiny-llama's newest decision 2, gemma-3-270m's 3
    scaling_decisions: int = 4
    not_actuated: int = 1
    newest_scores: int = 2  # tiny-llama's newest backtest: two forecasters

    def escalations(self) -> int:
        return sum(1 for r in self.rows
                   if (r["route_reason"] or "").startswith("cascade: cheap attempt escalated"))


def seed(engine: Engine, *, count: int = 60, now: datetime | None = None) -> Seeded:
    """``count`` requests over the last 50 minutes, two tenants and two models, with
    errors, cache hits, token savings, cascade outcomes; a cache report, an active router
    version and two alerts (one firing)."""
    now = now or datetime.now(UTC)
    seeded = Seeded(now=now)
    for i in range(count):
        error = i % 10 == 7
        layer = None if error else LAYERS[i % len(LAYERS)]
        hit = layer in ("L1", "L2", "SEMANTIC")
        before = 100 + i if i % 3 == 0 else None
        reason = None
        if i % 4 == 1:
            reason = ("cascade: cheap attempt escalated, score low" if i % 8 == 1
                      else "router 0.2 < 0.5; cascade: accepted")
        seeded.rows.append({
            "id": f"req-{i:04d}",
            "created_at": now - timedelta(seconds=30 + 50 * i),
            "tenant": TENANTS[i % 2],
            "endpoint": "chat.completions",
            "model_requested": MODELS[i % 2],
            "model_served": MODELS[(i // 2) % 2],
            "worker": None if hit or error else f"http://127.0.0.1:80{i % 3:02d}",
            "cache_layer": layer,
            "route_reason": reason,
            "status_code": 500 if error else 200,
            "error_type": "upstream_error" if error else None,
            "prompt_tokens": 120 + i,
            "completion_tokens": 0 if error else 10 + i,
            "prompt_tokens_before_optimization": before,
            "prompt_tokens_after_optimization": None if before is None else before - 20,
            "token_stages": None if before is None else {"whitespace": 5, "dedup": 15},
            "ttft_ms": None if error else 20.0 + 3 * i,
            "latency_ms": None if error else 200.0 + 7 * i,
            "cost_usd": 0.0 if hit or error else 0.0001 * (1 + i % 5),
            "baseline_cost_usd": 0.0 if error else 0.0005 * (1 + i % 5),
        })
    with engine.begin() as conn:
        conn.execute(RequestLog.__table__.insert(), seeded.rows)
        conn.execute(CacheReport.__table__.insert(), [{
            "created_at": now - timedelta(minutes=5), "window_start": now - timedelta(hours=1),
            "window_end": now - timedelta(minutes=5), "lookups": 50, "hits": 30,
            "overall_hit_rate": 0.6, "saved_usd": 0.02,
            "layers": {"L1": {"lookups": 50, "hits": 20, "hit_rate": 0.4, "target": 0.95,
                              "meets_target": False},
                       "L2": {"lookups": 30, "hits": 10, "hit_rate": 1 / 3, "target": 0.85,
                              "meets_target": False}},
            "purged_entries": 0, "warmed_entries": 0, "ttl_recommendations": {},
        }])
        conn.execute(RouterVersion.__table__.insert(), [{
            "version": "router-v7", "created_at": now - timedelta(days=1), "model": b"npz",
            "labels": 1234, "metrics": {"auc": 0.8}, "active": True,
            "activated_at": now - timedelta(hours=20),
        }])
        conn.execute(Alert.__table__.insert(), [
            {"created_at": now - timedelta(minutes=10), "source": "cache_optimization",
             "severity": "warning", "message": "L1 hit rate 40% below its 95% target",
             "details": {}, "resolved_at": None},
            {"created_at": now - timedelta(minutes=40), "source": "model_routing",
             "severity": "critical", "message": "escalations above 30%", "details": {},
             "resolved_at": now - timedelta(minutes=20)},
        ])
        conn.execute(CostReport.__table__.insert(), [{
            "created_at": now - timedelta(minutes=3), "kind": "daily", "tenant": None,
            "period_start": now - timedelta(days=1), "period_end": now,
            "markdown": "# Daily cost report\n", "csv": "tenant,cost_usd\nacme,0.0123\n",
            "summary": {"cost_usd": 0.0123}}])
    seed_control_loop(engine, now)
    settings = pricing(load_settings())
    seeded.priced_baseline = live_summary(engine, settings.catalog, settings.hosted,
                                          now - timedelta(hours=1), now).baseline_usd
    return seeded


def _decision(now: datetime, minutes: int, model: str, current: int, desired: int,
              demand: float, **extra: Any) -> dict[str, Any]:
    at = now - timedelta(minutes=minutes)
    next_bin = (at + timedelta(seconds=10)).replace(microsecond=0)
    return {"decided_at": at, "model": model, "current_replicas": current,
            "desired_replicas": desired, "reactive_replicas": desired,
            "predictive_replicas": desired, "forecaster": "holt",
            "reason": f"forecast upper {demand * 1.5:.0f} tok/s needs {desired}",
            "inputs": {"demand_tokens_s": demand, "forecast_upper_tokens_s": demand * 1.5,
                       "next_bin": next_bin.isoformat(), "next_bin_forecast": demand * 10,
                       "recent_wape": 0.12, "forecaster": "holt"},
            "actuated": True, "actuator_error": None, **extra}


def seed_control_loop(engine: Engine, now: datetime) -> None:
    """Scaling decisions and backtest scores (services.forecasting's tables), two live
    experiments (an A/B test and a canary at its second step) and one that ended."""
    with engine.begin() as conn:
        conn.execute(ScalingDecision.__table__.insert(), [
            _decision(now, 20, "tiny-llama", 1, 1, 400.0),
            _decision(now, 10, "tiny-llama", 1, 2, 900.0),
            _decision(now, 2, "tiny-llama", 2, 2, 950.0, actuated=False,
                      actuator_error="kubernetes API answered 503"),
            _decision(now, 5, "gemma-3-270m", 2, 3, 300.0),
        ])
        conn.execute(ForecastScore.__table__.insert(), [
            {"evaluated_at": now - timedelta(hours=h), "model": "tiny-llama",
             "series": "tokens_10s", "forecaster": name, "horizon_s": 60, "wape": wape,
             "smape": wape, "coverage": 0.9, "origins": 60, "chosen": name == "holt"}
            for h in (3, 1) for name, wape in (("holt", 0.2 + h / 10), ("ewma", 0.5))
        ])
        conn.execute(ConfigVersion.__table__.insert(), [
            {"name": n, "overrides": {"cache_enabled": n == "cached"}, "created_by": "test",
             "created_at": now - timedelta(days=1)} for n in ("base", "cached")])
        # every row names every column: an executemany takes its columns from the first
        common = {"unit": "tenant", "settings": ["cache_enabled"], "guardrails": [],
                  "created_by": "test", "created_at": now - timedelta(hours=2),
                  "steps": None, "step": 0, "step_seconds": 300.0, "step_started_at": None,
                  "ended_at": None, "reason": None}
        conn.execute(Experiment.__table__.insert(), [
            {**common, "name": "cache-ab", "kind": "ab", "status": "running",
             "started_at": now - timedelta(hours=1)},
            {**common, "name": "cache-canary", "kind": "canary", "status": "running",
             "steps": [0.05, 0.25, 0.5, 1.0], "step": 1, "step_seconds": 300.0,
             "started_at": now - timedelta(minutes=30),
             "step_started_at": now - timedelta(minutes=4)},
            {**common, "name": "old-ab", "kind": "ab", "status": "completed",
             "started_at": now - timedelta(hours=2), "ended_at": now - timedelta(minutes=15),
             "reason": "treatment won"},
        ])
        conn.execute(ExperimentArm.__table__.insert(), [
            {"experiment": e, "name": arm, "position": i, "config_version": config,
             "weight": weight}
            for e, weights in (("cache-ab", (0.5, 0.5)), ("cache-canary", (0.75, 0.25)),
                               ("old-ab", (0.5, 0.5)))
            for i, (arm, config, weight) in enumerate(
                zip(("control", "treatment"), ("base", "cached"), weights, strict=True))
        ])
        conn.execute(ExperimentResult.__table__.insert(), [{
            "experiment": "cache-canary", "at": now - timedelta(minutes=4), "step": 0,
            "decision": "advance", "reason": "guardrails held over 412 units",
            "detail": {}}])


# the routing config's budget of a key the store does not hold (a static key)
STATIC_KEY_BUDGETS = {"budgets": {"key:static:ops": {"limit_usd": 0.2, "period": "month"}}}


@dataclass(frozen=True)
class SeededKeys:
    """Stored keys (name -> id) and their hourly spend rows in ``key_cost_rollups``:
    ``ci`` ($0.50 total; this hour and two days ago), ``web`` (no budget; this hour),
    ``nightly`` (globex, $1/day; two days ago only), ``old`` (revoked, $1/month; two days
    ago) and ``static:ops`` (no stored key, ``STATIC_KEY_BUDGETS``; this hour)."""

    hour: datetime  # the hour holding ``now``
    ids: dict[str, str]


def seed_keys(engine: Engine, now: datetime) -> SeededKeys:
    hour = now.replace(minute=0, second=0, microsecond=0)
    earlier = hour - timedelta(days=2)
    made = {"ci": ("acme", 0.5, "total", None), "web": ("acme", None, "month", None),
            "nightly": ("globex", 1.0, "day", None),
            "old": ("acme", 1.0, "month", now - timedelta(days=1))}
    ids = {name: str(i) for i, name in enumerate(made, start=1)}
    spend = [("ci", hour, 3, 1, 0.12), ("ci", earlier, 2, 0, 0.08), ("web", hour, 5, 0, 0.30),
             ("nightly", earlier, 4, 0, 0.40), ("old", earlier, 1, 0, 0.01),
             ("static:ops", hour, 2, 0, 0.05)]
    with engine.begin() as conn:
        conn.execute(ApiKey.__table__.insert(), [
            {"id": int(ids[name]), "key_hash": f"{name:0>64}", "key_prefix": f"oe-{name}",
             "tenant": tenant, "name": name, "budget_usd": limit, "budget_period": period,
             "created_at": now - timedelta(days=30), "revoked_at": revoked}
            for name, (tenant, limit, period, revoked) in made.items()])
        conn.execute(KeyCostRollup.__table__.insert(), [
            {"hour": at, "api_key_id": ids.get(name, name),
             "tenant": made[name][0] if name in made else "acme",
             "requests": requests, "errors": errors, "cost_usd": cost}
            for name, at, requests, errors, cost in spend])
        conn.execute(CostRollupState.__table__.insert(), [
            {"name": WATERMARK, "watermark": now, "updated_at": now}])
    return SeededKeys(hour, ids)
