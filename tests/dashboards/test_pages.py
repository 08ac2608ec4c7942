"""Every page rendered by Streamlit's AppTest against a seeded store, figures checked
against the rows inserted; empty and unmigrated stores show the fix, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from migrations import upgrade_to_head
from models import create_store_engine

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")
PAGES = ["views/overview.py", "views/costs.py", "views/cache.py", "views/alerts.py"]


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
    assert metric(at, "Baseline") == usd(seeded.baseline())
    assert metric(at, "Saved") == usd(seeded.baseline() - seeded.cost())
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
