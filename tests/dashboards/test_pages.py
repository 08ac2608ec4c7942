"""Every page rendered by Streamlit's AppTest against a seeded store, figures checked
against the rows inserted; empty and unmigrated stores show the fix, not a traceback."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from migrations import upgrade_to_head
from models import create_store_engine
from services.costs import PriceCatalog
from services.costs.reports import HostedUpstreams, roll_up, summarize
from services.settings import load_settings
from tests.dashboards.seed import STATIC_KEY_BUDGETS, seed_keys

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")
PAGES = ["views/overview.py", "views/costs.py", "views/cache.py", "views/capacity.py",
         "views/experiments.py", "views/alerts.py"]


def render(page: str | None = None, **widgets: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if page is not None:
        at.switch_page(page).run()
    for key, value in widgets.items():
        at.selectbox(key=key).select(value).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r} among {[m.label for m in at.metric]}"
    return values[0]


def usd(value: float) -> str:
    return f"${value:,.4f}"


def test_every_page_renders_the_store_figures(seeded_store) -> None:  # type: ignore[no-untyped-def]
    _, _, seeded = seeded_store
    at = render()  # the default page: Overview
    assert at.title[0].value == "Overview"
    assert metric(at, "Requests") == f"{seeded.requests():,}"
    assert metric(at, "Errors") == f"{seeded.errors():,}"
    assert metric(at, "Latency p50") == f"{seeded.latency_p50():,.1f} ms"

    at = render("views/costs.py")
    assert metric(at, "Spend") == usd(seeded.cost())
    assert metric(at, "Baseline") == usd(seeded.priced_baseline)
    assert metric(at, "Saved") == usd(seeded.priced_baseline - seeded.cost())
    assert metric(at, "Cost per request") == usd(seeded.cost() / seeded.requests())

    at = render("views/cache.py")
    assert metric(at, "Tokens saved") == f"{seeded.tokens_saved():,}"
    assert metric(at, "Cascade escalations") == f"{seeded.escalations():,}"
    assert metric(at, "Router version") == "router-v7"
    looked_up = [r for r in seeded.rows if r["cache_layer"] is not None]
    assert metric(at, "Cache lookups") == f"{len(looked_up):,}"

    at = render("views/alerts.py")
    assert metric(at, "Firing") == "1"
    assert "L1 hit rate 40% below its 95% target" in at.table[0].value.to_string()


def test_capacity_and_experiments_show_the_control_loop(seeded_store) -> None:  # type: ignore[no-untyped-def]
    _, _, seeded = seeded_store
    at = render("views/capacity.py")
    assert metric(at, "Models scaled") == f"{seeded.models_scaled}"
    assert metric(at, "Desired replicas") == f"{seeded.desired_replicas}"
    assert metric(at, "Scaling decisions") == f"{seeded.scaling_decisions}"
    assert metric(at, "Not carried out") == f"{seeded.not_actuated}"
    now, decisions, scores = (frame.value for frame in at.dataframe)
    assert list(now["model"]) == ["gemma-3-270m", "tiny-llama"]
    assert list(now["desired"]) == [3, 2]
    assert "kubernetes API answered 503" in decisions.to_string()
    assert len(scores) == seeded.newest_scores and set(scores["forecaster"]) == {"holt", "ewma"}
    at = render("views/capacity.py", model="gemma-3-270m")
    assert metric(at, "Desired replicas") == "3"

    at = render("views/experiments.py")
    assert metric(at, "Running A/B tests") == "1"
    assert metric(at, "Running canaries") == "1"
    assert metric(at, "Paused") == "0"
    live, ended = (frame.value for frame in at.dataframe)
    canary = live[live["name"] == "cache-canary"].iloc[0]
    assert (canary["step"], canary["canary_share"]) == ("2 of 4", 0.25)
    assert canary["last_decision"] == "advance"
    assert "treatment=cached (25%)" in canary["arms"]
    assert list(ended["name"]) == ["old-ab"]


def test_costs_show_roi_budgets_and_the_reports_to_download(  # type: ignore[no-untyped-def]
        seeded_store, monkeypatch: pytest.MonkeyPatch) -> None:
    _, engine, seeded = seeded_store
    roll_up(engine, PriceCatalog.from_settings(load_settings()), HostedUpstreams([]))
    monkeypatch.setenv("OPTENGINE_COST_MONTHLY_BUDGET_USD", "0.01")
    monkeypatch.setenv("OPTENGINE_COST_INVESTMENT_ONE_OFF_USD", "100")
    at = render("views/costs.py")
    _, roi, budgets, reports = (frame.value for frame in at.dataframe)
    payback = roi[roi["figure"] == "payback"].iloc[0]
    assert payback["formula"].startswith("one-off / (monthly savings - monthly cost) = 100.00")
    hour = seeded.now.replace(minute=0, second=0, microsecond=0)
    month = hour.replace(day=1, hour=0)
    rolled = summarize(engine, month, hour + timedelta(hours=1))  # up to now, rolled up
    budget = budgets.iloc[0]
    assert budget["tenant"] == "all tenants" and budget["budget_usd"] == 0.01
    assert budget["spent_usd"] == pytest.approx(rolled.cost_usd)
    assert list(reports["kind"]) == ["daily"]
    downloads = at.get("download_button")
    assert len(downloads) == 2


def key_table(at: AppTest):  # type: ignore[no-untyped-def]
    """The Costs page's spend per API key (None when not shown)."""
    return next((f.value for f in at.dataframe if "budget_used" in f.value.columns), None)


