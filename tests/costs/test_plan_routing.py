"""The planner's routing, cascade and batch estimates on a real store (SQLite and
PostgreSQL): each rate measured on the window's own rows, each saving worked out by hand."""

from __future__ import annotations

from datetime import timedelta

import pytest

from models.tables import RouterVersion
from services.costs import PriceCatalog
from services.costs.reports.planner import plan, proposed_settings
from services.routing.config import RoutingConfig
from services.settings import ModelPrice
from tests.support.cost_rows import HOSTED, PRICES, T0, insert, row, usage

ROUTING = RoutingConfig.model_validate({
    "tiers": ["fast_cheap", "powerful"],
    "models": [
        {"name": "cheap", "tier": "fast_cheap", "upstream": "openai", "context_window": 8192},
        {"name": "base", "tier": "powerful", "upstream": "openai", "context_window": 8192},
    ],
})
BASE_COST, CHEAP_COST = 0.0012, 0.0006  # 1000 prompt + 100 completion tokens on each
WINDOW = (T0, T0 + timedelta(days=1))


@pytest.fixture
def catalog() -> PriceCatalog:
    return PriceCatalog(overrides={n: ModelPrice(**p) for n, p in PRICES.items()},
                        baseline_model="base")


def served(reason=None, model="base", tenant="other", requested=None) -> dict:
    cost = BASE_COST if model == "base" else CHEAP_COST
    return row(T0 + timedelta(minutes=5), tenant=tenant, model_served=model, worker=HOSTED,
               model_requested=requested or model, route_reason=reason, cost_usd=cost,
               **usage(1000, 1000, 100))


def traffic(decisions: int = 20) -> list[dict]:
    """acme: 10 unrouted requests on the strong model (half named in the routing config:
    "explicit"). Elsewhere: requests to auto (a quarter end on the strong model, no
    cascade), 20 cascade requests (4 escalated), 2 batch lines at 1/12 of the baseline."""
    rows = [served("explicit" if i % 2 else None, tenant="acme") for i in range(10)]
    rows += [served("auto: router 0.400 >= 0.255", requested="auto")
             for _ in range(decisions // 4)]
    rows += [served("auto: router 0.100 < 0.255", "cheap", requested="auto")
             for _ in range(decisions - decisions // 4)]
    rows += [served("big: router 0.100 < 0.255; cascade: accepted, score 0.9", "cheap")
             for _ in range(16)]
    rows += [served("cascade: cheap attempt escalated, score 0.2", "cheap") for _ in range(4)]
    rows += [{**served("batch:batch_1", tenant="batcher"), "cost_usd": BASE_COST / 12}
             for _ in range(2)]
    return rows


def by_lever(estimates, tenant: str) -> dict:
    return {e.lever: e for e in estimates if e.tenant == tenant}


def test_routing_cascade_and_batch_estimates(any_store, catalog) -> None:
    insert(any_store, traffic())
    estimates = plan(any_store, catalog, *WINDOW, ROUTING)
    acme = by_lever(estimates, "acme")
    # routing: 3/4 of the 10 requests move to cheap
    assert acme["routing"].window_saving_usd == pytest.approx(0.75 * 10 * (BASE_COST - CHEAP_COST))
    assert "strong share 25.0% (20 requests to auto in the window)" in acme["routing"].method
    # cascade: the 5 requests to auto the router sent strong skip it (5 of 25); the rest
    # pay the cheap attempt and 4 of 20 escalate to the strong model
    assert acme["cascade"].window_saving_usd == pytest.approx(
        0.8 * (10 * BASE_COST * 0.8 - 10 * CHEAP_COST))
    assert "20.0% straight to the strong model" in acme["cascade"].method
    assert "20.0% of those escalated" in acme["cascade"].method
    # batch: 1/12 of the baseline instead of the online cost
    assert acme["batch"].window_saving_usd == pytest.approx(10 * BASE_COST * 11 / 12)
    assert acme["batch"].monthly_saving_usd == pytest.approx(
        acme["batch"].window_saving_usd * 365.25 / 12)
    # tenants that route already get no routing or cascade estimate, only batch
    assert set(by_lever(estimates, "other")) == {"batch"}
    assert all(e.window_saving_usd > 0 for e in estimates)
    assert proposed_settings(estimates)["routing"] == {"substitution_tenants": ["acme"]}


def test_without_a_routing_config_or_enough_decisions(any_store, catalog) -> None:
    insert(any_store, traffic(decisions=8))
    assert "routing" not in by_lever(plan(any_store, catalog, *WINDOW, ROUTING), "acme")
    assert {e.lever for e in plan(any_store, catalog, *WINDOW)} == {"batch"}
    with any_store.begin() as conn:  # the active router's own measured share stands in
        conn.execute(RouterVersion.__table__.insert().values(
            version="v2", model=b"", labels=300, active=True,
            metrics={"strong_fraction": 0.4}))
    routing = by_lever(plan(any_store, catalog, *WINDOW, ROUTING), "acme")["routing"]
    assert routing.window_saving_usd == pytest.approx(0.6 * 10 * (BASE_COST - CHEAP_COST))
    assert "the active router version" in routing.method
