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

The same run and transaction rewrite ``key_cost_rollups`` (spend per hour x API key) for
the same hours, so the two tables always cover the same rows.

A run's cost is therefore the new rows plus the rows of the hours they touch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    and_,
    case,
    cast,
    delete,
    func,
    insert,
    select,
)

from models import CostRollup, CostRollupState, KeyCostRollup, RequestLog
from services.caching import HIT_LAYERS
from services.costs.catalog import PriceCatalog
from services.costs.reports.attribution import (
    BATCH_PREFIX,
    ESCALATED_PREFIX,
    LEVERS,
    GroupTotals,
    attribute,
)
from services.costs.reports.plan_routing import ACCEPTED
from services.costs.reports.read import CostSummary, add, check_period

WATERMARK = "request_log"
HOUR = timedelta(hours=1)
# cache layer -> its rollup column
_LAYERS = (("hits_l1", "L1"), ("hits_l2", "L2"), ("hits_l3", "L3"),
           ("hits_semantic", "SEMANTIC"))
# the counts of every row (priced or not) a rollup row holds besides tokens and money
COUNTS = (*(column for column, _ in _LAYERS), "cache_misses", "measured_tokens_before",
          "measured_tokens_after", "cascade_escalated", "cascade_accepted", "routed")
_LOG = RequestLog.__table__
_ROLLUPS = CostRollup.__table__
_KEY_ROLLUPS = KeyCostRollup.__table__


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
    conn.execute(delete(_KEY_ROLLUPS).where(_KEY_ROLLUPS.c.hour.in_(hours)))
    rows: list[dict[str, Any]] = []
    key_rows: list[dict[str, Any]] = []
    now = datetime.now(UTC)
    for hour in hours:
        for group in conn.execute(_aggregate(hour, hour + HOUR)).mappings():
            rows.append(_rollup_row(hour, group, catalog, hosted, now))
        key_rows += [{"hour": hour, **group}
                     for group in conn.execute(_aggregate_keys(hour, hour + HOUR)).mappings()]
    if rows:
        conn.execute(insert(_ROLLUPS), rows)
    if key_rows:
        conn.execute(insert(_KEY_ROLLUPS), key_rows)
    return len(rows)


def _aggregate_keys(start: datetime, end: datetime) -> Any:
    """Rows of ``[start, end)`` made with an API key, summed per key x tenant: requests
    (an escalated cascade attempt is not one), errors, and the spend a key's budget
    counts (attempts included)."""
    c = _LOG.c
    attempt = c.route_reason.like(f"{ESCALATED_PREFIX}%")
    return (
        select(c.api_key_id, c.tenant,
               func.coalesce(func.sum(case((attempt, 0), else_=1)), 0).label("requests"),
               func.coalesce(func.sum(case((c.status_code >= 400, 1), else_=0)), 0)
               .label("errors"),
               func.coalesce(func.sum(c.cost_usd), 0.0).label("cost_usd"))
        .where(c.created_at >= start, c.created_at < end, c.api_key_id.is_not(None))
        .group_by(c.api_key_id, c.tenant)
    )


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


# what ``hourly_sums`` can group by and sum; the priced columns need a ``Pricing`` for
# the hours it reads from ``request_log`` (their baseline is priced as the rollup does it)
KEYS = ("time", "tenant", "model", "upstream", "lever")
SUMMED = ("requests", "errors", "unpriced", "priced", "prompt_tokens", "prompt_tokens_before",
          "completion_tokens", "cached_tokens", "cost_usd", *COUNTS)
PRICED = ("baseline_usd", *(f"saved_{lever}_usd" for lever in LEVERS))
_MONEY = frozenset({"cost_usd", *PRICED})


@dataclass(frozen=True, slots=True)
class Pricing:
    """How the rollup prices a baseline and tells hosted rows from self-hosted ones."""

    catalog: PriceCatalog
    hosted: HostedUpstreams


@dataclass(frozen=True, slots=True)
class HourlySums:
    """``hourly_sums``' rows, and whether any hour of them came from ``cost_rollups``."""

    rows: list[dict[str, Any]]
    from_rollups: bool

    @property
    def source(self) -> str:
        return "cost_rollups + request_log" if self.from_rollups else "request_log"


