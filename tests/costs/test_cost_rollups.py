"""Cost rollups on real stores (SQLite and PostgreSQL): savings by lever add up to
baseline - actual, reruns change nothing, late rows are picked up by their hour, and a
run reads only the hours that new rows touch."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from migrations import downgrade_to, upgrade_to_head
from models import CostRollup, RequestLog, create_store_engine
from services.costs import PriceCatalog
from services.costs.reports import (
    HostedUpstreams,
    Pricing,
    hourly_sums,
    live_summary,
    roll_up,
    summarize,
)
from services.costs.reports.rollup import PRICED, SUMMED
from services.settings import ModelPrice
from tests.support.cost_rows import HOSTED, PRICES, T0, every_path, insert, row, usage


@pytest.fixture
def engine(any_store):
    """A migrated store, SQLite and PostgreSQL in turn (tests/conftest.py)."""
    return any_store


@pytest.fixture
def catalog() -> PriceCatalog:
    return PriceCatalog(
        overrides={name: ModelPrice(**price) for name, price in PRICES.items()},
        baseline_model="base",
    )


def test_levers_add_up_to_baseline_minus_actual(engine, catalog) -> None:
    insert(engine, every_path(T0 + timedelta(minutes=5)))
    run = roll_up(engine, catalog, HostedUpstreams([HOSTED]))
    assert run.hours == 1 and run.rows > 0
    s = summarize(engine, T0, T0 + timedelta(hours=1))
    lever = s.saved_by_lever
    assert lever["cache_exact"] == pytest.approx(1000e-6 + 200e-6)
    assert lever["cache_semantic"] == pytest.approx(500e-6 + 100e-6)
    assert lever["batch"] == pytest.approx(0.0012 - 0.0001)
    assert lever["token_optimization"] == pytest.approx(400e-6)
    # routed: 600 in + 100 out on base (0.0008) -> cheap (0.0004); escalated attempt -0.0001
    assert lever["routing"] == pytest.approx(0.0004 - 0.0001)
    # llama-x: base 0.0012 -> hosted llama-x 0.00036 (caller's choice) -> ours 0.0002
    # tiny: no hosted price, so base 0.0012 -> ours 0.002 is all self-hosting
    assert lever["model_choice"] == pytest.approx(0.0012 - 0.00036)
    assert lever["self_hosting"] == pytest.approx((0.00036 - 0.0002) + (0.0012 - 0.002))
    assert sum(lever.values()) == pytest.approx(s.baseline_usd - s.cost_usd, abs=1e-15)
    assert s.attribution_gap_usd < 1e-15
    # the escalated attempt's baseline is counted once (on its request's final row)
    assert s.baseline_usd == pytest.approx(0.0012 * 5 + 0.0006)
    assert s.requests == 8 and s.attempts == 1 and s.errors == 1 and s.unpriced == 1
    assert s.unpriced_models == {"mystery": 1}
    live = live_summary(engine, catalog, HostedUpstreams([HOSTED]), T0, T0 + timedelta(hours=1))
    assert live.saved_by_lever == pytest.approx(s.saved_by_lever)
    assert (live.requests, live.cost_usd) == (s.requests, pytest.approx(s.cost_usd))


def test_rerun_is_idempotent_and_late_rows_redo_only_their_hour(engine, catalog) -> None:
    hosted = HostedUpstreams([HOSTED])
    history = []
    for h in range(48):
        at = T0 + timedelta(hours=h, minutes=10)
        history += [row(at, model_served="cheap", worker=HOSTED, cost_usd=0.0004,
                        ingested_at=at + timedelta(minutes=1), **usage(1000, 600, 100))]
    insert(engine, history)
    first = roll_up(engine, catalog, hosted, overlap=timedelta(minutes=10))
    assert first.hours == 48
    before = summarize(engine, T0, T0 + timedelta(days=3))
    assert before.requests == 48

    again = roll_up(engine, catalog, hosted, overlap=timedelta(minutes=10))
    assert again.hours == 1  # only the hour inside the overlap window is redone
    same = summarize(engine, T0, T0 + timedelta(days=3))
    assert (same.requests, same.cost_usd, same.saved_by_lever) == (
        before.requests, pytest.approx(before.cost_usd), before.saved_by_lever)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(CostRollup)) == 48

    # a row replayed from the spill file: created 40 hours ago, ingested now
    late_at = T0 + timedelta(hours=7, minutes=30)
    insert(engine, [row(late_at, model_served="cheap", worker=HOSTED, cost_usd=0.0004,
                        ingested_at=T0 + timedelta(hours=48, minutes=30),
                        **usage(1000, 600, 100))])
    late = roll_up(engine, catalog, hosted, overlap=timedelta(minutes=10))
    assert late.hours == 2  # the late row's hour, and the last hour still in the overlap
    after = summarize(engine, T0, T0 + timedelta(days=3))
    assert after.requests == 49
    assert after.cost_usd == pytest.approx(before.cost_usd + 0.0004)
    hour7 = summarize(engine, T0 + timedelta(hours=7), T0 + timedelta(hours=8))
    assert hour7.requests == 2


def test_tenants_are_kept_apart_and_an_empty_store_is_a_no_op(engine, catalog) -> None:
    hosted = HostedUpstreams([HOSTED])
    assert roll_up(engine, catalog, hosted).hours == 0
    at = T0 + timedelta(minutes=1)
    insert(engine, [row(at, tenant="a", model_served="cheap", worker=HOSTED, cost_usd=0.0004,
                        **usage(1000, 600, 100)),
                    row(at, tenant="b", cache_layer="L1", cost_usd=0.0,
                        **usage(1000, 1000, 100))])
    roll_up(engine, catalog, hosted)
    a = summarize(engine, T0, T0 + timedelta(hours=1), "a")
    b = summarize(engine, T0, T0 + timedelta(hours=1), "b")
    assert (a.requests, b.requests) == (1, 1)
    assert a.saved_by_lever["cache_exact"] == 0 and b.saved_by_lever["cache_exact"] > 0


def test_hourly_sums_are_the_same_before_and_after_a_rollup(engine, catalog) -> None:
    """Rollups for the hours they hold complete, request_log for the hours with rows not
    rolled up yet (a new hour, a late row's old one): the same figures, every column of
    a rollup row (the baseline priced the same way), either way."""
    hosted = HostedUpstreams([HOSTED])
    pricing = Pricing(catalog, hosted)
    rows = []
    for h in range(6):
        at = T0 + timedelta(hours=h, minutes=5)
        rows += [{**r, "ingested_at": at + timedelta(minutes=1)} for r in every_path(at)]
    insert(engine, rows)
    window = (T0, T0 + timedelta(hours=8))
    by = ("time", "tenant", "model", "upstream", "lever")

    def read(*bounds, **kw):  # type: ignore[no-untyped-def]
        return hourly_sums(engine, *bounds, by=by, columns=SUMMED + PRICED, pricing=pricing,
                           **kw)

    from_log = read(*window)
    assert from_log.source == "request_log"
    assert len({r["time"] for r in from_log.rows}) == 6
    assert {r["lever"] for r in from_log.rows} == {"cache_exact", "cache_semantic", "batch",
                                                   "routed", "cascade_escalated", "direct"}
    assert sum(r["hits_l2"] for r in from_log.rows) == 6
    roll_up(engine, catalog, hosted)
    rolled = read(*window)
    assert rolled.source == "cost_rollups + request_log"
    assert _same(rolled.rows, from_log.rows)

    # a late row for hour 1 and a new row in hour 6, neither rolled up yet
    late = row(T0 + timedelta(hours=1, minutes=50), model_served="cheap", worker=HOSTED,
               cost_usd=0.0004, ingested_at=T0 + timedelta(hours=6, minutes=20),
               **usage(1000, 600, 100))
    new = {**late, "id": "new-row", "created_at": T0 + timedelta(hours=6, minutes=10)}
    insert(engine, [late, new])
    hybrid = read(*window).rows
    assert sum(r["requests"] for r in hybrid) == sum(r["requests"] for r in from_log.rows) + 2
    roll_up(engine, catalog, hosted)
    assert _same(read(*window).rows, hybrid)
    # grouped coarser, filtered, bucketed: the same sums
    day = hourly_sums(engine, *window, columns=("requests", "baseline_usd"), pricing=pricing,
                      by=("time",), bucket_s=86400, tenant="acme")
    assert [r["requests"] for r in day.rows] == [sum(r["requests"] for r in hybrid)]
    assert day.rows[0]["baseline_usd"] == pytest.approx(sum(r["baseline_usd"] for r in hybrid))
    assert hourly_sums(engine, *window, by=("time",), tenant="nobody").rows == []

    # hours held complete are read from the rollups, not from request_log
    with engine.begin() as conn:
        conn.execute(RequestLog.__table__.delete().where(
            RequestLog.created_at < T0 + timedelta(hours=4)))
    assert _same(read(*window).rows, hybrid)
    # a bound inside an hour reads that whole hour, as the rollups hold it
    inside = read(T0 + timedelta(minutes=30), T0 + timedelta(hours=1, minutes=1)).rows
    assert _same(inside, [r for r in hybrid if r["time"] < T0 + timedelta(hours=2)])


def _same(rows: list[dict], expected: list[dict]) -> bool:
    """The same keys and counts, and sums of money equal to float rounding."""
    assert [{k: v for k, v in r.items() if not isinstance(v, float)} for r in rows] == [
        {k: v for k, v in r.items() if not isinstance(v, float)} for r in expected]
    for got, want in zip(rows, expected, strict=True):
        assert {k: v for k, v in got.items() if isinstance(v, float)} == pytest.approx(
            {k: v for k, v in want.items() if isinstance(v, float)}, abs=1e-12)
    return True


def test_rollups_from_before_the_cache_counts_are_redone(engine, catalog) -> None:
    """Adding the cache columns forgets the watermark: the hours come from request_log
    until the next run, which redoes every hour and fills them."""
    insert(engine, every_path(T0 + timedelta(minutes=5)))
    roll_up(engine, catalog, HostedUpstreams([HOSTED]))
    url = engine.url.render_as_string(hide_password=False)
    engine.dispose()
    downgrade_to("0e2419c1e267", url)
    upgrade_to_head(url)
    window = (T0, T0 + timedelta(hours=1))
    before = hourly_sums(engine, *window, columns=("requests", "hits_l2", "hits_semantic"))
    assert before.source == "request_log"
    assert before.rows == [{"requests": 9, "hits_l2": 1, "hits_semantic": 1}]
    assert roll_up(engine, catalog, HostedUpstreams([HOSTED])).hours == 1
    after = hourly_sums(engine, *window, columns=("requests", "hits_l2", "hits_semantic"))
    assert after.source == "cost_rollups + request_log" and after.rows == before.rows
    with engine.connect() as conn:
        assert conn.scalar(select(func.sum(CostRollup.hits_l2))) == 1


def test_hourly_sums_refuses_what_it_cannot_answer(engine) -> None:
    with pytest.raises(ValueError, match="cannot group by or sum.*'colour'"):
        hourly_sums(engine, T0, T0 + timedelta(hours=1), by=("colour",))
    with pytest.raises(ValueError, match="need pricing"):
        hourly_sums(engine, T0, T0 + timedelta(hours=1), columns=("baseline_usd",))
    with pytest.raises(ValueError, match="bucket_s must be positive"):
        hourly_sums(engine, T0, T0 + timedelta(hours=1), bucket_s=0)


def test_postgres_reads_new_rows_and_touched_hours_through_indexes(postgres_url) -> None:
    """What keeps a run's cost off history: both reads of request_log have an index."""
    from sqlalchemy import text

    from services.costs.reports.rollup import _LOG, _aggregate, _touched_hours

    url = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    upgrade_to_head(url)
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SET enable_seqscan = off"))  # empty table: ask what is usable
            plans = {}
            touched = _touched_hours(conn, _LOG.c.ingested_at > T0, _LOG.c.ingested_at <= T0)
            for name, query in (("touched", touched),
                                ("aggregate", _aggregate(T0, T0 + timedelta(hours=1)))):
                compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
                plans[name] = "\n".join(conn.scalars(text(f"EXPLAIN {compiled}")))
        assert "ix_request_log_ingested_at" in plans["touched"]
        assert "ix_request_log_created_at" in plans["aggregate"]
    finally:
        engine.dispose()
