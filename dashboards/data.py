"""What the dashboard shows, read from the metrics store by plain functions.

Pages stay thin: each figure on a page is one call here, tested without Streamlit.
Every query is bounded: ranges drawn in whole hours read the hourly ``cost_rollups`` and
``request_log`` only for the hours not rolled up yet (``split``); other counts and sums
are aggregated by the database per time bucket over the range (never row by row in
Python), and the few figures SQL cannot aggregate portably
(percentiles, per-stage token savings held in JSON) are computed from at most
``Filters.sample_rows`` of the newest matching rows, which the page says when it cuts.

The store is opened read-only (``read_only_engine``): ``PRAGMA query_only`` on SQLite, a
read-only transaction default on PostgreSQL (in production the dashboard also connects
as its own read-only role, see ``READ_ONLY_ROLE_SQL``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    ColumnElement,
    Engine,
    and_,
    case,
    cast,
    create_engine,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.types import Integer

from models import Alert, CacheReport, CostReport, CostRollup, CostRollupState, RequestLog
from models.tables import RouterVersion
from services.costs.reports import LEVERS, latest_reports
from services.costs.reports.rollup import WATERMARK

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
HIT_LAYERS = ("L1", "L2", "L3", "SEMANTIC")
# the saving of hours the cost rollup has not reached yet: baseline - cost, no lever
NOT_ATTRIBUTED = "not rolled up yet"
CASCADE_ESCALATED = "cascade: cheap attempt escalated"
CASCADE_ACCEPTED = "cascade: accepted"

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


# -- hourly rollups, and the hours not rolled up yet -----------------------------------


@dataclass(frozen=True)
class Split:
    """Where a window's figures come from: ``cost_rollups`` for the hours
    ``[start, rolled_until)``, ``request_log`` from ``tail_from`` to the window's end.
    ``rolled_until`` None: ``request_log`` only (a range drawn finer than an hour, or a
    store the rollup has not reached)."""

    start: datetime
    rolled_until: datetime | None = None

    @property
    def tail_from(self) -> datetime:
        return self.rolled_until or self.start

    @property
    def source(self) -> str:
        return "request_log" if self.rolled_until is None else "cost_rollups + request_log"


def split(engine: Engine, filters: Filters) -> Split:
    """Ranges drawn in whole hours start at a whole hour and read the rollups up to the
    hour the rollup's watermark (newest ``ingested_at`` it read) is in: every hour before
    it is rolled up whole, so ``request_log`` is read for an hour or two, not the range."""
    start, end = filters.window
    if not filters.hourly:
        return Split(start)
    start = start.replace(minute=0, second=0, microsecond=0)
    if not has_table(engine, CostRollupState.__tablename__):
        return Split(start)
    with engine.connect() as conn:
        watermark = conn.scalar(select(CostRollupState.watermark)
                                .where(CostRollupState.name == WATERMARK))
    if watermark is None:
        return Split(start)
    rolled = min(utc(watermark), end).replace(minute=0, second=0, microsecond=0)
    return Split(start, rolled) if rolled > start else Split(start)


def _rolled_up(conn: Connection, filters: Filters, part: Split, by: tuple[Any, ...],
               *sums: ColumnElement[Any]) -> list[Any]:
    """``cost_rollups`` rows of the split's rolled-up hours, grouped by ``by`` (hour,
    model ...), with the tenant and model filters; none without rolled-up hours."""
    if part.rolled_until is None:
        return []
    t = CostRollup.__table__.c
    query = select(*by, *sums).where(t.hour >= part.start, t.hour < part.rolled_until)
    if filters.tenant:
        query = query.where(t.tenant == filters.tenant)
    if filters.model:
        query = query.where(t.model == filters.model)
    return list(conn.execute(query.group_by(*by)).all())


def _add_up(rows: Any, key: Any) -> dict[Any, list[float]]:
    """Rows of (key columns..., numbers...) summed per ``key(row)``."""
    totals: dict[Any, list[float]] = {}
    for row in rows:
        k, values = key(row)
        current = totals.setdefault(k, [0.0] * len(values))
        for i, value in enumerate(values):
            current[i] += float(value or 0)
    return dict(sorted(totals.items(), key=lambda item: item[0]))


def _epoch(start: Any, bucket_s: int) -> int:
    """A bucket's start in epoch seconds, from a rollup hour or a ``_bucket`` value."""
    seconds = int(utc(start).timestamp()) if isinstance(start, datetime) else int(start)
    return seconds // bucket_s * bucket_s


# -- time buckets ----------------------------------------------------------------------