def test_costs_show_spend_per_api_key_against_its_budget(  # type: ignore[no-untyped-def]
        seeded_store, monkeypatch: pytest.MonkeyPatch) -> None:
    _, engine, seeded = seeded_store
    at = render("views/costs.py")  # no key has traffic or a budget yet
    assert key_table(at) is None
    assert any("No request of this range was made with an API key" in c.value
               for c in at.caption)
    monkeypatch.setenv("OPTENGINE_ROUTING", json.dumps(STATIC_KEY_BUDGETS))
    keys = seed_keys(engine, seeded.now)
    ids = {name: f"key:{key_id}" for name, key_id in keys.ids.items()}
    at = render("views/costs.py", time_range="last 6 hours")
    table = key_table(at)
    assert list(table["key"]) == [ids["web"], ids["ci"], "key:static:ops", ids["nightly"]]
    rows = table.set_index("key")
    assert list(rows["requests"]) == [5, 3, 2, 0]
    assert list(rows["cost_usd"]) == pytest.approx([0.30, 0.12, 0.05, 0.0])
    assert list(rows["budget"]) == ["unlimited", "$0.5 total", "$0.2/month", "$1/day"]
    web, ci = rows.loc[ids["web"]], rows.loc[ids["ci"]]
    assert web.isna()["budget_used"] and web.isna()["budget_spent_usd"]
    assert ci["errors"] == 1 and ci["budget_spent_usd"] == pytest.approx(0.20)
    assert list(rows["budget_used"][1:]) == pytest.approx([0.4, 0.25, 0.0])
    assert any(f"rolled up to {seeded.now:%Y-%m-%d %H:%M} UTC" in c.value for c in at.caption)

    at = render("views/costs.py", time_range="last 7 days", tenant="globex")
    nightly = key_table(at).set_index("key").loc[ids["nightly"]]
    assert (nightly["requests"], nightly["cost_usd"]) == (4, pytest.approx(0.40))
    assert any("tenant globex; the key rollup has no model" in c.value for c in at.caption)


def test_the_tenant_filter_narrows_the_figures(seeded_store) -> None:  # type: ignore[no-untyped-def]
    _, _, seeded = seeded_store
    at = render("views/costs.py", tenant="globex")
    assert metric(at, "Spend") == usd(seeded.cost("globex"))
    at = render(None, tenant="acme")
    assert metric(at, "Requests") == f"{seeded.requests('acme'):,}"


@pytest.mark.parametrize("state", ["missing", "unmigrated", "empty"])
def test_a_store_without_data_says_how_to_fix_it(state: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "store.db"
    url = f"sqlite:///{path}"
    if state == "unmigrated":
        create_store_engine(url).connect().close()
    elif state == "empty":
        upgrade_to_head(url)
    monkeypatch.setenv("OPTENGINE_DATABASE_URL", url)
    for page in PAGES:
        at = render(page)
        notice = " ".join(i.value for i in at.info)
        assert "No data yet" in notice, notice
        assert ("optengine migrate" in notice) if state != "empty" else ("make demo" in notice)
    assert path.exists() == (state != "missing")


@pytest.mark.parametrize("variable", ["OPTENGINE_DASHBOARD_PASSWORD", "OPTENGINE_ADMIN_API_KEY"])
def test_a_configured_password_or_admin_key_guards_every_page(
        variable: str, seeded_store, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, _, seeded = seeded_store
    monkeypatch.setenv(variable, "s3cret-dashboard")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.metric and not at.exception  # nothing of the store before the login
    at.text_input(key="password").input("wrong")
    at.button[0].click().run()
    assert [e.value for e in at.error] == ["Wrong password or admin API key."]
    assert not at.metric
    at.text_input(key="password").input("s3cret-dashboard")
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert metric(at, "Requests") == f"{seeded.requests():,}"
    at.switch_page("views/alerts.py").run()  # the session stays logged in
    assert metric(at, "Firing") == "1"


def test_without_a_password_the_dashboard_is_off_where_auth_is_required(
        seeded_store, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPTENGINE_REQUIRE_AUTH", "true")
    monkeypatch.delenv("OPTENGINE_ADMIN_API_KEY", raising=False)
    monkeypatch.delenv("OPTENGINE_DASHBOARD_PASSWORD", raising=False)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.metric and not at.text_input
    assert "OPTENGINE_DASHBOARD_PASSWORD" in at.error[0].value
