"""The dashboard in a real browser: ``optengine dashboard`` serves a seeded store once
per session and Debian's Chromium, driven by Playwright, opens every page, saves a
screenshot and reads the key figures from the page text."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from migrations import upgrade_to_head
from models import create_store_engine
from services.workers import free_port
from tests.dashboards.seed import Seeded, seed
from tests.support.gateway import wait_for

ROOT = Path(__file__).resolve().parents[2]
# url path (the default page is the root; others from each view's file name) and title
PAGES = [("", "Overview"), ("costs", "Costs and ROI"),
         ("cache", "Cache, tokens, routing"), ("capacity", "Capacity"),
         ("experiments", "Experiments"), ("alerts", "Alerts")]


@pytest.fixture(scope="session")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Seeded]]:
    folder = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{folder / 'store.db'}"
    upgrade_to_head(url)
    engine = create_store_engine(url)
    seeded = seed(engine)
    engine.dispose()
    port = free_port()
    env = {**os.environ, "OPTENGINE_DATABASE_URL": url, "OPTENGINE_DASHBOARD_PORT": str(port)}
    with (folder / "dashboard.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "services.cli", "dashboard"],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/_stcore/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None

    try:
        assert wait_for(healthy, timeout_s=90), "the dashboard did not start"
        assert process.poll() is None, (folder / "dashboard.log").read_text()
        yield base, seeded
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def browser() -> Iterator[object]:
    """Chromium for one test: Playwright's sync API keeps an event loop running in this
    thread while it is open, so it must not outlive the test (later tests use asyncio)."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Chromium is missing: `apt-get install -y chromium` (scripts/test.sh "
                    "installs it)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


def test_every_page_shows_its_figures_in_a_browser(dashboard, browser, tmp_path: Path  # type: ignore[no-untyped-def]
                                                   ) -> None:
    base, seeded = dashboard
    expected = {
        "": [f"{seeded.requests():,}", f"{seeded.errors():,}",
                     f"{seeded.latency_p50():,.1f} ms"],
        "costs": [f"${seeded.cost():,.4f}", f"${seeded.priced_baseline:,.4f}"],
        "cache": [f"{seeded.tokens_saved():,}", "router-v7"],
        "capacity": [],
        "experiments": [],
        "alerts": ["L1 hit rate 40% below its 95% target"],
    }
    # metric label -> value, read from each metric's own box
    metrics = {
        "capacity": {"Desired replicas": f"{seeded.desired_replicas}",
                     "Scaling decisions": f"{seeded.scaling_decisions}"},
        "experiments": {"Running canaries": "1", "Running A/B tests": "1"},
    }
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    for path, title in PAGES:
        page.goto(f"{base}/{path}")
        page.get_by_role("heading", name=title).wait_for(timeout=60_000)
        body = page.locator("body")
        for figure in expected[path]:  # waits while the page is still drawing
            expect(body).to_contain_text(figure, timeout=60_000)
        for label, value in metrics.get(path, {}).items():
            box = page.get_by_test_id("stMetric").filter(has_text=label)
            expect(box.get_by_test_id("stMetricValue")).to_have_text(value, timeout=60_000)
        if path != "alerts":
            page.locator("canvas, svg.marks").first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / f"{path or 'overview'}.png"), full_page=True)
        assert "Traceback" not in body.inner_text()
    page.close()
