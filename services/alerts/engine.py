"""One evaluation of every alert rule: read, judge, persist, notify.

``AlertEngine.evaluate`` reads each rule's metric from its source (services/alerts/
sources.py, series.py), steps each (rule, subject) through the state machine
(state.py) from the state persisted in the store, writes the changes with their
notifications in one transaction (store.py), then delivers what is owed
(services/delivery) within its deadline. A rule whose config names an unknown tenant
or model, or whose source fails, is reported and skipped: the other rules are still
judged and no state is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pandas as pd
from sqlalchemy import Engine, select

from models import ApiKey, Worker
from services.alerts.series import anomaly_readings, hourly_totals
from services.alerts.sources import (
    REQUEST_METRICS,
    Reading,
    budget_readings,
    gpu_readings,
    kv_cache_readings,
    recent_requests,
    request_readings,
    scaling_failure_readings,
    threshold_for,
)
from services.alerts.state import AlertState, Condition, step
from services.alerts.store import Judgement, load_open, record_delivery, save, undelivered
from services.delivery import Deliverer, Notification
from services.routing import RoutingConfig
from services.routing.keys import key_budgets
from services.settings import AlertRuleConfig, Settings

log = logging.getLogger(__name__)

ANOMALY_METRICS = ("cost_anomaly", "request_anomaly")
RuleKinds = Literal["all", "metrics", "anomalies"]
_CONCURRENT_DELIVERIES = 8  # notifications in flight at once (each bounded by its deadline)
DEFAULT_TENANT = "default"  # the gateway's tenant for requests without a key (dev)


class AlertConfigError(ValueError):
    """An alert rule names a tenant or model nobody configured."""


@dataclass
class EvaluationResult:
    judged: int = 0  # (rule, subject) readings judged
    changes: list[dict[str, Any]] = field(default_factory=list)
    notified: int = 0
    undelivered: int = 0
    errors: list[str] = field(default_factory=list)


def known_names(settings: Settings, store: Engine) -> tuple[set[str], set[str]]:
    """Tenants and models the configuration and the store know of."""
    tenants = {DEFAULT_TENANT, *settings.tenant_priorities, *settings.token_optimization_tenants,
               *(t for t in settings.cache_semantic_tenants if t != "*"),
               *settings.cache_semantic_tenant_min_probability}
    tenants |= {entry.partition(":")[2] for entry in settings.api_keys if ":" in entry}
    models = {settings.baseline_model, *settings.price_overrides}
    routing = settings.routing
    for scope in routing.get("budgets", {}) if routing else {}:
        kind, _, name = scope.partition(":")
        if kind == "tenant" and name != "*":
            tenants.add(name)
    for model in routing.get("models", []) if routing else []:
        models |= {m for m in (model.get("name"), model.get("upstream_model")) if m}
    with store.connect() as conn:
        tenants |= set(conn.scalars(select(ApiKey.tenant).where(ApiKey.revoked_at.is_(None))))
        for served in conn.scalars(select(Worker.models).where(Worker.deregistered_at.is_(None))):
            models |= set(served or [])
    return tenants, models


def check_rules(rules: list[AlertRuleConfig], tenants: set[str], models: set[str]
                ) -> dict[str, str]:
    """Rule name -> what is wrong with it (an unknown tenant or model)."""
    problems = {}
    for rule in rules:
        named_tenants = set(rule.tenants) | {
            k.partition(":")[2] for k in rule.thresholds if k.startswith("tenant:")}
        named_models = set(rule.models) | {
            k.partition(":")[2] for k in rule.thresholds if k.startswith("model:")}
        unknown = [f"tenant {t!r}" for t in sorted(named_tenants - tenants)]
        unknown += [f"model {m!r}" for m in sorted(named_models - models)]
        if unknown:
            problems[rule.name] = (
                f"alert rule {rule.name!r} names unknown {', '.join(unknown)} "
                f"(known tenants: {_some(tenants)}; known models: {_some(models)})")
    return problems


def _some(names: set[str], limit: int = 20) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _format(metric: str, value: float | None) -> str:
    if value is None or math.isnan(value):
        return "no data"
    if metric in ("cache_hit_rate", "error_rate", "budget_used", "gpu_utilization",
                  "kv_cache_usage"):
        return f"{value:.1%}"
    if metric.endswith("_ms"):
        return f"{value:.0f} ms"
    if metric == "cost_per_request_usd":
        return f"${value:.6f}"
    if metric == "scaling_actuator_failures":
        return f"{value:.0f} failed actuations"
    return f"{value:.1f} robust sd"


class AlertEngine:
    """Evaluates ``settings.alerts`` against the store; sources can be injected (tests,
    machines without ``nvidia-smi``), and so can the clock."""

    def __init__(
        self, settings: Settings, store: Engine, *, deliverer: Deliverer | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        gpu_reader: Callable[[], dict[str, Reading]] = gpu_readings,
    ) -> None:
        self.settings = settings
        self.store = store
        self.deliverer = deliverer or Deliverer(settings.delivery)
        self.clock = clock
        self.gpu_reader = gpu_reader
        tenants, models = known_names(settings, store)
        self.problems = check_rules(settings.alerts.rules, tenants, models)
        for problem in self.problems.values():
            log.error("alerts: %s; the rule is skipped", problem)

    def check(self) -> None:
        """Raise ``AlertConfigError`` naming every rule with an unknown name."""
        if self.problems:
            raise AlertConfigError("; ".join(self.problems.values()))

    async def evaluate(self, *, kinds: RuleKinds = "all") -> EvaluationResult:
        """Judge the rules of ``kinds``: ``metrics`` (every minute), ``anomalies``
        (hourly series, once an hour) or ``all``. Runs judging the same rules must not
        overlap (the deployments allow one run at a time)."""
        now = self.clock()
        result = EvaluationResult(errors=list(self.problems.values()))
        if not self.settings.alerts.enabled:
            return result
        rules = [r for r in self.settings.alerts.rules if r.name not in self.problems
                 and (kinds == "all" or (r.metric in ANOMALY_METRICS) == (kinds == "anomalies"))]
        readings = await self._read(rules, now, result)
        open_states = load_open(self.store)
        judgements = []
        for rule in rules:
            if rule.name not in readings:
                continue  # its source failed: state left as it was
            judgements += self._judge(rule, readings[rule.name], open_states, now)
        judgements += self._retired(open_states, now)
        result.judged = sum(len(readings[rule.name]) for rule in rules if rule.name in readings)
        save(self.store, judgements, now=now,
             notify_pending=self.settings.alerts.notify_pending)
        result.changes = [
            {"rule": j.rule, "subject": j.subject, "change": j.change, "value": j.value}
            for j in judgements if j.change is not None]
        for change in result.changes:
            log.info("alerts: %(rule)s (%(subject)s) -> %(change)s", change)
        await self.notify(result)
        return result

    def _retired(self, open_states: dict[tuple[str, str], AlertState], now: datetime
                 ) -> list[Judgement]:
        """Open alerts of rules no longer in the config close (and say so) rather than
        stay firing forever."""
        configured = {rule.name for rule in self.settings.alerts.rules}
        return [
            Judgement(rule=rule, subject=subject, severity="info",
                      threshold=None, value=None, context={}, before=state,
                      after=None, change="resolved" if state.state == "firing" else "cleared",
                      message=f"rule {rule} is no longer configured: its alert is closed")
            for (rule, subject), state in sorted(open_states.items())
            if rule not in configured
        ]

    def _judge(self, rule: AlertRuleConfig, readings: dict[str, Reading],
               open_states: dict[tuple[str, str], AlertState], now: datetime
               ) -> list[Judgement]:
        subjects = set(readings) | {s for (r, s) in open_states if r == rule.name}
        judgements = []
        for subject in sorted(subjects):
            reading = readings.get(subject)
            before = open_states.get((rule.name, subject))
            context = reading.context if reading else {}
            threshold = threshold_for(rule, context)
            condition = Condition(
                below=threshold if rule.below is not None else None,
                above=threshold if rule.above is not None else None,
                hysteresis=rule.hysteresis, for_s=rule.for_s)
            value = reading.value if reading else None
            after, change = step(before, value, condition, now, rule=rule.name,
                                 subject=subject)
            gone = before is not None and reading is None and rule.metric == "budget_used"
            if gone:  # every budget is read: this one is gone (a key revoked, a limit removed)
                after, change = None, "resolved" if before.state == "firing" else "cleared"
            if before is None and after is None and change is None:
                continue
            shown = value if value is not None else (before.value if before else None)
            message = (f"{rule.metric} {_format(rule.metric, shown)} for {subject} "
                       f"(rule {rule.name}: {condition.describe()}"
                       f"{f' for {rule.for_s:g} s' if rule.for_s else ''})")
            if gone:
                message += "; the budget no longer exists (its key was revoked or its limit "\
                    "removed)"
            if "description" in context:
                message += f"; {context['description']}"
            if "lever" in context:
                message += (f"; lever {context['lever']} moved most "
                            f"({context['lever_value']:.4g} vs typical "
                            f"{context['lever_typical']:.4g})")
            judgements.append(Judgement(
                rule=rule.name, subject=subject, severity=rule.severity,
                threshold=threshold, value=value, context=context, before=before,
                after=after, change=change, message=message))
        return judgements

    async def _read(self, rules: list[AlertRuleConfig], now: datetime,
                    result: EvaluationResult) -> dict[str, dict[str, Reading]]:
        """Each rule's readings; a source that fails costs only its own rules."""
        cache: dict[str, Any] = {}
        readings: dict[str, dict[str, Reading]] = {}
        for rule in rules:
            try:
                readings[rule.name] = await self._read_rule(rule, now, cache)
            except Exception as exc:  # noqa: BLE001 - one broken source must not stop the rest
                message = f"alert rule {rule.name!r}: reading {rule.metric} failed: {exc}"
                log.error("alerts: %s", message)
                result.errors.append(message)
        return readings

    async def _read_rule(self, rule: AlertRuleConfig, now: datetime, cache: dict[str, Any]
                         ) -> dict[str, Reading]:
        alerts = self.settings.alerts
        if rule.metric in REQUEST_METRICS:
            if "requests" not in cache:
                cache["requests"] = recent_requests(self.store, now=now,
                                                    minutes=alerts.window_minutes)
            return request_readings(rule, cache["requests"])
        if rule.metric == "budget_used":
            routing = self.settings.routing
            budgets = RoutingConfig.model_validate(routing).budgets if routing else {}
            tenants, _ = known_names(self.settings, self.store)
            return await budget_readings(budgets, engine=self.store,
                                         redis_url=self.settings.redis_url, now=now,
                                         tenants=tenants, keys=key_budgets(self.store))
        if rule.metric == "gpu_utilization":
            return self.gpu_reader()
        if rule.metric == "kv_cache_usage":
            return await kv_cache_readings(self._workers())
        if rule.metric == "scaling_actuator_failures":
            return scaling_failure_readings(self.store, now=now, minutes=alerts.window_minutes)
        if rule.metric in ANOMALY_METRICS:
            if "totals" not in cache:
                end = pd.Timestamp(now).floor("h").to_pydatetime()
                start = end - timedelta(days=alerts.anomaly_history_days)
                cache["totals"] = hourly_totals(self.store, start=start, end=end)
            return anomaly_readings(rule, cache["totals"], now=now)
        raise ValueError(f"no source for metric {rule.metric}")

    def _workers(self) -> list[str]:
        with self.store.connect() as conn:
            stored = conn.scalars(select(Worker.url).where(Worker.deregistered_at.is_(None)))
            return sorted({*self.settings.workers, *stored})

    async def notify(self, result: EvaluationResult) -> None:
        """Send every notification still owed (this run's and earlier failures')."""
        owed = undelivered(self.store, max_attempts=self.settings.alerts.delivery_attempts)
        gate = asyncio.Semaphore(_CONCURRENT_DELIVERIES)

        async def send(event_id: int, note: Notification) -> None:
            async with gate:
                results = await self.deliverer.send(note) if self.deliverer.channels else []
            if not results:
                log.warning("alerts: %s (no delivery channel configured)", note.title)
            if record_delivery(self.store, event_id, results, now=self.clock()):
                result.notified += 1
            else:
                result.undelivered += 1

        await asyncio.gather(*(send(event_id, note) for event_id, note in owed))
