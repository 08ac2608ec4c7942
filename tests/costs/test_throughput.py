"""Self-hosted prices follow the throughput measured from the requests themselves."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.costs import PriceCatalog, ThroughputMeter
from services.settings import SelfHostedPricing
from services.telemetry import RequestEvent, RequestPricer


@pytest.fixture
def catalog() -> PriceCatalog:
    pricing = SelfHostedPricing(gpu_hour_usd=3.6, default_output_tokens_per_second=1000)
    catalog = PriceCatalog(self_hosted=pricing)
    catalog.register_self_hosted("local")
    return catalog


def test_overlapping_requests_count_shared_time_once(catalog) -> None:
    meter = ThroughputMeter(catalog, min_tokens=1000, min_busy_s=1)
    # 10 requests of 100 tokens, all in flight over the same 2 seconds -> 500 tokens/s
    for _ in range(10):
        meter.observe("local", 100.0, 102.0, 100)
    assert meter.measured["local"] == pytest.approx(500)
    # $3.6 per GPU-hour = $0.001 per second; at 500 tokens/s that is $2e-6 per token
    assert catalog.price("local").output_usd_per_token == pytest.approx(2e-6)


def test_gaps_between_requests_are_not_busy_time(catalog) -> None:
    meter = ThroughputMeter(catalog, min_tokens=1000, min_busy_s=1)
    meter.observe("local", 0.0, 1.0, 500)
    meter.observe("local", 10.0, 11.0, 500)  # idle from 1 s to 10 s
    assert meter.measured["local"] == pytest.approx(500)


def test_nothing_is_claimed_before_a_window_is_complete(catalog) -> None:
    meter = ThroughputMeter(catalog, min_tokens=1000, min_busy_s=1)
    meter.observe("local", 0.0, 2.0, 100)
    assert "local" not in meter.measured
    assert catalog.price("local").output_tokens_per_second == 1000  # the default stands


def test_pricer_fills_cost_and_baseline_and_feeds_the_meter(catalog) -> None:
    meter = ThroughputMeter(catalog, min_tokens=100, min_busy_s=0.5)
    pricer = RequestPricer(catalog, meter)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    event = RequestEvent(
        id="r1",
        tenant="t",
        endpoint="completions",
        status_code=200,
        created_at=start,
        model_served="local",
        prompt_tokens=50,
        completion_tokens=200,
        latency_ms=1010,
        upstream_ms=1000,
    )
    expected = catalog.cost("local", 50, 200)  # priced at the rate in force when it ran
    pricer(event)
    assert event.cost_usd == pytest.approx(expected) and event.cost_usd > 0
    assert event.baseline_cost_usd == pytest.approx(catalog.baseline_cost(50, 200))
    assert meter.measured["local"] == pytest.approx(200, rel=1e-3)


def test_cache_hits_cost_nothing_but_keep_their_baseline(catalog) -> None:
    event = RequestEvent(
        id="r2",
        tenant="t",
        endpoint="completions",
        status_code=200,
        model_served="local",
        cache_layer="L1",
        prompt_tokens=10,
        completion_tokens=20,
    )
    RequestPricer(catalog)(event)
    assert event.cost_usd == 0.0 and event.baseline_cost_usd > 0


def test_unpriced_model_stays_null(catalog) -> None:
    event = RequestEvent(
        id="r3",
        tenant="t",
        endpoint="completions",
        status_code=200,
        model_served="made-up-model-xyz",
        prompt_tokens=10,
        completion_tokens=20,
    )
    RequestPricer(catalog)(event)
    assert event.cost_usd is None and event.baseline_cost_usd > 0
