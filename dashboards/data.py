"""What the dashboard shows, read from the metrics store by plain functions.

Pages stay thin: each figure on a page is one call here, tested without Streamlit.
Every query is bounded: counts and sums come from the cost package's one hourly reader
(``hourly_sums``: ``cost_rollups`` for the hours rolled up, ``request_log`` only for the
hours with rows not rolled up yet, and for ranges drawn finer than an hour), and the few
figures SQL cannot aggregate portably (percentiles, per-stage token savings held in
JSON) are computed from at most ``Filters.sample_rows`` of the newest matching rows,
which the page says when it cuts. Spend per API key is read from ``key_cost_rollups``
alone (hour x key, written by the same rollup run), never from ``request_log``.

The store is opened read-only (``read_only_engine``): ``PRAGMA query_only`` on SQLite, a
read-only transaction default on PostgreSQL (in production the dashboard also connects
as its own read-only role, see ``READ_ONLY_ROLE_SQL``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Engine, and_, create_engine, event, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, ProgrammingError

from models import Alert, CacheReport, CostReport, CostRollupState, KeyCostRollup, RequestLog
from models.tables import RouterVersion
from services.costs.reports import (
    LEVERS,
    HourlySums,
    KeySpend,
    Pricing,
    configured_key_budgets,
    hourly_sums,
    key_spend,
    latest_reports,
    pricing,
)
from services.costs.reports.rollup import PRICED, WATERMARK, whole_hours
from services.routing.keys import describe_budget
from services.settings import load_settings

# What "recent" means in the time-range filter, and the bucket each range is drawn in:
# 24-170 points a chart. Ranges drawn in whole hours read the hourly ``cost_rollups``
# (kept by the cost_management flow) and only the hours not rolled up yet from
# ``request_log``; shorter ranges read ``request_log``, bounded by the range itself.
TIME_RANGES: dict[str, tuple[timedelta, int]] = {
    "last hour": (timedelta(hours=1), 60),
    "last 6 hours": (timedelta(hours=6), 300),
    "last 24 hours": (timedelta(hours=24), 3600),
    "last 7 days": (timedelta(days=7), 3600),
    "last 30 days": (timedelta(days=30), 6 * 3600),
}
# cache tier -> its column in the hourly sums
HIT_LAYERS = {"L1": "hits_l1", "L2": "hits_l2", "L3": "hits_l3", "SEMANTIC": "hits_semantic"}

# The dashboard's role on PostgreSQL: it can read every table and write none.
READ_ONLY_ROLE_SQL = """\
CREATE ROLE {role} LOGIN PASSWORD '{password}';
GRANT CONNECT ON DATABASE {database} TO {role};
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role};
ALTER ROLE {role} SET default_transaction_read_only = on;
"""


class StoreNotReady(Exception):
    """The store cannot be shown yet; ``message`` says why and how to fix it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Filters:
    """The sidebar's choices; hashable, so Streamlit's cache keys on them."""

    time_range: str = "last 24 hours"
    tenant: str | None = None
    model: str | None = None
    end: datetime | None = None  # None = now; tests pin it
    sample_rows: int = 20_000

    @property
    def window(self) -> tuple[datetime, datetime]:
        span, _ = TIME_RANGES[self.time_range]
        end = self.end or datetime.now(UTC)
        return end - span, end

    @property
    def bucket_s(self) -> int:
        return TIME_RANGES[self.time_range][1]

    @property
    def hourly(self) -> bool:
        """Drawn in whole hours, so the hourly rollups can answer."""
        return self.bucket_s % 3600 == 0

    def where(self, since: datetime | None = None) -> ColumnElement[bool]:
        """The filters on ``request_log``; ``since`` replaces the window's start."""
        start, end = self.window
        start = since or start
        clauses = [RequestLog.created_at >= start, RequestLog.created_at < end]
        if self.tenant:
            clauses.append(RequestLog.tenant == self.tenant)
        if self.model:
            clauses.append(RequestLog.model_served == self.model)
        return and_(*clauses)


# -- opening the store ---------------------------------------------------------------


