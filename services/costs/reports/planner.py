"""The optimisation planner (``optengine optimize``): what each lever that is off would
save, per tenant, estimated from the stored traffic, with the method of each estimate.

Two levers are estimated from what ``request_log`` holds, each only for tenants where it
was off in the window:

* **exact response cache** (off for a tenant when none of its rows went through a cache
  lookup: no hit and no ``MISS``): every row whose prompt (``prompt_hash``), model,
  endpoint and ``max_tokens`` were already seen earlier in the window would have been a
  hit, and its actual cost would not have been paid. Assumes the cache's TTL covers the
  window and that the requests are cacheable (temperature 0, or opted in);
* **token optimisation** (off for a tenant when its rows carry no policy or ``off``):
  the reduction the latest ``lossless`` ``token_reports`` run measured, applied to the
  tenant's prompt tokens at each served model's input price (models without a price
  are left out and named).

Routing, cascade and batch are estimated in ``plan_routing`` (its docstring holds their
method). Self-hosting is not: its price depends on hardware the store knows nothing of.
The semantic cache is not either: the store keeps prompt hashes, not the texts or
embeddings that would tell which different prompts would have matched. Estimates are
per window and per average month (window x 30.44 days / window length), ranked by
monthly saving; ``proposed_settings`` turns them into the YAML settings that enable the
levers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from models import RequestLog, TokenReport
from services.caching import HIT_LAYERS
from services.costs.catalog import PriceCatalog
from services.costs.rates import UnknownModelPrice
from services.costs.reports.plan_routing import RoutingLevers, active_router_share
from services.costs.reports.read import check_period
from services.costs.reports.roi import monthly_rate
from services.routing.config import RoutingConfig

_CACHE_RAN = HIT_LAYERS | {"MISS"}


@dataclass(frozen=True, slots=True)
class LeverEstimate:
    tenant: str
    lever: str
    window_saving_usd: float
    monthly_saving_usd: float
    method: str


def plan(engine: Engine, catalog: PriceCatalog, since: datetime, until: datetime,
         routing: RoutingConfig | None = None) -> list[LeverEstimate]:
    """Estimates for ``[since, until)``, largest monthly saving first (routing and cascade
    only with a ``routing`` config: its tiers say what the cheap model is)."""
    check_period(since, until)
    days = (until - since).total_seconds() / 86400
    c = RequestLog.__table__.c
    query = (select(c.tenant, c.endpoint, c.model_requested, c.model_served, c.max_tokens,
                    c.prompt_hash, c.cache_layer, c.token_policy, c.prompt_tokens, c.cost_usd,
                    c.status_code, c.route_reason, c.stream, c.completion_tokens,
                    c.baseline_cost_usd)
             .where(c.created_at >= since, c.created_at < until).order_by(c.created_at))
    seen: set[tuple[Any, ...]] = set()
    cache_on: set[str] = set()
    tokens_on: set[str] = set()
    repeats: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    prompt_cost: dict[str, float] = defaultdict(float)
    unpriced: dict[str, set[str]] = defaultdict(set)
    with engine.connect() as conn:
        levers = RoutingLevers(catalog, routing, active_router_share(conn))
        for row in conn.execute(query):
            levers.add(row)
            if row.cache_layer in _CACHE_RAN:
                cache_on.add(row.tenant)
            if row.token_policy not in (None, "off"):
                tokens_on.add(row.tenant)
            if row.status_code != 200 or row.cost_usd is None:
                continue
            key = (row.tenant, row.endpoint, row.model_requested, row.max_tokens,
                   row.prompt_hash)
            if row.prompt_hash is not None and key in seen:
                repeats[row.tenant][0] += 1
                repeats[row.tenant][1] += row.cost_usd
            seen.add(key)
            if row.prompt_tokens and row.model_served:
                try:
                    rate = catalog.price(row.model_served).input_usd_per_token
                except UnknownModelPrice:
                    unpriced[row.tenant].add(row.model_served)
                else:
                    prompt_cost[row.tenant] += row.prompt_tokens * rate
    estimates = []
    for tenant, (count, saved) in repeats.items():
        if tenant in cache_on or saved <= 0:
            continue
        estimates.append(LeverEstimate(
            tenant, "cache_exact", saved, monthly_rate(saved, days),
            f"{int(count)} requests repeated a prompt, model and max_tokens seen earlier in "
            f"the window; their cost (${saved:,.6f}) would not have been paid",
        ))
    reduction = _lossless_reduction(engine)
    if reduction:
        for tenant, cost in prompt_cost.items():
            if tenant in tokens_on or cost <= 0:
                continue
            saved = cost * reduction
            left_out = (f"; unpriced models left out: {', '.join(sorted(unpriced[tenant]))}"
                        if unpriced[tenant] else "")
            estimates.append(LeverEstimate(
                tenant, "token_optimization", saved, monthly_rate(saved, days),
                f"the latest lossless token report's reduction ({reduction:.1%}) x the "
                f"prompt tokens' input cost (${cost:,.6f}){left_out}",
            ))
    estimates += [LeverEstimate(tenant, lever, saved, monthly_rate(saved, days), method)
                  for tenant, lever, saved, method in levers.estimates()]
    return sorted(estimates, key=lambda e: -e.monthly_saving_usd)


def proposed_settings(estimates: list[LeverEstimate]) -> dict[str, Any]:
    """The settings (YAML keys) that turn the estimated levers on."""
    settings: dict[str, Any] = {}
    if any(e.lever == "cache_exact" for e in estimates):
        settings["cache_enabled"] = True
    tenants = sorted({e.tenant for e in estimates if e.lever == "token_optimization"})
    if tenants:
        settings["token_optimization_tenants"] = dict.fromkeys(tenants, "lossless")
    routing = _routing_settings(estimates)
    if routing:
        settings["routing"] = routing
    return settings


def _routing_settings(estimates: list[LeverEstimate]) -> dict[str, Any]:
    """The keys to merge into the ``routing`` config: the tenants whose explicit models the
    router may replace, and the cascade where it beats plain routing for a tenant (the
    cascade then judges the tenant's substituted requests, escalating a weak answer to the
    model asked for, as the estimate assumes). (Batch is the caller's choice of
    ``/v1/batches``: no setting turns it on.)"""
    best: dict[str, LeverEstimate] = {}
    for e in estimates:
        if e.lever in ("routing", "cascade") and (
                e.tenant not in best or e.window_saving_usd > best[e.tenant].window_saving_usd):
            best[e.tenant] = e
    if not best:
        return {}
    routing: dict[str, Any] = {"substitution_tenants": sorted(best)}
    if any(e.lever == "cascade" for e in best.values()):
        routing["cascade"] = {"enabled": True}
    return routing


def _lossless_reduction(engine: Engine) -> float | None:
    query = (select(TokenReport.reduction).where(TokenReport.policy == "lossless")
             .order_by(TokenReport.created_at.desc()).limit(1))
    with engine.connect() as conn:
        value = conn.scalar(query)
    return None if value is None or value <= 0 else float(value)