def hourly_sums(engine: Engine, since: datetime, until: datetime, *,
                by: Sequence[str] = (), columns: Sequence[str] = SUMMED,
                pricing: Pricing | None = None, tenant: str | None = None,
                model: str | None = None, bucket_s: int = 3600,
                overlap: timedelta = timedelta(minutes=10)) -> HourlySums:
    """``columns`` summed per ``by`` (of ``KEYS``; ``time`` is the start of each
    ``bucket_s`` bucket, epoch-aligned) over ``[since, until)``, one tenant and model or all:
    the figures ``cost_rollups`` holds, or will hold once ``roll_up`` has read every row
    already in ``request_log``, whenever the rollup last ran.

    Buckets of whole hours read whole hours: the hours ``roll_up`` would redo next (those
    of rows ingested after its watermark less the overlap: the current hour, a late
    replay's old one) are aggregated from ``request_log`` the way ``roll_up`` does it
    (same paths, same baseline pricing), every other hour is summed by the store from
    ``cost_rollups``; before the first rollup every hour comes from ``request_log``. So the
    raw rows read are the new ones and those of their hours, not the range's history.
    Finer buckets read ``request_log`` alone, to the second."""
    check_period(since, until)
    if bad := [k for k in by if k not in KEYS] + [c for c in columns
                                                   if c not in SUMMED and c not in PRICED]:
        raise ValueError(f"hourly_sums cannot group by or sum {bad}: keys are {KEYS}, "
                         f"columns {SUMMED + PRICED}")
    if pricing is None and any(c in PRICED for c in columns):
        raise ValueError("baseline and savings need pricing=Pricing(catalog, hosted): "
                         "hours not rolled up yet are priced the way roll_up prices them")
    if bucket_s <= 0:
        raise ValueError(f"bucket_s must be positive, not {bucket_s}")
    totals: dict[tuple[Any, ...], list[float]] = {}

    def fold(key: tuple[Any, ...], values: Iterable[Any]) -> None:
        sums = totals.setdefault(key, [0] * len(columns))
        for i, value in enumerate(values):
            sums[i] += value or 0

    r = _ROLLUPS.c
    with engine.connect() as conn:
        if bucket_s % 3600:
            ranges, rolled = [(since, until)], False
        else:
            first, until = whole_hours(since, until)
            watermark = conn.scalar(
                select(CostRollupState.watermark).where(CostRollupState.name == WATERMARK))
            if watermark is None:
                ranges, rolled = [(first, until)], False
            else:
                touched = _touched_hours(conn, _LOG.c.ingested_at > _utc(watermark) - overlap)
                tail = sorted(h for h in map(_utc, conn.scalars(touched)) if first <= h < until)
                ranges, rolled = _contiguous(tail), True
                keys = [r.hour if k == "time" else r[k] for k in by]
                query = (select(*keys, *(func.sum(r[c]) for c in columns))
                         .where(r.hour >= first, r.hour < until, r.hour.not_in(tail),
                                *_matching(r.tenant, r.model, tenant, model)).group_by(*keys))
                for found in conn.execute(query):
                    key = tuple(_epoch(v, bucket_s) if k == "time" else v
                                for k, v in zip(by, found, strict=False))
                    fold(key, found[len(by):])
        model_of = func.coalesce(_LOG.c.model_served, _LOG.c.model_requested, "")
        where = _matching(_LOG.c.tenant, model_of, tenant, model)
        now = datetime.now(UTC)
        bucket = _epoch_bucket(conn, bucket_s if bucket_s % 3600 else 3600).label("time")
        for start, end in ranges:
            query = _aggregate(start, end, bucket, where=where)
            for group in conn.execute(query).mappings():
                row = (dict(group, lever=group["path"]) if pricing is None else
                       _rollup_row(start, group, pricing.catalog, pricing.hosted, now))
                row["time"] = _epoch(group["time"], bucket_s)
                fold(tuple(row[k] for k in by), (row[c] for c in columns))
    rows = [{**dict(zip(by, key, strict=True)),
             **{c: float(v) if c in _MONEY else int(v)
                for c, v in zip(columns, sums, strict=True)}}
            for key, sums in sorted(totals.items(), key=lambda item: item[0])]
    for row in rows:
        if "time" in row:
            row["time"] = datetime.fromtimestamp(row["time"], UTC)
    return HourlySums(rows, rolled)


def _matching(tenant_column: Any, model_column: Any, tenant: str | None,
              model: str | None) -> list[Any]:
    return ([tenant_column == tenant] if tenant else []) + (
        [model_column == model] if model else [])


def _epoch(value: Any, bucket_s: int) -> int:
    """A bucket's start in epoch seconds, from a rollup hour or an ``_epoch_bucket``."""
    seconds = int(_utc(value).timestamp()) if isinstance(value, datetime | str) else int(value)
    return seconds // bucket_s * bucket_s


def _epoch_bucket(conn: Connection, seconds: int) -> Any:
    """Start of each row's ``seconds`` bucket, as epoch seconds, computed by the store."""
    created = _LOG.c.created_at
    if conn.dialect.name == "sqlite":
        return cast(func.strftime("%s", created), Integer) // seconds * seconds
    return cast(func.floor(func.extract("epoch", created) / seconds) * seconds, Integer)


def whole_hours(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """The whole UTC hours holding ``[since, until)``: what the hourly rollups can answer."""
    return _floor_hour(since), _floor_hour(until - timedelta(microseconds=1)) + HOUR


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


def _aggregate(start: datetime, end: datetime, *by: Any, where: Sequence[Any] = ()) -> Any:
    """Rows of ``[start, end)`` (and ``where``) summed per tenant x model x upstream x path
    (and ``by``)."""
    c = _LOG.c
    priced = and_(c.cost_usd.is_not(None), c.baseline_cost_usd.is_not(None))
    has_usage = and_(c.prompt_tokens.is_not(None), c.completion_tokens.is_not(None))
    before, after = c.prompt_tokens_before_optimization, c.prompt_tokens_after_optimization
    measured = and_(before.is_not(None), after.is_not(None))

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
            *(count(c.cache_layer == layer).label(column) for column, layer in _LAYERS),
            count(c.cache_layer == "MISS").label("cache_misses"),
            *(func.coalesce(func.sum(case((measured, column), else_=0)), 0).label(name)
              for name, column in (("measured_tokens_before", before),
                                   ("measured_tokens_after", after))),
            count(c.route_reason.like(f"{ESCALATED_PREFIX}%")).label("cascade_escalated"),
            count(c.route_reason.like(f"%{ACCEPTED}%")).label("cascade_accepted"),
            count(c.route_reason.is_not(None) & ~c.route_reason.like(f"{BATCH_PREFIX}%"))
            .label("routed"),
        )
        .where(c.created_at >= start, c.created_at < end, *where)
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
    row.update({name: int(group[name]) for name in COUNTS})
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
