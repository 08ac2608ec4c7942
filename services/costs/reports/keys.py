"""Spend per API key against its budget, from ``key_cost_rollups``: the cost report's
"API keys" section.

Each key with traffic in the period, or with a budget (one tenant's keys, or all), is
listed with its spend in the period and, when it has a budget, its spend in the budget
period that holds the report's end (that UTC day, that month to date, or all time for a
``total`` budget): the figure its budget is enforced on. The budget is the key's stored
limit, else a ``key:<id>`` budget of the routing config (the gateway's order). A revoked
key's traffic stays listed, marked revoked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, func, select

from models import ApiKey, KeyCostRollup
from services.costs.reports.read import check_period
from services.routing.config import BudgetConfig, period_start
from services.routing.keys import key_budget

_ROLLUPS = KeyCostRollup.__table__


@dataclass(frozen=True, slots=True)
class KeySpend:
    key_id: str
    tenant: str
    name: str | None
    revoked_at: datetime | None
    requests: int
    errors: int
    cost_usd: float  # in the report's period
    budget: BudgetConfig | None = None
    budget_window: str = ""  # "2026-03-31", "2026-03" or "total"
    budget_spent_usd: float | None = None  # in that window, up to the report's end

    @property
    def budget_used(self) -> float | None:
        if self.budget is None or self.budget_spent_usd is None:
            return None
        return self.budget_spent_usd / self.budget.limit_usd


def budget_window(period: str, until: datetime) -> tuple[datetime | None, str]:
    """Start and label of the ``period`` (day, month, total; UTC) holding the last instant
    before ``until``."""
    start = period_start(period, until - timedelta(microseconds=1))
    if start is None:
        return None, "total"
    return start, start.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


def key_spend(engine: Engine, since: datetime, until: datetime, *, tenant: str | None = None,
              configured: Mapping[str, BudgetConfig] | None = None) -> list[KeySpend]:
    """The keys of ``[since, until)`` (one tenant's or all), by spend, highest first.
    ``configured``: the routing config's budgets (its ``key:<id>`` entries apply to keys
    without a stored limit)."""
    check_period(since, until)
    r = _ROLLUPS.c
    query = (select(r.api_key_id, r.tenant, func.sum(r.requests), func.sum(r.errors),
                    func.sum(r.cost_usd))
             .where(r.hour >= since, r.hour < until,
                    *([r.tenant == tenant] if tenant is not None else []))
             .group_by(r.api_key_id, r.tenant))
    keys = select(ApiKey.id, ApiKey.tenant, ApiKey.name, ApiKey.budget_usd,
                  ApiKey.budget_period, ApiKey.revoked_at)
    if tenant is not None:
        keys = keys.where(ApiKey.tenant == tenant)
    with engine.connect() as conn:
        traffic = {(k, t): (int(n), int(e), float(c)) for k, t, n, e, c in conn.execute(query)}
        stored = {str(row.id): row for row in conn.execute(keys)}
        limits = {key_id: _limit(row.budget_usd, row.budget_period)
                  or (configured or {}).get(f"key:{key_id}")
                  for key_id, row in stored.items() if row.revoked_at is None}
        listed = dict.fromkeys(traffic)
        listed.update(dict.fromkeys((key_id, stored[key_id].tenant)
                                    for key_id, limit in limits.items() if limit is not None))
        budget_of = {key_id: limits.get(key_id) if key_id in stored
                     else (configured or {}).get(f"key:{key_id}") for key_id, _ in listed}
        budgets = {key_id: b for key_id, b in budget_of.items() if b is not None}
        spent = _spent_in_budget_windows(conn, budgets, until)
    found = []
    for key_id, key_tenant in listed:
        row = stored.get(key_id)
        requests, errors, cost = traffic.get((key_id, key_tenant), (0, 0, 0.0))
        spend = KeySpend(key_id, key_tenant, row.name if row else None,
                         row.revoked_at if row else None, requests, errors, cost)
        if (budget := budgets.get(key_id)) is not None:
            spend = replace(spend, budget=budget,
                            budget_window=budget_window(budget.period, until)[1],
                            budget_spent_usd=spent[key_id])
        found.append(spend)
    return sorted(found, key=lambda k: (-k.cost_usd, k.tenant, k.key_id))


def _spent_in_budget_windows(conn: Connection, budgets: Mapping[str, BudgetConfig],
                             until: datetime) -> dict[str, float]:
    """Each key's spend in its budget window up to ``until``: one query per window start
    (the day, the month, all time), not one per key."""
    r = _ROLLUPS.c
    by_start: dict[datetime | None, list[str]] = {}
    for key_id, budget in budgets.items():
        by_start.setdefault(budget_window(budget.period, until)[0], []).append(key_id)
    spent = dict.fromkeys(budgets, 0.0)
    for start, key_ids in by_start.items():
        query = (select(r.api_key_id, func.sum(r.cost_usd))
                 .where(r.api_key_id.in_(key_ids), r.hour < until,
                        *([r.hour >= start] if start is not None else []))
                 .group_by(r.api_key_id))
        spent.update({key_id: float(cost or 0.0) for key_id, cost in conn.execute(query)})
    return spent


def _limit(budget_usd: float | None, period: str) -> BudgetConfig | None:
    """A stored limit; one ``key_budget`` refuses counts as none (the gateway refuses
    such a key, so it spends nothing)."""
    try:
        return key_budget(budget_usd, period if budget_usd is not None else None)
    except ValueError:
        return None
