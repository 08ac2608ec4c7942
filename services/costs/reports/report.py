"""Cost reports: one period, one tenant or all, as Markdown, CSV and HTML.

A report is built from ``cost_rollups`` only (never the raw log) as a list of sections,
each a small table; the three formats render the same sections, so the CSV a finance
team imports holds exactly the figures the Markdown shows. Reports are stored in
``cost_reports`` by the ``cost_management`` flow and printed by ``optengine report
costs``.
"""

from __future__ import annotations

import calendar
import csv
import html
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert

from models import CostReport
from services.alerts.anomaly import DEFAULT_THRESHOLD
from services.costs.reports.anomalies import MAX_ROWS, anomaly_section_rows, find_anomalies
from services.costs.reports.attribution import LEVERS
from services.costs.reports.keys import key_spend
from services.costs.reports.read import CostSummary, check_period, summarize
from services.costs.reports.roi import Roi, monthly_rate
from services.routing.config import BudgetConfig
from services.routing.keys import describe_budget

LEVER_NAMES = {
    "cache_exact": "response cache (exact)",
    "cache_semantic": "response cache (semantic)",
    "batch": "batch",
    "token_optimization": "token optimisation",
    "routing": "routing and cascades",
    "self_hosting": "self-hosting",
    "model_choice": "caller's model choice (not a lever)",
}
METHOD = (
    "Savings are attributed as a waterfall in this order: response cache (exact, "
    "semantic), batch, token optimisation, routing and cascades, self-hosting. Each lever "
    "gets the drop from the cost before it to the cost after it, on the same tokens; the "
    "last step ends at the actual cost, so the levers add up to baseline - actual. "
    "Baseline: the same request on the baseline model, full prompt, no cache. An escalated "
    "cascade attempt's cost is a negative routing saving. Requests of unpriced models are "
    "left out of costs and savings."
)


@dataclass(frozen=True, slots=True)
class Investment:
    """What the platform cost to set up (one-off) and costs to run (per month)."""

    one_off_usd: float = 0.0
    monthly_usd: float = 0.0


@dataclass
class Section:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class CostReportDoc:
    kind: str
    tenant: str | None
    since: datetime
    until: datetime
    summary: CostSummary
    sections: list[Section]

    @property
    def title(self) -> str:
        who = f"tenant {self.tenant}" if self.tenant else "all tenants"
        return (f"Cost report ({self.kind}), {who}: {self.since.isoformat()} to "
                f"{self.until.isoformat()}")

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for section in self.sections:
            lines += [f"## {section.title}", ""]
            if section.rows:
                lines.append("| " + " | ".join(section.headers) + " |")
                lines.append("|" + "|".join(" --- " for _ in section.headers) + "|")
                lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                          for row in section.rows]
                lines.append("")
            lines += [*section.notes, ""] if section.notes else []
        return "\n".join(lines).rstrip() + "\n"

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["section", *_widest_header(self.sections)])
        for section in self.sections:
            for row in section.rows:
                writer.writerow([section.title, *row])
            for note in section.notes:
                writer.writerow([section.title, note])
        return out.getvalue()

    def html(self) -> str:
        parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(self.title)}"
                 f"</title><h1>{html.escape(self.title)}</h1>"]
        for section in self.sections:
            parts.append(f"<h2>{html.escape(section.title)}</h2>")
            if section.rows:
                head = "".join(f"<th>{html.escape(h)}</th>" for h in section.headers)
                body = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                    for row in section.rows
                )
                parts.append(f"<table><tr>{head}</tr>{body}</table>")
            parts += [f"<p>{html.escape(note)}</p>" for note in section.notes]
        return "\n".join(parts) + "\n"

    def render(self, fmt: str) -> str:
        renderers = {"md": self.markdown, "csv": self.csv, "html": self.html}
        if fmt not in renderers:
            raise ValueError(f"unknown format {fmt!r}; use md, csv or html")
        return renderers[fmt]()