def read_only_engine(url: str) -> Engine:
    """An engine that cannot write: the dashboard only ever reads.

    A SQLite file that does not exist is not created (that would leave an empty store
    behind a typo): it is reported as not ready instead."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database not in ("", ":memory:") and not Path(database).is_file():
            raise StoreNotReady(
                f"There is no metrics store at {database} yet. Run `optengine migrate` "
                "(or `make demo`) to create it, or point OPTENGINE_DATABASE_URL at yours."
            )
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _read_only(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA query_only=ON")
            cursor.close()

        return engine
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(
        parsed, pool_pre_ping=True,
        connect_args={"options": "-c default_transaction_read_only=on"},
    )


def check_store(engine: Engine) -> None:
    """Raise ``StoreNotReady`` (with the fix) unless the store is migrated and has rows."""
    try:
        tables = set(inspect(engine).get_table_names())
    except OperationalError as exc:
        raise StoreNotReady(
            f"The metrics store cannot be reached ({exc.orig}). Check OPTENGINE_DATABASE_URL "
            "(or OPTENGINE_DASHBOARD_DATABASE_URL) and that the database is running."
        ) from None
    if "request_log" not in tables:
        raise StoreNotReady(
            "The metrics store has no tables yet. Run `optengine migrate` to create them, "
            "then send traffic through the gateway (`make demo` does both)."
        )
    with engine.connect() as conn:
        if conn.scalar(select(RequestLog.id).limit(1)) is None:
            raise StoreNotReady(
                "No requests recorded yet. Send traffic through the gateway "
                "(`optengine serve`, or `make demo` for a sample workload); this page fills "
                "in as requests arrive."
            )


def has_table(engine: Engine, name: str) -> bool:
    return name in set(inspect(engine).get_table_names())


# -- the hourly figures -------------------------------------------------------------


@cache
def _pricing() -> Pricing:
    """The rollup's pricing from the settings: the hours not rolled up yet are priced as
    the rollup will price them, so their baseline matches the rolled-up hours'."""
    return pricing(load_settings())


def sums(engine: Engine, filters: Filters, by: Sequence[str], columns: Sequence[str],
         ) -> HourlySums:
    """``hourly_sums`` over the filters' window, drawn in its bucket, one tenant and
    model or all."""
    start, end = filters.window
    return hourly_sums(engine, start, end, by=by, columns=columns, bucket_s=filters.bucket_s,
                       tenant=filters.tenant, model=filters.model,
                       pricing=_pricing() if set(columns) & set(PRICED) else None)


def _as_time(epoch: Any) -> datetime:
    return datetime.fromtimestamp(int(epoch), UTC)


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def percentile(values: Any, q: int) -> float | None:
    """The q-th percentile with linear interpolation (numpy's default, the same as
    ``statistics.quantiles(method="inclusive")``), None without values."""
    array = np.asarray(values, dtype=float)
    array = array[~np.isnan(array)]
    return float(np.percentile(array, q)) if array.size else None


# -- filter choices ----------------------------------------------------------------------


def filter_choices(engine: Engine, filters: Filters) -> tuple[list[str], list[str]]:
    """Tenants and served models seen in the time range (at most 500 of each)."""
    unfiltered = Filters(time_range=filters.time_range, end=filters.end)
    rows = sums(engine, unfiltered, ("tenant", "model"), ("requests",)).rows
    tenants = {r["tenant"] for r in rows}
    models = {r["model"] for r in rows if r["model"]}
    return sorted(tenants)[:500], sorted(models)[:500]


# -- overview ------------------------------------------------------------------------------


@dataclass
class Overview:
    requests: int
    errors: int
    completion_tokens: int
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    sampled: int  # rows the percentiles were computed from
    source: str  # the tables the counts came from (Split.source)
    series: list[dict[str, Any]] = field(default_factory=list)  # per bucket
    percentiles: list[dict[str, Any]] = field(default_factory=list)  # per bucket, long form
    worker_load: list[dict[str, Any]] = field(default_factory=list)  # per bucket and worker

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def output_tokens_per_s(self) -> float | None:
        """Output tokens per second over the buckets that saw traffic."""
        if not self.series:
            return None
        seconds = len(self.series) * self.series[0]["bucket_s"]
        return self.completion_tokens / seconds


