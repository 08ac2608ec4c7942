"""Cost accounting over the metrics store: rollups, savings by lever, ROI, reports.

Kept apart from the price catalog (``services.costs``): the catalog says what a token
costs, this package says what the traffic cost, what it would have cost and which lever
saved the difference. Read API for reports, the dashboard and alerts:

* ``roll_up(engine, catalog, hosted)``: bring ``cost_rollups`` up to date (incremental);
* ``summarize(engine, since, until, tenant=None) -> CostSummary``: totals, savings by
  lever (``saved_by_lever``), per-model costs of a period;
* ``rollup_rows(engine, since, until, tenant=None)``: the hourly rows themselves;
* ``tenants(engine, since, until)``: who had traffic;
* ``hourly_sums(engine, since, until, by=..., columns=...)``: any rollup figure per hour
  (or coarser bucket) x tenant x model x upstream x lever, up to the current hour
  (rollups, plus ``request_log`` for the hours not rolled up yet, late rows included);
* ``live_summary(...)``: the same figures straight from ``request_log`` for a short
  window (a demo or benchmark run), to the second;
* ``key_spend(...)``: spend per API key against its budget (``key_cost_rollups``);
* ``build_report(...) -> CostReportDoc`` (``.markdown()``, ``.csv()``, ``.html()``) and
  ``store_report``; ``latest_reports`` reads stored ones back;
* ``Roi``: payback and ROI with their formulas.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from models import CostReport
from services.costs.catalog import PriceCatalog
from services.costs.reports.attribution import LEVERS, PATHS
from services.costs.reports.keys import KeySpend, key_spend
from services.costs.reports.read import (
    CostSummary,
    NaiveDatetime,
    check_period,
    rollup_rows,
    summarize,
    tenants,
)
from services.costs.reports.report import (
    LEVER_NAMES,
    METHOD,
    CostReportDoc,
    Investment,
    build_report,
    roi_section,
    store_report,
)
from services.costs.reports.roi import Roi, monthly_rate
from services.costs.reports.rollup import (
    HostedUpstreams,
    HourlySums,
    Pricing,
    RollupRun,
    hourly_sums,
    live_summary,
    roll_up,
)
from services.routing.config import BudgetConfig
from services.settings import Settings

__all__ = [
    "LEVERS", "LEVER_NAMES", "METHOD", "PATHS", "CostReportDoc", "CostSummary",
    "HostedUpstreams", "HourlySums", "Investment", "KeySpend", "NaiveDatetime", "Pricing",
    "Roi", "RollupRun", "build_report", "check_period", "configured_key_budgets",
    "hosted_upstreams", "hourly_sums", "investment", "key_spend", "latest_reports",
    "live_summary", "monthly_budgets", "monthly_rate", "pricing", "report_now",
    "report_options", "roi_section", "roll_up", "rollup_rows", "store_report", "summarize",
    "tenants",
]


def hosted_upstreams(settings: Settings) -> HostedUpstreams:
    """The hosted APIs' URLs: rows served there are not self-hosted."""
    urls = [settings.openai_base_url, settings.anthropic_base_url]
    urls += [m.get("base_url") or "" for m in settings.routing.get("models") or []
             if isinstance(m, dict) and m.get("upstream", "vllm") != "vllm"]
    return HostedUpstreams(urls)


def pricing(settings: Settings) -> Pricing:
    """The rollup's pricing from the settings (catalog and hosted upstreams)."""
    return Pricing(PriceCatalog.from_settings(settings), hosted_upstreams(settings))


def investment(settings: Settings) -> Investment:
    return Investment(settings.cost_investment_one_off_usd, settings.cost_investment_monthly_usd)


def monthly_budgets(settings: Settings) -> dict[str | None, float]:
    """Monthly budgets by tenant (None = all tenants), from ``cost_monthly_budget_usd``
    and the routing config's ``tenant:NAME`` budgets (a daily one times 30.44; a
    ``total`` one has no month and is left out)."""
    budgets: dict[str | None, float] = {}
    if settings.cost_monthly_budget_usd:
        budgets[None] = settings.cost_monthly_budget_usd
    for scope, raw in (settings.routing.get("budgets") or {}).items():
        kind, _, name = str(scope).partition(":")
        if kind != "tenant" or not name or name == "*" or not isinstance(raw, dict):
            continue
        period, limit = raw.get("period", "month"), float(raw.get("limit_usd") or 0)
        if limit > 0 and period in ("month", "day"):
            budgets[name] = limit if period == "month" else limit * 365.25 / 12
    return budgets


def latest_reports(engine: Engine, kind: str | None = None, limit: int = 20
                   ) -> list[dict[str, Any]]:
    """Stored reports, newest first (for the dashboard): id, kind, tenant, period, summary,
    markdown, csv."""
    table = CostReport.__table__
    query = select(*table.c).order_by(table.c.period_end.desc(), table.c.id.desc())
    if kind is not None:
        query = query.where(table.c.kind == kind)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query.limit(limit))]


def report_now(engine: Engine, settings: Settings, since: datetime, until: datetime,
               tenant: str | None = None) -> CostReportDoc:
    """An on-demand report: the rollup brought up to date first (incremental, so cheap),
    then the report of ``[since, until)``. Raises ``NaiveDatetime`` for a naive bound."""
    check_period(since, until)
    roll_up(engine, PriceCatalog.from_settings(settings), hosted_upstreams(settings),
            overlap=timedelta(seconds=settings.cost_rollup_overlap_s))
    return build_report(engine, since, until, tenant=tenant, **report_options(settings))


def report_options(settings: Settings) -> dict[str, Any]:
    """``build_report``'s keyword arguments from the settings: budgets, investment, how
    many models to list, the anomaly detector's history."""
    return {"budgets": monthly_budgets(settings), "investment": investment(settings),
            "top_models": settings.cost_report_top_models,
            "anomaly_history_days": settings.alerts.anomaly_history_days,
            "key_budgets": configured_key_budgets(settings)}


def configured_key_budgets(settings: Settings) -> dict[str, BudgetConfig]:
    """The routing config's ``key:<id>`` budgets (a key's stored limit replaces them)."""
    return {str(scope): BudgetConfig.model_validate(raw)
            for scope, raw in (settings.routing.get("budgets") or {}).items()
            if str(scope).startswith("key:")}