def build_report(
    engine: Engine,
    since: datetime,
    until: datetime,
    *,
    tenant: str | None = None,
    kind: str = "adhoc",
    budgets: Mapping[str | None, float] | None = None,
    investment: Investment | None = None,
    top_models: int = 5,
    anomaly_history_days: int = 28,
    key_budgets: Mapping[str, BudgetConfig] | None = None,
) -> CostReportDoc:
    """The report of ``[since, until)``; a period without rollups says "no data".

    ``budgets`` maps a tenant (None = all tenants) to its monthly budget in USD;
    ``key_budgets`` holds the routing config's ``key:<id>`` budgets (a key's stored limit
    comes first). The ROI block is in the overall report only: the investment is the
    whole platform's.
    """
    check_period(since, until)
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    summary = summarize(engine, since, until, tenant)
    doc = CostReportDoc(kind, tenant, since, until, summary, [])
    if not summary.has_data:
        doc.sections.append(Section("No data", [], notes=[
            f"no data: no requests recorded for {'tenant ' + tenant if tenant else 'any tenant'}"
            f" between {since.isoformat()} and {until.isoformat()} (rollups are hourly; "
            "run the cost_management flow if requests were made)."
        ]))
        return doc
    doc.sections += [_totals(summary), _models(summary, top_models), _levers(summary)]
    budget = (budgets or {}).get(tenant)
    doc.sections.append(_budget(engine, summary, budget))
    doc.sections.append(_keys(engine, summary, key_budgets))
    doc.sections.append(_anomalies(engine, summary, anomaly_history_days))
    if tenant is None:
        doc.sections.append(roi_section(summary, investment or Investment()))
    else:
        doc.sections.append(Section("ROI", [], notes=[
            "The ROI block is in the all-tenants report: the investment is the platform's."
        ]))
    doc.sections.append(Section("Method", [], notes=[METHOD]))
    return doc


def store_report(engine: Engine, doc: CostReportDoc) -> int:
    """Keep the report in ``cost_reports``; returns its id."""
    with engine.begin() as conn:
        return int(conn.execute(insert(CostReport).values(
            created_at=datetime.now(UTC), kind=doc.kind, tenant=doc.tenant,
            period_start=doc.since, period_end=doc.until, markdown=doc.markdown(),
            csv=doc.csv(), summary=_json_summary(doc),
        )).inserted_primary_key[0])


def roi_section(summary: CostSummary, investment: Investment) -> Section:
    days = (summary.until - summary.since) / timedelta(days=1)
    roi = Roi(investment.one_off_usd, investment.monthly_usd,
              monthly_rate(summary.saved_usd, days))
    section = Section("ROI", ["figure", "value", "formula"])
    section.rows = [[f.name, f.text, f.formula] for f in roi.figures()]
    section.notes.append(
        f"Investment: one-off ${investment.one_off_usd:,.2f}, running "
        f"${investment.monthly_usd:,.2f}/month (settings cost_investment_one_off_usd, "
        "cost_investment_monthly_usd). ROI is net: (savings - investment) / investment; "
        "savings / investment is the gross multiple and is labelled as such."
    )
    return section


def _totals(s: CostSummary) -> Section:
    share = f" ({s.saved_usd / s.baseline_usd:.1%} of baseline)" if s.baseline_usd else ""
    per_1k = s.cost_per_1k_requests
    rows = [
        ["requests", f"{s.requests:,}"],
        ["escalated cascade attempts (not requests)", f"{s.attempts:,}"],
        ["errors", f"{s.errors:,}"],
        ["prompt tokens (billed / as sent)", f"{s.prompt_tokens:,} / {s.prompt_tokens_before:,}"],
        ["completion tokens", f"{s.completion_tokens:,}"],
        ["spend (actual)", _usd(s.cost_usd)],
        ["baseline (no platform)", _usd(s.baseline_usd)],
        ["saved", _usd(s.saved_usd) + share],
        ["cost per 1k requests", "n/a" if per_1k is None else _usd(per_1k)],
        ["requests of unpriced models (not in costs)", f"{s.unpriced:,}"],
    ]
    notes = []
    if s.unpriced_models:
        names = ", ".join(f"{m or '(none)'} ({n})" for m, n in sorted(s.unpriced_models.items()))
        notes.append(f"Unpriced models, add them to price_overrides: {names}.")
    return Section("Totals", ["figure", "value"], rows, notes)


def _models(s: CostSummary, n: int) -> Section:
    rows = [[m.model, f"{m.requests:,}", _usd(m.cost_usd),
             f"{m.cost_usd / s.cost_usd:.1%}" if s.cost_usd else "n/a"]
            for m in s.top_models(n)]
    return Section(f"Top models by spend (top {n})", ["model", "requests", "spend", "share"],
                   rows)


def _levers(s: CostSummary) -> Section:
    rows = [[LEVER_NAMES[lever], _usd(s.saved_by_lever[lever]),
             f"{s.saved_by_lever[lever] / s.baseline_usd:.1%}" if s.baseline_usd else "n/a"]
            for lever in LEVERS]
    total = sum(s.saved_by_lever.values())
    rows.append(["sum of levers", _usd(total), ""])
    rows.append(["baseline - actual", _usd(s.saved_usd), ""])
    return Section("Savings by lever", ["lever", "saved", "share of baseline"], rows,
                   [f"Attribution gap: {_usd(s.attribution_gap_usd)}."])


