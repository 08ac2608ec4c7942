"""Incremental cost rollups: ``request_log`` -> ``cost_rollups``, one hour at a time.

Why this shape: a production store holds hundreds of millions of rows, so a run must
cost what the *new* rows cost, not what history costs, and rows reach the store late
(the telemetry writer replays its spill file after a store outage, hours later, with the
request's own ``created_at``). A watermark on ``created_at`` would miss those rows, so
the watermark is on ``ingested_at``, the store's own clock when it took the row:

1. read ``max(ingested_at)`` over rows newer than ``watermark - overlap`` (index
   ``ix_request_log_ingested_at``). The overlap covers a writer transaction still open
   while a later one committed (PostgreSQL stamps ``now()`` at transaction start), so a
   row committed late is still seen by the next run;
2. the hours those rows fall in (``created_at`` truncated to the UTC hour) are the hours
   to redo: a replayed row from yesterday redoes yesterday's hour, nothing else;
3. each such hour is re-aggregated *whole* from ``request_log`` (index
   ``ix_request_log_created_at``) and its ``cost_rollups`` rows replaced in one
   transaction: a rerun writes the same rows again (idempotent), never twice;
4. the watermark moves only after every hour is written, so a crash mid-run repeats
   work and loses none.

A run's cost is therefore the new rows plus the rows of the hours they touch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, delete, func, insert, select

from models import CostRollup, CostRollupState, RequestLog
from services.caching import HIT_LAYERS
from services.costs.catalog import PriceCatalog
from services.costs.reports.attribution import (
    BATCH_PREFIX,
    ESCALATED_PREFIX,
    LEVERS,
    GroupTotals,
    attribute,
)
from services.costs.reports.read import CostSummary, add, check_period

WATERMARK = "request_log"
HOUR = timedelta(hours=1)
_LOG = RequestLog.__table__
_ROLLUPS = CostRollup.__table__


@dataclass(frozen=True, slots=True)
class RollupRun:
    """What one run did: hours re-aggregated, rollup rows written, the new watermark."""

    hours: int
    rows: int
    watermark: datetime | None
    seconds: float


class HostedUpstreams:
    """Tells a hosted API's URL (``worker`` of a hosted row) from one of our workers."""

    def __init__(self, urls: Iterable[str]) -> None:
        self._prefixes = tuple(u.rstrip("/") for u in urls if u)

    def __contains__(self, upstream: object) -> bool:
        return isinstance(upstream, str) and bool(upstream) and upstream.startswith(
            self._prefixes
        )


def roll_up(
    engine: Engine,
    catalog: PriceCatalog,
    hosted: HostedUpstreams,
    *,
    overlap: timedelta = timedelta(minutes=10),
    hours_per_transaction: int = 24,
) -> RollupRun:
    """Bring ``cost_rollups`` up to date with every row ingested since the last run."""
    started = time.perf_counter()
    with engine.connect() as conn:
        watermark = conn.scalar(
            select(CostRollupState.watermark).where(CostRollupState.name == WATERMARK)
        )
        newer = [] if watermark is None else [_LOG.c.ingested_at > _utc(watermark) - overlap]
        newest = conn.scalar(select(func.max(_LOG.c.ingested_at)).where(*newer))
        if newest is None:
            return RollupRun(0, 0, watermark, time.perf_counter() - started)
        touched = _touched_hours(conn, *newer, _LOG.c.ingested_at <= newest)
        hours = sorted({_utc(h) for h in conn.scalars(touched)})
    written = 0
    for start in range(0, len(hours), hours_per_transaction):
        chunk = hours[start : start + hours_per_transaction]
        with engine.begin() as conn:
            written += _rewrite_hours(conn, chunk, catalog, hosted)
    with engine.begin() as conn:
        _set_watermark(conn, _utc(newest))
    return RollupRun(len(hours), written, _utc(newest), time.perf_counter() - started)


def _touched_hours(conn: Connection, *ingested: Any) -> Any:
    """The UTC hours of rows ingested in a range (``(watermark - overlap, newest]``): read
    through ``ix_request_log_ingested_at``, so the cost follows the new rows."""
    return select(_hour_bucket(conn)).where(*ingested).distinct()