def overview(engine: Engine, filters: Filters) -> Overview:
    size = filters.bucket_s
    # one read per bucket and upstream: the per-worker load, and summed, the series
    load = sums(engine, filters, ("time", "upstream"), ("requests", "errors",
                                                        "completion_tokens"))
    buckets: dict[datetime, list[int]] = {}
    for row in load.rows:
        into = buckets.setdefault(row["time"], [0, 0, 0])
        for i, column in enumerate(("requests", "errors", "completion_tokens")):
            into[i] += row[column]
    with engine.connect() as conn:
        sample = conn.execute(
            select(RequestLog.created_at, RequestLog.ttft_ms, RequestLog.latency_ms)
            .where(filters.where(), RequestLog.status_code < 400)
            .order_by(RequestLog.created_at.desc()).limit(filters.sample_rows)).all()
    series = [{"time": t, "bucket_s": size, "requests": n, "errors": e,
               "output_tokens_per_s": tokens / size} for t, (n, e, tokens) in buckets.items()]
    # columns as float arrays (NULL -> NaN): percentiles over the sample in milliseconds
    starts = np.fromiter((int(utc(r[0]).timestamp()) // size * size for r in sample),
                         dtype=np.int64, count=len(sample))
    ttft = np.array([r[1] for r in sample], dtype=float)
    latency = np.array([r[2] for r in sample], dtype=float)
    return Overview(
        requests=sum(s["requests"] for s in series),
        errors=sum(s["errors"] for s in series),
        completion_tokens=sum(r["completion_tokens"] for r in load.rows),
        ttft_p50_ms=percentile(ttft, 50), ttft_p95_ms=percentile(ttft, 95),
        latency_p50_ms=percentile(latency, 50), latency_p95_ms=percentile(latency, 95),
        sampled=len(sample), series=series, source=load.source,
        percentiles=_percentiles_by_bucket(starts, {"TTFT": ttft, "latency": latency}),
        worker_load=[{"time": r["time"], "worker": r["upstream"], "requests": r["requests"]}
                     for r in load.rows if r["upstream"]],  # '' = no upstream
    )


def _percentiles_by_bucket(starts: Any, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for start in np.unique(starts):
        in_bucket = starts == start
        for metric, values in metrics.items():
            for q in (50, 95):
                value = percentile(values[in_bucket], q)
                if value is not None:
                    out.append({"time": _as_time(start), "series": f"{metric} p{q}",
                                "ms": value})
    return out


# -- costs ------------------------------------------------------------------------------


@dataclass
class Costs:
    """Spend against the baseline (what the same requests would have cost on the baseline
    hosted model, unoptimised). ``source`` names the table the figures came from."""

    source: str
    requests: int
    cost_usd: float
    baseline_usd: float
    series: list[dict[str, Any]] = field(default_factory=list)  # per bucket
    by_model: list[dict[str, Any]] = field(default_factory=list)
    saved_by_lever: dict[str, float] = field(default_factory=dict)  # + NOT_ATTRIBUTED

    @property
    def saved_usd(self) -> float:
        return self.baseline_usd - self.cost_usd

    @property
    def saved_share(self) -> float | None:
        return self.saved_usd / self.baseline_usd if self.baseline_usd else None

    @property
    def cost_per_request_usd(self) -> float | None:
        return self.cost_usd / self.requests if self.requests else None


def costs(engine: Engine, filters: Filters) -> Costs:
    """Spend and baseline per bucket and per model, savings by lever, as the cost rollup
    attributes them (the hours it has not reached yet priced the way it will)."""
    saved = [f"saved_{lever}_usd" for lever in LEVERS]
    found = sums(engine, filters, ("time", "model"),
                 ("requests", "cost_usd", "baseline_usd", *saved))
    series: dict[datetime, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    for row in found.rows:
        for into in (series.setdefault(row["time"], {"time": row["time"]}),
                     models.setdefault(row["model"] or "(none)",
                                       {"model": row["model"] or "(none)"})):
            for column in ("requests", "cost_usd", "baseline_usd"):
                into[column] = into.get(column, 0) + row[column]
    by_model = sorted(models.values(), key=lambda m: -m["cost_usd"])[:50]
    for m in by_model:
        m["cost_per_request_usd"] = m["cost_usd"] / m["requests"] if m["requests"] else None
    return Costs(
        source=found.source,
        requests=sum(r["requests"] for r in found.rows),
        cost_usd=sum(r["cost_usd"] for r in found.rows),
        baseline_usd=sum(r["baseline_usd"] for r in found.rows),
        series=list(series.values()),
        by_model=by_model,
        saved_by_lever={lever: sum(r[column] for r in found.rows)
                        for lever, column in zip(LEVERS, saved, strict=True)},
    )


@dataclass
class MonthToDate:
    """Spend of the calendar month so far (``[since, until)``), all tenants and per
    tenant, and the month's length: what budgets are judged on."""

    since: datetime
    until: datetime
    days_in_month: float
    total_usd: float
    by_tenant: dict[str, float]

    def projected(self, spent: float) -> float | None:
        """Month-end spend at the month's rate so far (None before a whole hour)."""
        elapsed = (self.until - self.since) / timedelta(days=1)
        return spent / elapsed * self.days_in_month if elapsed >= 1 / 24 else None


def month_to_date(engine: Engine, filters: Filters) -> MonthToDate:
    _, end = filters.window
    since = end.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month = (since + timedelta(days=32)).replace(day=1)
    rows = hourly_sums(engine, since, end, by=("tenant",), columns=("cost_usd",)).rows \
        if end > since else []
    by_tenant = {r["tenant"]: r["cost_usd"] for r in rows}
    return MonthToDate(since, end, (next_month - since) / timedelta(days=1),
                       sum(by_tenant.values()), by_tenant)


def cost_reports(engine: Engine, filters: Filters, *, limit: int = 20) -> list[dict[str, Any]]:
    """The newest stored cost reports (the cost_management flow's), of the tenant filter's
    tenant and the all-tenants ones, with their Markdown and CSV for download."""
    if not has_table(engine, CostReport.__tablename__):
        return []
    reports = latest_reports(engine, limit=limit * 5)
    return [r for r in reports if r["tenant"] in (None, filters.tenant)][:limit]


@dataclass
class KeySpending:
    """Spend per API key (``key_cost_rollups``) in the whole UTC hours ``[since, until)``
    holding the time range, each key against its budget (``services.costs.reports.
    key_spend``: its budget period's spend up to ``until``). The key rollup is written by
    the cost rollup run, so its figures stop at ``rolled_up_to`` (None before the first
    run); it holds no model and no baseline, so neither the model filter nor savings
    apply. ``found`` counts the keys before ``keys`` was cut to the limit."""

    since: datetime
    until: datetime
    rolled_up_to: datetime | None
    found: int
    keys: list[dict[str, Any]] = field(default_factory=list)


def key_spending(engine: Engine, filters: Filters, *, limit: int = 500) -> KeySpending:
    """The keys with traffic in the range, or with a budget, by spend, highest first (of
    the tenant filter's tenant, or all)."""
    since, until = whole_hours(*filters.window)
    if not has_table(engine, KeyCostRollup.__tablename__):
        raise StoreNotReady("The store has no key_cost_rollups table yet: run "
                            "`optengine migrate`.")
    found = key_spend(engine, since, until, tenant=filters.tenant,
                      configured=configured_key_budgets(load_settings()))
    with engine.connect() as conn:
        watermark = conn.scalar(select(CostRollupState.watermark)
                                .where(CostRollupState.name == WATERMARK))
    return KeySpending(since, until, None if watermark is None else utc(watermark),
                       len(found), [_key_row(k) for k in found[:limit]])


def _key_row(key: KeySpend) -> dict[str, Any]:
    budget = key.budget
    return {"key": f"key:{key.key_id}", "name": key.name, "tenant": key.tenant,
            "revoked": None if key.revoked_at is None else utc(key.revoked_at),
            "requests": key.requests, "errors": key.errors, "cost_usd": key.cost_usd,
            "cost_per_request_usd": key.cost_usd / key.requests if key.requests else None,
            "budget": describe_budget(budget.limit_usd if budget else None,
                                      budget.period if budget else "month"),
            "budget_period": key.budget_window or None,
            "budget_spent_usd": key.budget_spent_usd, "budget_used": key.budget_used}


# -- cache, tokens, routing ---------------------------------------------------------------


@dataclass
class CacheTokensRouting:
    lookups: int
    hits_by_layer: dict[str, int]
    latest_report: dict[str, Any] | None  # the cache_optimization flow's newest report
    report_history: list[dict[str, Any]]
    tokens_before: int
    tokens_after: int
    saved_by_stage: dict[str, int]
    stage_rows_sampled: int
    routing_share: list[dict[str, Any]]
    cascade_escalated: int
    cascade_accepted: int
    router_version: dict[str, Any] | None

    @property
    def hit_rate(self) -> float | None:
        return sum(self.hits_by_layer.values()) / self.lookups if self.lookups else None

    @property
    def tokens_saved(self) -> int:
        return self.tokens_before - self.tokens_after

    @property
    def escalation_rate(self) -> float | None:
        total = self.cascade_escalated + self.cascade_accepted
        return self.cascade_escalated / total if total else None


def cache_tokens_routing(engine: Engine, filters: Filters) -> CacheTokensRouting:
    counts = ("requests", *HIT_LAYERS.values(), "cache_misses", "measured_tokens_before",
              "measured_tokens_after", "cascade_escalated", "cascade_accepted", "routed")
    groups = sums(engine, filters, ("model",), counts).rows
    where = filters.where()
    with engine.connect() as conn:
        stages = conn.scalars(
            select(RequestLog.token_stages).where(where, RequestLog.token_stages.is_not(None))
            .order_by(RequestLog.created_at.desc()).limit(filters.sample_rows)).all()
        reports = conn.execute(
            select(CacheReport.created_at, CacheReport.overall_hit_rate)
            .where(CacheReport.created_at >= filters.window[0])
            .order_by(CacheReport.created_at.desc()).limit(200)).all()
        latest = conn.execute(select(CacheReport.__table__)
                              .order_by(CacheReport.created_at.desc()).limit(1)).first()
        router = conn.execute(
            select(RouterVersion.version, RouterVersion.activated_at, RouterVersion.labels,
                   RouterVersion.metrics).where(RouterVersion.active.is_(True))
            .order_by(RouterVersion.activated_at.desc()).limit(1)).first()
    saved: Counter[str] = Counter()
    for entry in stages:
        for stage, tokens in (entry or {}).items():
            saved[stage] += int(tokens)

    def total(column: str) -> int:
        return sum(g[column] for g in groups)

    routed: Counter[str] = Counter()
    for g in groups:
        routed[g["model"] or "(none)"] += g["routed"]
    share = [(m, n) for m, n in routed.most_common(50) if n]
    total_routed = sum(n for _, n in share)
    hits = {layer: total(column) for layer, column in HIT_LAYERS.items()}
    return CacheTokensRouting(
        lookups=sum(hits.values()) + total("cache_misses"),
        hits_by_layer=hits,
        latest_report=None if latest is None else _report(latest),
        report_history=[{"time": utc(r.created_at), "hit_rate": r.overall_hit_rate}
                        for r in reversed(reports) if r.overall_hit_rate is not None],
        tokens_before=total("measured_tokens_before"),
        tokens_after=total("measured_tokens_after"),
        saved_by_stage=dict(saved.most_common()), stage_rows_sampled=len(stages),
        routing_share=[{"model": m, "requests": n, "share": n / total_routed}
                       for m, n in share],
        cascade_escalated=total("cascade_escalated"),
        cascade_accepted=total("cascade_accepted"),
        router_version=None if router is None else {
            "version": router.version, "activated_at": router.activated_at,
            "labels": router.labels, "metrics": router.metrics},
    )


def _report(report: Any) -> dict[str, Any]:
    tiers = [{"tier": tier, "hit_rate": figures.get("hit_rate"),
              "target": figures.get("target"), "meets_target": figures.get("meets_target"),
              "lookups": figures.get("lookups"), "hits": figures.get("hits")}
             for tier, figures in (report.layers or {}).items()]
    return {"created_at": utc(report.created_at), "overall_hit_rate": report.overall_hit_rate,
            "lookups": report.lookups, "hits": report.hits, "saved_usd": report.saved_usd,
            "tiers": tiers}


# -- alerts ------------------------------------------------------------------------------


@dataclass
class Alerts:
    firing: list[dict[str, Any]]
    recent: list[dict[str, Any]]


def alerts(engine: Engine, filters: Filters, *, limit: int = 200) -> Alerts:
    """Firing alerts (unresolved and past pending, whenever raised) and every alert
    raised in the range."""
    columns = (Alert.id, Alert.created_at, Alert.severity, Alert.source, Alert.message,
               Alert.resolved_at)
    start, end = filters.window
    try:
        with engine.connect() as conn:
            firing = conn.execute(select(*columns).where(Alert.resolved_at.is_(None),
                                                         Alert.state != "pending")
                                  .order_by(Alert.created_at.desc()).limit(limit)).all()
            recent = conn.execute(select(*columns).where(
                Alert.created_at >= start, Alert.created_at < end)
                .order_by(Alert.created_at.desc()).limit(limit)).all()
    except (OperationalError, ProgrammingError):
        raise StoreNotReady("The store has no alerts table yet: run `optengine migrate`."
                            ) from None
    return Alerts(firing=[_alert(r) for r in firing], recent=[_alert(r) for r in recent])


def _alert(row: Any) -> dict[str, Any]:
    return {"raised": utc(row.created_at), "severity": row.severity, "source": row.source,
            "message": row.message,
            "resolved": None if row.resolved_at is None else utc(row.resolved_at)}


__all__ = [
    "Alerts", "CacheTokensRouting", "Costs", "Filters", "KeySpending", "Overview",
    "StoreNotReady", "TIME_RANGES", "alerts", "cache_tokens_routing", "check_store", "costs",
    "filter_choices", "key_spending", "overview", "read_only_engine",
]
