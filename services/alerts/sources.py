"""Where the alert rules' numbers come from, each bounded so one evaluation stays cheap.

- request metrics: ``request_log`` rows of the last ``window_minutes`` (on its
  ``created_at`` index), grouped overall, per tenant or per model;
- budgets (the routing config's and the keys' stored limits): the shared counters of
  ``services/routing/budgets`` (Redis) when the gateways share them, else the period's
  spend summed from ``request_log`` (a tenant's on its (tenant, created_at) index, a
  key's on ``created_at``);
- KV-cache usage: each vLLM worker's own ``/metrics`` (``vllm:kv_cache_usage_perc``,
  0-1; vLLM exports no GPU utilisation of its own);
- GPU utilisation: ``nvidia-smi`` on the machine running the evaluation, where there is
  one (no GPU, no reading: the rule is not judged);
- scaling actuator failures: ``scaling_decisions`` rows of the last ``window_minutes``
  whose actuation failed, per model (``demand_forecasting`` records each with its error).
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Engine, func, select

from models import RequestLog, ScalingDecision
from services.caching.optimization import LOOKED_UP
from services.routing import BudgetLedger
from services.routing.budgets import Scope
from services.routing.config import BudgetConfig, period_start
from services.routing.keys import KeyBudget
from services.settings import AlertRuleConfig
from services.workers import vllm_metrics

log = logging.getLogger(__name__)

REQUEST_METRICS = ("cache_hit_rate", "error_rate", "latency_p95_ms", "ttft_p95_ms",
                   "cost_per_request_usd")


@dataclass(frozen=True)
class Reading:
    """One measured value of a rule's metric for one subject, with its context."""

    value: float
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Row:
    tenant: str
    model: str
    cache_layer: str | None
    status_code: int
    latency_ms: float | None
    ttft_ms: float | None
    cost_usd: float | None


def recent_requests(engine: Engine, *, now: datetime, minutes: float) -> list[_Row]:
    """The last ``minutes`` of ``request_log``, only the columns the rules read."""
    start = now - timedelta(minutes=minutes)
    query = select(
        RequestLog.tenant, RequestLog.model_served, RequestLog.model_requested,
        RequestLog.cache_layer, RequestLog.status_code, RequestLog.latency_ms,
        RequestLog.ttft_ms, RequestLog.cost_usd,
    ).where(RequestLog.created_at >= start, RequestLog.created_at < now)
    with engine.connect() as conn:
        return [
            _Row(r.tenant, r.model_served or r.model_requested or "unknown", r.cache_layer,
                 r.status_code, r.latency_ms, r.ttft_ms, r.cost_usd)
            for r in conn.execute(query)
        ]


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _measure(metric: str, rows: list[_Row]) -> tuple[float | None, dict[str, Any]]:
    if metric == "cache_hit_rate":
        looked_up = [r for r in rows if r.cache_layer in LOOKED_UP]
        hits = sum(r.cache_layer != "MISS" for r in looked_up)
        value = hits / len(looked_up) if looked_up else None
        return value, {"lookups": len(looked_up), "hits": hits}
    if metric == "error_rate":
        errors = sum(r.status_code >= 500 for r in rows)
        return errors / len(rows), {"errors": errors}
    if metric in ("latency_p95_ms", "ttft_p95_ms"):
        attr = metric.removesuffix("_p95_ms") + "_ms"
        values = [getattr(r, attr) for r in rows
                  if getattr(r, attr) is not None and r.status_code < 400]
        return _p95(values), {"measured": len(values)}
    if metric == "cost_per_request_usd":
        priced = [r.cost_usd for r in rows if r.cost_usd is not None and r.status_code < 400]
        return (sum(priced) / len(priced) if priced else None), {"priced": len(priced)}
    raise ValueError(f"not a request metric: {metric}")


def request_readings(rule: AlertRuleConfig, rows: Iterable[_Row]) -> dict[str, Reading]:
    """The rule's metric per subject (``overall``, ``tenant=...`` or ``model=...``);
    subjects with fewer than ``min_requests`` requests are not judged."""
    groups: dict[str, list[_Row]] = defaultdict(list)
    for row in rows:
        if rule.tenants and row.tenant not in rule.tenants:
            continue
        if rule.models and row.model not in rule.models:
            continue
        key = {"overall": "overall", "tenant": f"tenant={row.tenant}",
               "model": f"model={row.model}"}[rule.group_by]
        groups[key].append(row)
    readings = {}
    for subject, members in sorted(groups.items()):
        if len(members) < rule.min_requests:
            continue
        value, context = _measure(rule.metric, members)
        labels = {}
        if rule.group_by != "overall":
            kind, _, name = subject.partition("=")
            labels[kind] = name
        if value is not None:
            readings[subject] = Reading(value, {**labels, "requests": len(members), **context})
    return readings


def threshold_for(rule: AlertRuleConfig, context: dict[str, Any]) -> float:
    """The rule's threshold for a subject: its model's override, else its tenant's,
    else the rule's own."""
    for kind in ("model", "tenant"):
        name = context.get(kind)
        if name is not None and f"{kind}:{name}" in rule.thresholds:
            return rule.thresholds[f"{kind}:{name}"]
    return rule.below if rule.below is not None else rule.above  # type: ignore[return-value]