def _rewrite_hours(conn: Connection, hours: Sequence[datetime], catalog: PriceCatalog,
                   hosted: HostedUpstreams) -> int:
    conn.execute(delete(_ROLLUPS).where(_ROLLUPS.c.hour.in_(hours)))
    rows: list[dict[str, Any]] = []
    now = datetime.now(UTC)
    for hour in hours:
        for group in conn.execute(_aggregate(hour, hour + HOUR)).mappings():
            rows.append(_rollup_row(hour, group, catalog, hosted, now))
    if rows:
        conn.execute(insert(_ROLLUPS), rows)
    return len(rows)


def live_summary(engine: Engine, catalog: PriceCatalog, hosted: HostedUpstreams,
                 since: datetime, until: datetime) -> CostSummary:
    """Savings by lever of ``[since, until)`` straight from ``request_log``, to the second:
    for short windows (a demo run, a benchmark run), not for reports, which read rollups."""
    check_period(since, until)
    summary = CostSummary(since=since, until=until, tenant=None)
    now = datetime.now(UTC)
    with engine.connect() as conn:
        for group in conn.execute(_aggregate(since, until)).mappings():
            add(summary, CostRollup(**_rollup_row(since, group, catalog, hosted, now)))
    return summary


def hourly_paths(engine: Engine, since: datetime, until: datetime, *,
                 overlap: timedelta = timedelta(minutes=10)) -> list[tuple[Any, ...]]:
    """``(hour, tenant, model, lever, requests, cost_usd)`` for every hour that overlaps
    ``[since, until)`` (whole hours, as rollups hold them): the figures ``cost_rollups``
    holds, or will hold once ``roll_up`` has read every row already in ``request_log``.

    The hours ``roll_up`` would redo next (those of rows ingested after its watermark less
    the overlap: the current hour, a late replay's old one) are re-aggregated from
    ``request_log`` the way ``roll_up`` does it; every other hour is read from
    ``cost_rollups``. So the answer does not depend on when the rollup last ran, and the
    raw rows read are the new ones and those of their hours, not the window's history.
    Before the first rollup every hour comes from ``request_log``."""
    check_period(since, until)
    first, until = _floor_hour(since), _floor_hour(until - timedelta(microseconds=1)) + HOUR
    with engine.connect() as conn:
        watermark = conn.scalar(
            select(CostRollupState.watermark).where(CostRollupState.name == WATERMARK)
        )
        rows: list[tuple[Any, ...]] = []
        if watermark is None:
            ranges = [(first, until)]
        else:
            touched = _touched_hours(conn, _LOG.c.ingested_at > _utc(watermark) - overlap)
            tail = sorted(h for h in map(_utc, conn.scalars(touched)) if first <= h < until)
            ranges = _contiguous(tail)
            r = _ROLLUPS.c
            rolled = (select(r.hour, r.tenant, r.model, r.lever, func.sum(r.requests),
                             func.sum(r.cost_usd))
                      .where(r.hour >= first, r.hour < until)
                      .group_by(r.hour, r.tenant, r.model, r.lever))
            skip = set(tail)
            rows += [(_utc(h), t, m, lever, int(n), float(cost))
                     for h, t, m, lever, n, cost in conn.execute(rolled) if _utc(h) not in skip]
        hour = _hour_bucket(conn).label("hour")
        for start, end in ranges:
            by_path: dict[tuple[Any, ...], list[float]] = {}
            for g in conn.execute(_aggregate(start, end, hour)).mappings():
                sums = by_path.setdefault((_utc(g["hour"]), g["tenant"], g["model"], g["path"]),
                                          [0, 0.0])
                sums[0] += int(g["requests"])
                sums[1] += float(g["cost_usd"])
            # one row per path, summed over upstreams, as the rollup rows above are
            rows += [(*key, int(n), cost) for key, (n, cost) in by_path.items()]
    return sorted(rows)


def _floor_hour(value: datetime) -> datetime:
    return _utc(value).replace(minute=0, second=0, microsecond=0)


def _contiguous(hours: Sequence[datetime]) -> list[tuple[datetime, datetime]]:
    """Sorted hours as ``[start, end)`` runs of consecutive hours."""
    runs: list[tuple[datetime, datetime]] = []
    for h in hours:
        if runs and runs[-1][1] == h:
            runs[-1] = (runs[-1][0], h + HOUR)
        else:
            runs.append((h, h + HOUR))
    return runs