def _bucket(engine: Engine, seconds: int) -> ColumnElement[Any]:
    """Start of each row's time bucket, as epoch seconds, computed by the database."""
    if engine.dialect.name == "sqlite":
        epoch: ColumnElement[Any] = cast(func.strftime("%s", RequestLog.created_at), Integer)
        return (epoch // seconds) * seconds
    epoch = func.extract("epoch", RequestLog.created_at)
    return cast(func.floor(epoch / seconds) * seconds, Integer)


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
    part = split(engine, filters)
    unfiltered = Filters(time_range=filters.time_range, end=filters.end)
    tail = unfiltered.where(since=part.tail_from)
    r = CostRollup.__table__.c
    with engine.connect() as conn:
        tenants = {t for t, in _rolled_up(conn, unfiltered, part, (r.tenant,))}
        tenants.update(conn.scalars(select(RequestLog.tenant).where(tail).distinct()))
        models = {m for m, in _rolled_up(conn, unfiltered, part, (r.model,))}
        models.update(conn.scalars(select(RequestLog.model_served).where(tail).distinct()))
    return sorted(tenants)[:500], sorted(m for m in models if m)[:500]


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
    part = split(engine, filters)
    size = filters.bucket_s
    bucket = _bucket(engine, size).label("bucket")
    tail = filters.where(since=part.tail_from)
    is_error = case((RequestLog.status_code >= 400, 1), else_=0)
    r = CostRollup.__table__.c
    with engine.connect() as conn:
        counts = _rolled_up(conn, filters, part, (r.hour,), func.sum(r.requests),
                            func.sum(r.errors), func.sum(r.completion_tokens))
        counts += conn.execute(
            select(bucket, func.count(), func.sum(is_error),
                   func.sum(RequestLog.completion_tokens))
            .where(tail).group_by(bucket)).all()
        load = _rolled_up(conn, filters, part, (r.hour, r.upstream), func.sum(r.requests))
        load = [row for row in load if row[1]]  # '' = no upstream
        load += conn.execute(
            select(bucket, RequestLog.worker, func.count())
            .where(tail, RequestLog.worker.is_not(None)).group_by(bucket, RequestLog.worker)
        ).all()
        sample = conn.execute(
            select(bucket, RequestLog.ttft_ms, RequestLog.latency_ms)
            .where(filters.where(since=part.start), RequestLog.status_code < 400)
            .order_by(RequestLog.created_at.desc()).limit(filters.sample_rows)).all()
    by_bucket = _add_up(counts, lambda row: (_epoch(row[0], size), row[1:]))
    series = [{"time": _as_time(b), "bucket_s": size, "requests": int(n), "errors": int(e),
               "output_tokens_per_s": c / size} for b, (n, e, c) in by_bucket.items()]
    per_worker = _add_up(load, lambda row: ((_epoch(row[0], size), row[1]), row[2:]))
    # columns as float arrays (NULL -> NaN): percentiles over the sample in milliseconds
    starts = np.fromiter((r[0] for r in sample), dtype=np.int64, count=len(sample))
    ttft = np.array([r[1] for r in sample], dtype=float)
    latency = np.array([r[2] for r in sample], dtype=float)
    return Overview(
        requests=sum(s["requests"] for s in series),
        errors=sum(s["errors"] for s in series),
        completion_tokens=int(sum(c for _, _, c in by_bucket.values())),
        ttft_p50_ms=percentile(ttft, 50), ttft_p95_ms=percentile(ttft, 95),
        latency_p50_ms=percentile(latency, 50), latency_p95_ms=percentile(latency, 95),
        sampled=len(sample), series=series, source=part.source,
        percentiles=_percentiles_by_bucket(starts, {"TTFT": ttft, "latency": latency}),
        worker_load=[{"time": _as_time(b), "worker": w, "requests": int(n)}
                     for (b, w), (n,) in per_worker.items()],
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
    """Spend and baseline per bucket and per model, savings by lever: the rolled-up hours
    from ``cost_rollups`` (levers attributed by the cost rollup), the rest summed from
    ``request_log`` (its saving shown as not attributed yet)."""
    part = split(engine, filters)
    size = filters.bucket_s
    bucket = _bucket(engine, size).label("bucket")
    tail = filters.where(since=part.tail_from)
    cost = func.sum(RequestLog.cost_usd)
    baseline = func.sum(RequestLog.baseline_cost_usd)
    r = CostRollup.__table__.c
    levers = [r[f"saved_{lever}_usd"] for lever in LEVERS]
    with engine.connect() as conn:
        rows = _rolled_up(conn, filters, part, (r.hour,), func.sum(r.requests),
                          func.sum(r.cost_usd), func.sum(r.baseline_usd))
        rows += conn.execute(select(bucket, func.count(), cost, baseline)
                             .where(tail).group_by(bucket)).all()
        models = _rolled_up(conn, filters, part, (r.model,), func.sum(r.requests),
                            func.sum(r.cost_usd), func.sum(r.baseline_usd))
        models += conn.execute(
            select(RequestLog.model_served, func.count(), cost, baseline)
            .where(tail).group_by(RequestLog.model_served)).all()
        saved = _rolled_up(conn, filters, part, (), *(func.sum(c) for c in levers))
    by_bucket = _add_up(rows, lambda row: (_epoch(row[0], size), row[1:]))
    series = [{"time": _as_time(b), "requests": int(n), "cost_usd": c, "baseline_usd": base}
              for b, (n, c, base) in by_bucket.items()]
    by_model = sorted(_add_up(models, lambda row: (row[0] or "(none)", row[1:])).items(),
                      key=lambda item: -item[1][1])[:50]
    result = Costs(
        source=part.source,
        requests=sum(s["requests"] for s in series),
        cost_usd=sum(s["cost_usd"] for s in series),
        baseline_usd=sum(s["baseline_usd"] for s in series),
        series=series,
        by_model=[{"model": m, "requests": int(n), "cost_usd": c, "baseline_usd": base,
                   "cost_per_request_usd": c / n if n else None}
                  for m, (n, c, base) in by_model],
    )
    lever_sums = saved[0] if saved else [0.0] * len(LEVERS)
    result.saved_by_lever = {lever: float(v or 0) for lever, v in zip(LEVERS, lever_sums,
                                                                      strict=True)}
    result.saved_by_lever[NOT_ATTRIBUTED] = result.saved_usd - sum(
        result.saved_by_lever.values())
    return result


@dataclass
class MonthToDate:
    """Spend of the calendar month so far, all tenants and per tenant, from the rolled-up
    hours (``[since, until)``), and the month's length: what budgets are judged on."""

    since: datetime
    until: datetime
    days_in_month: float
    total_usd: float
    by_tenant: dict[str, float]

    def projected(self, spent: float) -> float | None:
        """Month-end spend at the month's rate so far (None before a whole hour)."""
        elapsed = (self.until - self.since) / timedelta(days=1)
        return spent / elapsed * self.days_in_month if elapsed > 0 else None


def month_to_date(engine: Engine, filters: Filters) -> MonthToDate:
    _, end = filters.window
    since = end.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month = (since + timedelta(days=32)).replace(day=1)
    part = split(engine, Filters(time_range="last 30 days", end=end))
    until = max(since, part.rolled_until or since)
    r = CostRollup.__table__.c
    with engine.connect() as conn:
        rows = _rolled_up(conn, Filters(end=end), Split(since, until), (r.tenant,),
                          func.sum(r.cost_usd)) if until > since else []
    by_tenant = {t: float(c or 0) for t, c in rows}
    return MonthToDate(since, until, (next_month - since) / timedelta(days=1),
                       sum(by_tenant.values()), by_tenant)


def cost_reports(engine: Engine, filters: Filters, *, limit: int = 20) -> list[dict[str, Any]]:
    """The newest stored cost reports (the cost_management flow's), of the tenant filter's
    tenant and the all-tenants ones, with their Markdown and CSV for download."""
    if not has_table(engine, CostReport.__tablename__):
        return []
    reports = latest_reports(engine, limit=limit * 5)
    return [r for r in reports if r["tenant"] in (None, filters.tenant)][:limit]


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
    where = filters.where()
    before = RequestLog.prompt_tokens_before_optimization
    after = RequestLog.prompt_tokens_after_optimization
    measured = and_(before.is_not(None), after.is_not(None))
    reason = RequestLog.route_reason

    def count(condition: ColumnElement[bool]) -> ColumnElement[Any]:
        return func.sum(case((condition, 1), else_=0))

    with engine.connect() as conn:
        # one pass over the range: per cache layer and model, tokens, cascade outcomes
        # and routed requests
        groups = conn.execute(
            select(RequestLog.cache_layer, RequestLog.model_served, func.count(),
                   func.sum(case((measured, before), else_=0)),
                   func.sum(case((measured, after), else_=0)),
                   count(reason.like(f"{CASCADE_ESCALATED}%")),
                   count(reason.like(f"%{CASCADE_ACCEPTED}%")),
                   count(reason.is_not(None) & ~reason.like("batch:%")))
            .where(where).group_by(RequestLog.cache_layer, RequestLog.model_served)).all()
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
    by_layer = _add_up(groups, lambda row: (row[0] or "", row[2:3]))
    layers = {layer: int(n) for layer, (n,) in by_layer.items() if layer}
    tokens_before, tokens_after, escalated, accepted = (
        int(sum(row[i] or 0 for row in groups)) for i in range(3, 7))
    routed = _add_up(groups, lambda row: (row[1] or "(none)", row[7:8]))
    share = sorted(((m, int(n)) for m, (n,) in routed.items() if n), key=lambda x: -x[1])[:50]
    total_routed = sum(n for _, n in share)
    misses = layers.pop("MISS", 0)
    return CacheTokensRouting(
        lookups=sum(layers.get(layer, 0) for layer in HIT_LAYERS) + misses,
        hits_by_layer={layer: layers.get(layer, 0) for layer in HIT_LAYERS},
        latest_report=None if latest is None else _report(latest),
        report_history=[{"time": utc(r.created_at), "hit_rate": r.overall_hit_rate}
                        for r in reversed(reports) if r.overall_hit_rate is not None],
        tokens_before=tokens_before, tokens_after=tokens_after,
        saved_by_stage=dict(saved.most_common()), stage_rows_sampled=len(stages),
        routing_share=[{"model": m, "requests": n, "share": n / total_routed}
                       for m, n in share],
        cascade_escalated=escalated, cascade_accepted=accepted,
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
    "Alerts", "CacheTokensRouting", "Costs", "Filters", "Overview", "StoreNotReady",
    "TIME_RANGES", "alerts", "cache_tokens_routing", "check_store", "costs",
    "filter_choices", "overview", "read_only_engine",
]