def _anomalies(engine: Engine, s: CostSummary, history_days: int) -> Section:
    found, unjudged = find_anomalies(engine, s.since, s.until, s.tenant,
                                     history_days=history_days)
    section = Section("Anomalies", ["series", "metric", "hour (UTC)", "value", "expected",
                                    "expected range", "score (robust sd)"],
                      rows=anomaly_section_rows(found))
    if not found:
        section.notes.append("No hour of the period was outside its expected range.")
    elif len(found) > MAX_ROWS:
        section.notes.append(f"{len(found) - MAX_ROWS} more anomalous hours not listed.")
    if unjudged:
        section.notes.append("Not judged (under two days of history before the period): "
                             + ", ".join(unjudged) + ".")
    section.notes.append(
        f"Each hour is judged against the {history_days} days before the period: STL "
        "with a weekly season on the square root of the hourly series, flagged beyond "
        f"{DEFAULT_THRESHOLD:g} robust standard deviations (the alert rules' detector).")
    return section


def _budget(engine: Engine, s: CostSummary, budget: float | None) -> Section:
    month_start = s.until.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if month_start == s.until:  # a period ending at midnight on the 1st: the month before
        month_start = (month_start - timedelta(days=1)).replace(day=1)
    month_days = calendar.monthrange(month_start.year, month_start.month)[1]
    month_end = month_start + timedelta(days=month_days)
    mtd = summarize(engine, month_start, s.until, s.tenant).cost_usd
    elapsed = (min(s.until, month_end) - month_start) / (month_end - month_start)
    projected = mtd / elapsed if elapsed > 0 else mtd
    rows = [
        ["month", month_start.strftime("%Y-%m")],
        ["spend month to date", _usd(mtd)],
        ["month-end projection (month to date / share of month elapsed)", _usd(projected)],
    ]
    if budget:
        rows += [["monthly budget", _usd(budget)],
                 ["budget used", f"{mtd / budget:.1%}"],
                 ["projected use at month end", f"{projected / budget:.1%}"]]
    else:
        rows.append(["monthly budget", "none configured"])
    return Section("Budget", ["figure", "value"], rows)


def _keys(engine: Engine, s: CostSummary, configured: Mapping[str, BudgetConfig] | None
          ) -> Section:
    section = Section("API keys", ["key", "name", "tenant", "requests", "spend", "budget",
                                   "budget period", "spent in budget period", "budget used"])
    for key in key_spend(engine, s.since, s.until, tenant=s.tenant, configured=configured):
        name = key.name or "-"
        if key.revoked_at is not None:
            name += f" (revoked {key.revoked_at:%Y-%m-%d})"
        budget = key.budget
        used = key.budget_used
        section.rows.append([
            f"key:{key.key_id}", name, key.tenant, f"{key.requests:,}", _usd(key.cost_usd),
            describe_budget(budget.limit_usd if budget else None,
                            budget.period if budget else "month"),
            key.budget_window or "-",
            "-" if key.budget_spent_usd is None else _usd(key.budget_spent_usd),
            "-" if used is None else f"{used:.1%}" + (" (over)" if used >= 1 else ""),
        ])
    if not section.rows:
        section.notes.append("No request of the period was made with an API key, and no "
                             "key has a budget.")
    section.notes.append(
        "Spend per key (escalated cascade attempts included, as its budget counts them). "
        "A key's budget is held against its spend in the UTC budget period holding the "
        "report's end (that day, that month to date, or all time for a total budget); "
        "limits are set with optengine keys create/update.")
    return section


def _widest_header(sections: list[Section]) -> list[str]:
    width = max((len(s.headers) for s in sections), default=0)
    return [f"column_{i + 1}" for i in range(max(width, 1))]


def _json_summary(doc: CostReportDoc) -> dict[str, Any]:
    return {"kind": doc.kind, **doc.summary.as_dict(), "has_data": doc.summary.has_data}


def _usd(value: float) -> str:
    if abs(value) >= 100:
        return f"${value:,.2f}"
    return f"${value:,.6f}".rstrip("0").rstrip(".") if value else "$0"


KINDS = ("daily", "weekly", "monthly")


def period_for(kind: str, now: datetime) -> tuple[datetime, datetime]:
    """The last complete period of ``kind`` before ``now`` (UTC): yesterday, last ISO week
    (Monday to Monday), last calendar month."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "daily":
        return today - timedelta(days=1), today
    if kind == "weekly":
        monday = today - timedelta(days=today.weekday())
        return monday - timedelta(days=7), monday
    if kind == "monthly":
        first = today.replace(day=1)
        return (first - timedelta(days=1)).replace(day=1), first
    raise ValueError(f"unknown report kind {kind!r}; use one of {', '.join(KINDS)}")