def _aggregate(start: datetime, end: datetime, *by: Any) -> Any:
    """Rows of ``[start, end)`` summed per tenant x model x upstream x path (and ``by``)."""
    c = _LOG.c
    priced = and_(c.cost_usd.is_not(None), c.baseline_cost_usd.is_not(None))
    has_usage = and_(c.prompt_tokens.is_not(None), c.completion_tokens.is_not(None))

    def priced_sum(column: Any) -> Any:
        return func.coalesce(func.sum(case((priced, column), else_=0)), 0)

    def count(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    path = case(
        (c.cache_layer.in_(sorted(HIT_LAYERS - {"SEMANTIC"})), "cache_exact"),
        (c.cache_layer == "SEMANTIC", "cache_semantic"),
        (c.route_reason.like(f"{ESCALATED_PREFIX}%"), "cascade_escalated"),
        (c.route_reason.like(f"{BATCH_PREFIX}%"), "batch"),
        (c.route_reason.is_not(None), "routed"),
        else_="direct",
    ).label("path")
    model = func.coalesce(c.model_served, c.model_requested, "").label("model")
    upstream = func.coalesce(c.worker, "").label("upstream")
    return (
        select(
            *by, c.tenant, model, upstream, path,
            func.count().label("requests"),
            count(c.status_code >= 400).label("errors"),
            count(and_(has_usage, ~priced)).label("unpriced"),
            count(priced).label("priced"),
            priced_sum(c.prompt_tokens).label("prompt_tokens"),
            priced_sum(func.coalesce(c.prompt_tokens_before_optimization, c.prompt_tokens))
            .label("prompt_tokens_before"),
            priced_sum(c.completion_tokens).label("completion_tokens"),
            priced_sum(func.coalesce(c.cached_tokens, 0)).label("cached_tokens"),
            priced_sum(func.coalesce(c.cache_write_tokens, 0)).label("cache_write_tokens"),
            priced_sum(c.cost_usd).label("cost_usd"),
            priced_sum(c.baseline_cost_usd).label("baseline_usd"),
        )
        .where(c.created_at >= start, c.created_at < end)
        .group_by(*by, c.tenant, model, upstream, path)
    )


def _rollup_row(hour: datetime, group: Any, catalog: PriceCatalog, hosted: HostedUpstreams,
                now: datetime) -> dict[str, Any]:
    upstream = group["upstream"]
    totals = GroupTotals(
        path=group["path"],
        model=group["model"],
        self_hosted=bool(upstream) and upstream not in hosted,
        prompt_tokens=int(group["prompt_tokens"]),
        prompt_tokens_before=int(group["prompt_tokens_before"]),
        completion_tokens=int(group["completion_tokens"]),
        cached_tokens=int(group["cached_tokens"]),
        cache_write_tokens=int(group["cache_write_tokens"]),
        cost_usd=float(group["cost_usd"]),
        baseline_usd=float(group["baseline_usd"]),
    )
    baseline, saved = attribute(totals, catalog)
    row = {
        "hour": hour,
        "tenant": group["tenant"],
        "model": totals.model,
        "upstream": upstream,
        "lever": totals.path,
        "requests": int(group["requests"]),
        "errors": int(group["errors"]),
        "unpriced": int(group["unpriced"]),
        "priced": int(group["priced"]),
        "prompt_tokens": totals.prompt_tokens,
        "prompt_tokens_before": totals.prompt_tokens_before,
        "completion_tokens": totals.completion_tokens,
        "cached_tokens": totals.cached_tokens,
        "cost_usd": totals.cost_usd,
        "baseline_usd": baseline,
        "updated_at": now,
    }
    row.update({f"saved_{lever}_usd": saved[lever] for lever in LEVERS})
    return row


def _hour_bucket(conn: Connection) -> Any:
    created = _LOG.c.created_at
    if conn.dialect.name == "postgresql":
        return func.date_trunc("hour", func.timezone("UTC", created))
    return func.strftime("%Y-%m-%d %H:00:00", created)


def _set_watermark(conn: Connection, value: datetime) -> None:
    state = CostRollupState.__table__
    updated = conn.execute(
        state.update().where(state.c.name == WATERMARK)
        .values(watermark=value, updated_at=datetime.now(UTC))
    )
    if updated.rowcount == 0:
        conn.execute(insert(state).values(name=WATERMARK, watermark=value,
                                          updated_at=datetime.now(UTC)))


def _utc(value: datetime | str) -> datetime:
    """The store hands back naive datetimes (SQLite, a UTC-truncated hour) or strings."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
