"""Self-hosted pricing from the GPU-hour, memo invalidation, baseline cost, settings."""

from __future__ import annotations

import pytest
from genai_prices import Usage, calc_price
from pydantic import ValidationError

from services.costs import PriceCatalog, UnknownModelPrice
from services.settings import ModelPrice, SelfHostedPricing, load_settings

PRICING = SelfHostedPricing(
    gpu_hour_usd=2.5, gpus_per_worker=1, default_output_tokens_per_second=500, input_cost_ratio=0.2
)


@pytest.fixture
def catalog() -> PriceCatalog:
    return PriceCatalog(self_hosted=PRICING)


def test_self_hosted_price_from_gpu_hour(catalog: PriceCatalog) -> None:
    catalog.register_self_hosted("tiny-llama", output_tokens_per_second=335, gpus=2)
    rates = catalog.price("tiny-llama")
    output = 2.5 * 2 / 3600 / 335
    assert rates.source == "self_hosted"
    assert rates.output_tokens_per_second == 335
    assert rates.output_usd_per_token == pytest.approx(output)
    assert rates.input_usd_per_token == pytest.approx(0.2 * output)
    assert rates.cached_input_usd_per_token == rates.input_usd_per_token
    assert catalog.cost("tiny-llama", 1_000, 100, cached_tokens=300) == pytest.approx(
        1_000 * 0.2 * output + 100 * output
    )


def test_self_hosted_defaults(catalog: PriceCatalog) -> None:
    catalog.register_self_hosted("gemma-3-270m")
    rates = catalog.price("gemma-3-270m")
    assert rates.output_tokens_per_second == 500
    assert rates.output_usd_per_token == pytest.approx(2.5 * 1 / 3600 / 500)


def test_reregistering_throughput_invalidates_memo(catalog: PriceCatalog) -> None:
    catalog.register_self_hosted("tiny-llama", output_tokens_per_second=100)
    slow = catalog.cost("tiny-llama", 0, 1_000)
    catalog.register_self_hosted("tiny-llama", output_tokens_per_second=200)
    assert catalog.cost("tiny-llama", 0, 1_000) == pytest.approx(slow / 2)


def test_registering_prices_a_previously_unknown_model(catalog: PriceCatalog) -> None:
    with pytest.raises(UnknownModelPrice):
        catalog.cost("tiny-llama", 1, 1)
    catalog.register_self_hosted("tiny-llama", output_tokens_per_second=100)
    assert catalog.cost("tiny-llama", 1, 1) > 0


def test_self_hosted_shadows_catalog_but_override_wins() -> None:
    catalog = PriceCatalog(
        overrides={"tiny-llama": ModelPrice(input_per_mtok=0.01, output_per_mtok=0.02)},
        self_hosted=PRICING,
    )
    catalog.register_self_hosted("tiny-llama", output_tokens_per_second=100)
    catalog.register_self_hosted("gpt-4o-mini", output_tokens_per_second=100)
    assert catalog.price("tiny-llama").source == "override"
    assert catalog.price("gpt-4o-mini").source == "self_hosted"


@pytest.mark.parametrize(("tps", "gpus"), [(0, None), (-5, None), (None, 0)])
def test_bad_registration_rejected(
    catalog: PriceCatalog, tps: float | None, gpus: int | None
) -> None:
    with pytest.raises(ValueError):
        catalog.register_self_hosted("x", output_tokens_per_second=tps, gpus=gpus)


def test_baseline_cost_is_full_prompt_on_baseline_model(catalog: PriceCatalog) -> None:
    expected = calc_price(Usage(input_tokens=2_000, output_tokens=300), "gpt-4o-mini")
    assert catalog.baseline_model == "gpt-4o-mini"
    assert catalog.baseline_cost(2_000, 300) == pytest.approx(float(expected.total_price))


def test_baseline_model_configurable() -> None:
    catalog = PriceCatalog(baseline_model="anthropic/claude-3-5-sonnet")
    expected = calc_price(
        Usage(input_tokens=1_000, output_tokens=100), "claude-3-5-sonnet", provider_id="anthropic"
    )
    assert catalog.baseline_cost(1_000, 100) == pytest.approx(float(expected.total_price))


def test_unpriced_baseline_refused_at_construction() -> None:
    with pytest.raises(UnknownModelPrice):
        PriceCatalog(baseline_model="no-such-model")


def test_from_settings() -> None:
    settings = load_settings(
        price_overrides={"gpt-4o-mini": {"input_per_mtok": 1, "output_per_mtok": 1}},
        self_hosted={"gpu_hour_usd": 3.6, "default_output_tokens_per_second": 1},
        baseline_model="gpt-4o-mini",
    )
    catalog = PriceCatalog.from_settings(settings)
    assert catalog.baseline_cost(1_000_000, 0) == pytest.approx(1.0)
    catalog.register_self_hosted("tiny-llama")
    assert catalog.price("tiny-llama").output_usd_per_token == pytest.approx(3.6 / 3600)


@pytest.mark.parametrize(
    "price",
    [
        {"input_per_mtok": -1, "output_per_mtok": 1},
        {"input_per_mtok": 1, "output_per_mtok": -0.01},
        {"input_per_mtok": 1, "output_per_mtok": 1, "cached_input_per_mtok": -1},
    ],
)
def test_negative_override_prices_rejected(price: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        ModelPrice(**price)
    with pytest.raises(ValidationError):
        load_settings(price_overrides={"m": price})