# --- budgets ----------------------------------------------------------------------------


async def budget_readings(
    budgets: dict[str, BudgetConfig], *, engine: Engine, redis_url: str, now: datetime,
    tenants: Iterable[str] = (), keys: Iterable[KeyBudget] = (),
) -> dict[str, Reading]:
    """Share of each budget spent (``budget=tenant:acme``, ``budget=key:42``); ``tenant:*``
    is read for every known tenant without a budget of its own, and a key's stored limit
    (``keys``) replaces a ``key:<id>`` entry of the routing config, as the gateway does."""
    scopes = {name: config for name, config in budgets.items() if name != "tenant:*"}
    if "tenant:*" in budgets:
        for tenant in tenants:
            scopes.setdefault(f"tenant:{tenant}", budgets["tenant:*"])
    labels = {}
    for key in keys:
        scopes[key.scope] = key.config
        labels[key.scope] = {"key_tenant": key.tenant, "description": key.label}
    readings: dict[str, Reading] = {}
    if not scopes:
        return readings
    ledger = BudgetLedger(budgets, redis_url=redis_url) if redis_url else None
    try:
        for name, config in sorted(scopes.items()):
            if ledger is not None:
                spent = await ledger.fraction_spent([Scope(name, config)]) * config.limit_usd
            else:
                spent = _spent_from_store(engine, name, config.period, now)
            readings[f"budget={name}"] = Reading(
                spent / config.limit_usd,
                {"spent_usd": round(spent, 6), "limit_usd": config.limit_usd,
                 "period": config.period,
                 "source": "redis" if ledger is not None else "request_log",
                 **labels.get(name, {})},
            )
    finally:
        if ledger is not None:
            await ledger.aclose()
    return readings


def _spent_from_store(engine: Engine, scope: str, period: str, now: datetime) -> float:
    kind, _, ident = scope.partition(":")
    column = RequestLog.tenant if kind == "tenant" else RequestLog.api_key_id
    query = select(func.coalesce(func.sum(RequestLog.cost_usd), 0.0)).where(
        column == ident, RequestLog.created_at < now)
    start = period_start(period, now)
    if start is not None:
        query = query.where(RequestLog.created_at >= start)
    with engine.connect() as conn:
        return float(conn.scalar(query) or 0.0)


# --- workers and GPUs ---------------------------------------------------------------------

async def kv_cache_readings(workers: Iterable[str], *, timeout_s: float = 3.0
                            ) -> dict[str, Reading]:
    readings = {}
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        for url in sorted(set(workers)):
            try:
                response = await client.get(f"{url}/metrics")
                response.raise_for_status()
            except httpx.HTTPError as exc:
                log.warning("alerts: no /metrics from worker %s: %s", url, exc)
                continue
            # the fullest engine of a data-parallel worker
            usage = vllm_metrics.values(response.text, vllm_metrics.KV_CACHE_USAGE)
            if usage:
                readings[f"worker={url}"] = Reading(max(usage), {"worker": url})
    return readings


def gpu_readings(smi: str | None = None) -> dict[str, Reading]:
    """Utilisation (0-1) of each GPU ``nvidia-smi`` lists; none without the tool."""
    smi = smi or shutil.which("nvidia-smi")
    if smi is None:
        return {}
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,name,utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=15, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("alerts: nvidia-smi failed (%s): GPU utilisation not judged", exc)
        return {}
    readings = {}
    for line in out.strip().splitlines():
        index, name, util = (part.strip() for part in line.split(","))
        try:
            readings[f"gpu={index}"] = Reading(float(util) / 100, {"gpu": name})
        except ValueError:
            continue  # "[N/A]"
    return readings


# --- autoscaling ---------------------------------------------------------------------------


def scaling_failure_readings(engine: Engine, *, now: datetime, minutes: float
                             ) -> dict[str, Reading]:
    """Failed actuations per model (``model=NAME``) among its scaling decisions of the last
    ``minutes``, with the latest error; a model whose decisions all went through reads
    0, so its alert resolves once the actuator works again."""
    query = select(ScalingDecision.model, ScalingDecision.actuator_error).where(
        ScalingDecision.decided_at >= now - timedelta(minutes=minutes),
        ScalingDecision.decided_at < now).order_by(ScalingDecision.decided_at)
    decided: dict[str, int] = defaultdict(int)
    failed: dict[str, list[str]] = defaultdict(list)
    with engine.connect() as conn:
        for model, error in conn.execute(query):
            decided[model] += 1
            if error is not None:
                failed[model].append(error)
    readings = {}
    for model in sorted(decided):
        context: dict[str, Any] = {"model": model, "decisions": decided[model]}
        if failed[model]:
            context["description"] = f"last error: {failed[model][-1]}"
        readings[f"model={model}"] = Reading(float(len(failed[model])), context)
    return readings


def utc(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)
