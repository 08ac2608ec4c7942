"""Flow ``cost_management``: the spec's cost workflow over the metrics store.

Hourly: bring ``cost_rollups`` up to date from the rows ingested since the last run
(incremental, see ``services.costs.reports.rollup``). Daily, weekly and monthly: the same,
then a report of the last complete day, ISO week or month for every tenant with traffic
and for all tenants together, stored in ``cost_reports`` and published as Prefect
artifacts (Markdown, and the savings by lever as a table); the all-tenants report is also
sent to the delivery channels (webhooks; email with the CSV attached). Also runs on demand
(``optengine flows run cost_management``: the hourly rollup).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.tasks import exponential_backoff

from models import create_store_engine
from services.costs import PriceCatalog
from services.costs.reports import (
    LEVER_NAMES,
    LEVERS,
    CostReportDoc,
    build_report,
    hosted_upstreams,
    report_options,
    roll_up,
    store_report,
    tenants,
)
from services.costs.reports.report import KINDS, period_for
from services.delivery import Attachment, Deliverer, Notification
from services.settings import load_settings

STORE_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2)}


@task(**STORE_RETRIES)
def rollup() -> dict[str, Any]:
    settings = load_settings()
    engine = create_store_engine(settings.database_url)
    try:
        run = roll_up(engine, PriceCatalog.from_settings(settings), hosted_upstreams(settings),
                      overlap=timedelta(seconds=settings.cost_rollup_overlap_s))
    finally:
        engine.dispose()
    return {"hours": run.hours, "rows": run.rows, "seconds": round(run.seconds, 3),
            "watermark": run.watermark.isoformat() if run.watermark else None}


@task(**STORE_RETRIES)
def write_reports(kind: str, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """One report per tenant with traffic and one for all tenants, stored."""
    settings = load_settings()
    engine = create_store_engine(settings.database_url)
    try:
        written = []
        for tenant in [None, *tenants(engine, since, until)]:
            doc = build_report(engine, since, until, tenant=tenant, kind=kind,
                               **report_options(settings))
            written.append({"id": store_report(engine, doc), **_published(doc)})
    finally:
        engine.dispose()
    return written


@task
def publish(report: dict[str, Any]) -> None:
    create_markdown_artifact(report["markdown"], key=report["key"],
                             description=report["title"])
    if report["levers"]:
        create_table_artifact(report["levers"], key=f"{report['key']}-levers",
                              description=f"savings by lever: {report['title']}")


@task
def deliver(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Send the all-tenants report to the configured channels (webhooks, email with the
    CSV attached). A receiver that fails is a failed result in the log, not a failed
    flow: the report is stored and published either way."""
    settings = load_settings()
    deliverer = Deliverer(settings.delivery)
    if not settings.cost_report_delivery or not deliverer.channels:
        return []
    notification = Notification(
        title=report["title"], text=report["markdown"], source="cost_management",
        details={"summary": report["summary"]},
        attachments=(Attachment(f"{report['key']}.csv", report["csv"].encode(), "text/csv"),),
    )
    results = deliverer.send_blocking(notification)
    return [{"channel": r.channel, "ok": r.ok} for r in results]


@flow(name="cost_management")
def cost_management(mode: str = "hourly", now: datetime | None = None) -> dict[str, Any]:
    """``mode``: hourly (rollup only), daily, weekly or monthly (rollup, then reports of
    the last complete period before ``now``)."""
    if mode != "hourly" and mode not in KINDS:
        raise ValueError(f"unknown mode {mode!r}; use hourly, {', '.join(KINDS)}")
    logger = get_run_logger()
    result: dict[str, Any] = {"mode": mode, "rollup": rollup()}
    logger.info("cost rollup: %s", result["rollup"])
    if mode == "hourly":
        return result
    since, until = period_for(mode, now or datetime.now(UTC))
    reports = write_reports(mode, since, until)
    for report in reports:
        publish(report)
    result["delivered"] = deliver(next(r for r in reports if r["tenant"] is None))
    result["reports"] = [{k: r[k] for k in ("id", "tenant", "summary")} for r in reports]
    logger.info("cost reports (%s, %s to %s): %d written", mode, since.isoformat(),
                until.isoformat(), len(reports))
    return result


def _published(doc: CostReportDoc) -> dict[str, Any]:
    saved = doc.summary.saved_by_lever
    levers = [{"lever": LEVER_NAMES[lever], "saved_usd": round(saved[lever], 6)}
              for lever in LEVERS] if doc.summary.has_data else []
    return {"tenant": doc.tenant, "title": doc.title, "markdown": doc.markdown(),
            "csv": doc.csv(),
            "key": _artifact_key(f"cost-{doc.kind}-{doc.tenant or 'all-tenants'}"),
            "levers": levers, "summary": doc.summary.as_dict()}


def _artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:200]
