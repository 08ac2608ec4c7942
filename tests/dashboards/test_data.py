"""The dashboard's queries against a seeded store (SQLite and PostgreSQL), and the
read-only guarantees of the engine it opens."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from dashboards import data
from dashboards.data import Filters, StoreNotReady
from migrations import upgrade_to_head
from models import Alert, RequestLog, create_store_engine
from services.costs import PriceCatalog
from services.costs.reports import HostedUpstreams, roll_up, summarize
from services.settings import load_settings
from tests.dashboards.seed import STATIC_KEY_BUDGETS, TENANTS, seed, seed_keys


def writer_engine(url: str):  # type: ignore[no-untyped-def]
    return create_store_engine(load_settings(database_url=url).database_url)


def check_figures(url: str, seeded) -> None:  # type: ignore[no-untyped-def]
    engine = data.read_only_engine(url)
    filters = Filters(time_range="last hour", end=seeded.now)
    data.check_store(engine)
    o = data.overview(engine, filters)
    assert o.requests == seeded.requests() and o.errors == seeded.errors()
    assert o.latency_p50_ms == pytest.approx(seeded.latency_p50())
    expected: Counter[int] = Counter(int(r["created_at"].timestamp()) // 60 * 60
                                     for r in seeded.rows)
    assert {int(s["time"].timestamp()): s["requests"] for s in o.series} == expected
    assert all(s["bucket_s"] == 60 for s in o.series)
    worker_rows = [r for r in seeded.rows if r["worker"]]
    assert sum(w["requests"] for w in o.worker_load) == len(worker_rows)
    for tenant in TENANTS:
        c = data.costs(engine, Filters(time_range="last hour", end=seeded.now, tenant=tenant))
        assert c.source == "request_log"
        assert c.requests == seeded.requests(tenant)
        assert c.cost_usd == pytest.approx(seeded.cost(tenant))
        assert sum(c.saved_by_lever.values()) == pytest.approx(c.saved_usd)
        assert c.cost_per_request_usd == pytest.approx(seeded.cost(tenant)
                                                       / seeded.requests(tenant))
    # the baseline as the cost rollup prices it (an escalated attempt's counted once)
    c = data.costs(engine, filters)
    assert c.baseline_usd == pytest.approx(seeded.priced_baseline)
    assert c.baseline_usd != pytest.approx(seeded.baseline())
    r = data.cache_tokens_routing(engine, filters)
    looked_up = [x for x in seeded.rows if x["cache_layer"] is not None]
    assert r.lookups == len(looked_up)
    assert r.hits_by_layer["L1"] == sum(1 for x in looked_up if x["cache_layer"] == "L1")
    assert r.tokens_saved == seeded.tokens_saved()
    assert sum(r.saved_by_stage.values()) == seeded.tokens_saved()
    assert r.cascade_escalated == seeded.escalations()
    assert r.router_version is not None and r.router_version["version"] == "router-v7"
    assert r.latest_report is not None and r.latest_report["overall_hit_rate"] == 0.6
    assert {t["tier"] for t in r.latest_report["tiers"]} == {"L1", "L2"}
    a = data.alerts(engine, filters)
    assert [x["severity"] for x in a.firing] == ["warning"] and len(a.recent) == 2
    engine.dispose()


def test_figures_match_the_store_on_sqlite(seeded_store) -> None:  # type: ignore[no-untyped-def]
    url, _, seeded = seeded_store
    check_figures(url, seeded)


@pytest.mark.postgres
def test_figures_match_the_store_on_postgres(postgres_url: str) -> None:
    upgrade_to_head(postgres_url)
    writer = writer_engine(postgres_url)
    seeded = seed(writer)
    writer.dispose()
    check_figures(postgres_url, seeded)


def test_a_model_filter_narrows_every_figure(seeded_store) -> None:  # type: ignore[no-untyped-def]
    url, _, seeded = seeded_store
    engine = data.read_only_engine(url)
    model = "gemma-3-270m"
    o = data.overview(engine, Filters(time_range="last hour", end=seeded.now, model=model))
    assert o.requests == sum(1 for r in seeded.rows if r["model_served"] == model)
    tenants, models = data.filter_choices(engine, Filters(end=seeded.now))
    assert tenants == sorted(TENANTS) and set(models) == {"tiny-llama", model}


def test_the_sqlite_engine_cannot_write(seeded_store) -> None:  # type: ignore[no-untyped-def]
    url, _, _ = seeded_store
    engine = data.read_only_engine(url)
    with pytest.raises(OperationalError, match="readonly"), engine.begin() as conn:
        conn.execute(insert(Alert).values(source="x", severity="info", message="m",
                                          details={}))


@pytest.mark.postgres
def test_the_postgres_engine_and_role_cannot_write(postgres_url: str) -> None:
    upgrade_to_head(postgres_url)
    engine = data.read_only_engine(postgres_url)
    with pytest.raises(SQLAlchemyError, match="read-only transaction"), engine.begin() as conn:
        conn.execute(insert(Alert).values(source="x", severity="info", message="m",
                                          details={}))
    engine.dispose()
    # the role the README tells operators to create reads everything and writes nothing
    admin = writer_engine(postgres_url)
    database = admin.url.database
    role = f"dash_{database}"[:60]
    with admin.begin() as conn:
        conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        for statement in data.READ_ONLY_ROLE_SQL.format(
                role=role, password="pw", database=database).strip().split(";\n"):
            conn.execute(text(statement.rstrip(";")))
    try:
        as_role = create_store_engine(admin.url.set(username=role, password="pw")
                                      .render_as_string(hide_password=False))
        with as_role.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM request_log")) == 0
        with pytest.raises(SQLAlchemyError), as_role.begin() as conn:
            conn.execute(text("SET TRANSACTION READ WRITE"))
            conn.execute(insert(Alert).values(source="x", severity="info", message="m",
                                              details={}))
        as_role.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
        admin.dispose()


def test_a_missing_store_is_reported_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "store.db"
    with pytest.raises(StoreNotReady, match="optengine migrate"):
        data.read_only_engine(f"sqlite:///{missing}")
    assert not missing.exists() and not missing.parent.exists()


def test_unmigrated_and_empty_stores_say_how_to_fix_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    create_store_engine(url).connect().close()  # an empty file, no tables
    with pytest.raises(StoreNotReady, match="no tables yet.*optengine migrate"):
        data.check_store(data.read_only_engine(url))
    upgrade_to_head(url)
    with pytest.raises(StoreNotReady, match="No requests recorded yet"):
        data.check_store(data.read_only_engine(url))


def test_whole_hour_ranges_read_the_rollups_and_only_the_tail_of_the_log(any_store) -> None:  # type: ignore[no-untyped-def]
    """Hours the cost rollup has read come from ``cost_rollups`` (their request_log rows
    are deleted here, and the figures stay); newer rows come from ``request_log``."""
    writer = any_store
    now = datetime.now(UTC)
    old = seed(writer, now=now - timedelta(hours=3))
    roll_up(writer, PriceCatalog.from_settings(load_settings()), HostedUpstreams([]))
    with writer.begin() as conn:
        conn.execute(delete(RequestLog).where(RequestLog.created_at < now - timedelta(hours=2)))
        conn.execute(insert(RequestLog).values(
            id="after-rollup", created_at=now, tenant="globex", endpoint="chat.completions",
            model_served="tiny-llama", worker="http://127.0.0.1:8001", status_code=200,
            completion_tokens=7, cost_usd=0.5, baseline_cost_usd=1.0))
    engine = data.read_only_engine(writer.url.render_as_string(hide_password=False))
    filters = Filters(time_range="last 24 hours", end=now + timedelta(seconds=1))
    o = data.overview(engine, filters)
    assert o.source == "cost_rollups + request_log"
    assert (o.requests, o.errors) == (old.requests() + 1, old.errors())
    assert all(s["bucket_s"] == 3600 for s in o.series)
    workers = sum(1 for r in old.rows if r["worker"]) + 1
    assert sum(w["requests"] for w in o.worker_load) == workers
    c = data.costs(engine, filters)
    assert c.source == o.source and c.requests == old.requests() + 1
    assert c.cost_usd == pytest.approx(old.cost() + 0.5)
    assert sum(c.saved_by_lever.values()) == pytest.approx(c.saved_usd)
    assert sum(m["requests"] for m in c.by_model) == c.requests
    # the newest hour, read from request_log, is priced as the rollup prices it: once it
    # is rolled up too, every figure stays, and the baseline is the rollups' own
    roll_up(writer, PriceCatalog.from_settings(load_settings()), HostedUpstreams([]))
    after = data.costs(engine, filters)
    assert (after.requests, after.series, after.by_model) == (c.requests, c.series, c.by_model)
    assert after.saved_by_lever == pytest.approx(c.saved_by_lever)
    rolled = summarize(writer, *Filters(time_range="last 24 hours", end=now).window)
    assert rolled.requests + rolled.attempts == old.requests() + 1
    assert after.baseline_usd == pytest.approx(rolled.baseline_usd)
    acme = data.costs(engine, Filters(time_range="last 24 hours", end=now, tenant="acme"))
    assert acme.cost_usd == pytest.approx(old.cost("acme"))
    assert data.filter_choices(engine, filters)[0] == sorted(TENANTS)
    engine.dispose()


def test_spend_per_key_comes_from_the_key_rollups_against_each_budget(  # type: ignore[no-untyped-def]
        any_store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTENGINE_ROUTING", json.dumps(STATIC_KEY_BUDGETS))
    now = datetime.now(UTC)
    seeded = seed_keys(any_store, now)
    ids = {name: f"key:{key_id}" for name, key_id in seeded.ids.items()}
    engine = data.read_only_engine(any_store.url.render_as_string(hide_password=False))
    day = data.key_spending(engine, Filters(time_range="last 24 hours", end=now))
    assert (day.since, day.until) == (seeded.hour - timedelta(hours=24),
                                      seeded.hour + timedelta(hours=1))
    assert day.rolled_up_to == now and day.found == 4
    keys = {k["key"]: k for k in day.keys}
    # by spend; the revoked key spent two days ago only, so it is not listed
    assert list(keys) == [ids["web"], ids["ci"], "key:static:ops", ids["nightly"]]
    web, ci, ops, nightly = keys.values()
    assert (web["requests"], web["budget"], web["budget_period"], web["budget_used"]) == (
        5, "unlimited", None, None)
    assert web["cost_per_request_usd"] == pytest.approx(0.06)
    assert (ci["name"], ci["requests"], ci["errors"], ci["budget"], ci["budget_period"]) == (
        "ci", 3, 1, "$0.5 total", "total")
    assert ci["cost_usd"] == pytest.approx(0.12)
    assert ci["budget_spent_usd"] == pytest.approx(0.20)  # all time, two days ago included
    assert ci["budget_used"] == pytest.approx(0.4)
    assert (ops["name"], ops["tenant"], ops["budget"]) == (None, "acme", "$0.2/month")
    assert ops["budget_period"] == f"{seeded.hour:%Y-%m}"
    assert ops["budget_used"] == pytest.approx(0.25)
    assert (nightly["requests"], nightly["cost_usd"], nightly["cost_per_request_usd"]) == (
        0, 0.0, None)  # listed for its budget; nothing spent today
    assert (nightly["budget_period"], nightly["budget_used"]) == (f"{seeded.hour:%Y-%m-%d}",
                                                                  0.0)

    week = {k["key"]: k for k in data.key_spending(
        engine, Filters(time_range="last 7 days", end=now)).keys}
    assert (week[ids["ci"]]["requests"], week[ids["nightly"]]["requests"]) == (5, 4)
    assert week[ids["ci"]]["cost_usd"] == pytest.approx(0.20)
    old = week[ids["old"]]
    assert old["revoked"] is not None and old["budget"] == "unlimited"
    globex = data.key_spending(engine, Filters(time_range="last 7 days", end=now,
                                               tenant="globex"))
    assert [k["key"] for k in globex.keys] == [ids["nightly"]]

    # a period without key traffic: only the keys with a budget, nothing spent in theirs
    before = data.key_spending(engine, Filters(time_range="last 24 hours",
                                               end=now - timedelta(days=10)))
    assert [(k["key"], k["requests"], k["budget_spent_usd"]) for k in before.keys] == [
        (ids["ci"], 0, 0.0), (ids["nightly"], 0, 0.0)]
    cut = data.key_spending(engine, Filters(time_range="last 24 hours", end=now), limit=1)
    assert [k["key"] for k in cut.keys] == [ids["web"]] and cut.found == 4
    engine.dispose()
