"""PriceCatalog against genai-prices itself, overrides, cached tokens, unknown models.

Most expected figures come from the library (``genai_prices.calc_price``), so a
genai-prices upgrade that changes a price does not break these tests while a mistake in
how we call it does. A few are pinned to the providers' published prices instead, so
that a wrong catalog (or a library that misreads it) cannot pass on its own say-so.
"""

from __future__ import annotations

import socket
import threading
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price
from genai_prices.data_snapshot import DataSnapshot, set_custom_snapshot

from services.costs import PriceCatalog, UnknownModelPrice
from services.costs.genai_catalog import CatalogMatch, GenaiPriceCatalog
from services.errors import EngineError
from services.settings import ModelPrice

# (name as a client sends it, ref and provider genai-prices is asked with)
HOSTED = [
    ("gpt-4o-mini", "gpt-4o-mini", None),
    ("openai/gpt-4o-mini", "gpt-4o-mini", "openai"),
    ("anthropic/claude-3-5-sonnet", "claude-3-5-sonnet", "anthropic"),
    ("gpt-4-1106-preview", "gpt-4-1106-preview", None),
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", "Mixtral-8x7B-Instruct-v0.1", "mistral"),
    (
        "together/mistralai/Mixtral-8x7B-Instruct-v0.1",
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "together",
    ),
    # not flat: tiered above 128k prompt tokens, computed through the library
    ("gemini-1.5-flash", "gemini-1.5-flash", None),
]
USAGES = [(1_000, 200, 0), (1_000, 200, 400), (150_000, 1_000, 20_000), (0, 0, 0)]


@pytest.fixture
def catalog() -> PriceCatalog:
    return PriceCatalog()


@pytest.mark.parametrize(("name", "ref", "provider_id"), HOSTED)
@pytest.mark.parametrize(("prompt", "completion", "cached"), USAGES)
def test_cost_equals_genai_prices(
    catalog: PriceCatalog,
    name: str,
    ref: str,
    provider_id: str | None,
    prompt: int,
    completion: int,
    cached: int,
) -> None:
    usage = Usage(input_tokens=prompt, cache_read_tokens=cached, output_tokens=completion)
    expected = calc_price(usage, ref, provider_id=provider_id)

    assert catalog.cost(name, prompt, completion, cached) == pytest.approx(
        float(expected.total_price), rel=1e-12, abs=1e-15
    )
    rates = catalog.price(name)
    assert rates.source == "catalog"
    assert (rates.provider, rates.catalog_model_id) == (expected.provider.id, expected.model.id)


def test_rates_are_library_prices_per_token(catalog: PriceCatalog) -> None:
    expected = calc_price(Usage(input_tokens=1, output_tokens=1), "gpt-4o-mini").model_price
    per_mtok = {
        key: getattr(expected, key) for key in ("input_mtok", "cache_read_mtok", "output_mtok")
    }
    assert all(isinstance(value, Decimal) for value in per_mtok.values())
    rates = catalog.price("gpt-4o-mini")
    assert rates.flat
    assert rates.input_usd_per_token == pytest.approx(float(per_mtok["input_mtok"]) / 1e6)
    assert rates.cached_input_usd_per_token == pytest.approx(
        float(per_mtok["cache_read_mtok"]) / 1e6
    )
    assert rates.output_usd_per_token == pytest.approx(float(per_mtok["output_mtok"]) / 1e6)
    assert not catalog.price("gemini-1.5-flash").flat


def test_gpt_4_1106_preview_is_priced_as_gpt_4_turbo(catalog: PriceCatalog) -> None:
    rates = catalog.price("gpt-4-1106-preview")
    assert (rates.provider, rates.catalog_model_id) == ("openai", "gpt-4-turbo")


def test_cached_tokens_use_cached_rate(catalog: PriceCatalog) -> None:
    rates = catalog.price("gpt-4o-mini")
    assert rates.cached_input_usd_per_token < rates.input_usd_per_token
    cost = catalog.cost("gpt-4o-mini", 1_000, 0, cached_tokens=400)
    assert cost == pytest.approx(
        600 * rates.input_usd_per_token + 400 * rates.cached_input_usd_per_token
    )
    assert cost < catalog.cost("gpt-4o-mini", 1_000, 0)


def test_cached_tokens_at_input_rate_without_cached_price(catalog: PriceCatalog) -> None:
    name = "mistralai/Mixtral-8x7B-Instruct-v0.1"
    rates = catalog.price(name)
    assert rates.cached_input_usd_per_token == rates.input_usd_per_token
    assert catalog.cost(name, 1_000, 50, cached_tokens=900) == pytest.approx(
        catalog.cost(name, 1_000, 50)
    )


def test_override_wins_over_catalog() -> None:
    catalog = PriceCatalog(
        overrides={
            "gpt-4o-mini": ModelPrice(
                input_per_mtok=1, output_per_mtok=2, cached_input_per_mtok=0.5
            )
        }
    )
    rates = catalog.price("gpt-4o-mini")
    assert rates.source == "override"
    assert (rates.input_usd_per_token, rates.output_usd_per_token) == (1e-6, 2e-6)
    assert catalog.cost("gpt-4o-mini", 1_000_000, 1_000_000, cached_tokens=500_000) == (
        pytest.approx(0.5 * 1 + 0.5 * 0.5 + 2)
    )


def test_override_without_cached_price_charges_cached_as_input() -> None:
    catalog = PriceCatalog(overrides={"m": ModelPrice(input_per_mtok=3, output_per_mtok=0)})
    assert catalog.cost("m", 1_000_000, 0, cached_tokens=1_000_000) == pytest.approx(3.0)


def test_override_is_exact_name_only() -> None:
    catalog = PriceCatalog(
        overrides={"gpt-4o-mini": ModelPrice(input_per_mtok=1, output_per_mtok=2)}
    )
    assert catalog.price("openai/gpt-4o-mini").source == "catalog"


@pytest.mark.parametrize(
    "name",
    [
        "no-such-model",
        "meta-llama/Llama-3.1-8B-Instruct",  # not a hosted model genai-prices lists
        "anthropic/gpt-4o",  # a known provider that does not sell it: no guessing elsewhere
    ],
)
def test_unknown_model_raises(catalog: PriceCatalog, name: str) -> None:
    with pytest.raises(UnknownModelPrice) as info:
        catalog.cost(name, 10, 10)
    assert info.value.model == name
    assert name in str(info.value)
    assert isinstance(info.value, LookupError) and isinstance(info.value, EngineError)
    with pytest.raises(UnknownModelPrice):  # memoised misses still raise
        catalog.price(name)


@pytest.mark.parametrize(("prompt", "completion", "cached"), [(-1, 0, 0), (0, -1, 0), (5, 0, 6)])
def test_bad_token_counts_rejected(
    catalog: PriceCatalog, prompt: int, completion: int, cached: int
) -> None:
    with pytest.raises(ValueError):
        catalog.cost("gpt-4o-mini", prompt, completion, cached)


def test_rates_are_memoised(catalog: PriceCatalog, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    original = GenaiPriceCatalog.lookup

    def counting(self: GenaiPriceCatalog, model: str) -> CatalogMatch | None:
        calls.append(model)
        return original(self, model)

    monkeypatch.setattr(GenaiPriceCatalog, "lookup", counting)
    for _ in range(3):
        catalog.cost("anthropic/claude-3-5-sonnet", 100, 10)
        with pytest.raises(UnknownModelPrice):
            catalog.cost("no-such-model", 1, 1)
    assert calls == ["anthropic/claude-3-5-sonnet", "no-such-model"]


def test_uses_bundled_prices_not_process_wide_snapshot() -> None:
    """A price updater started by someone else in the process must not change our prices."""
    expected = PriceCatalog().cost("gpt-4o-mini", 1_000, 100)
    set_custom_snapshot(DataSnapshot(providers=[], from_auto_update=True))
    try:
        assert PriceCatalog().cost("gpt-4o-mini", 1_000, 100) == expected
    finally:
        set_custom_snapshot(None)


def test_no_network_and_no_updater(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("price lookup tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    catalog = PriceCatalog()
    costs = {name: catalog.cost(name, 100, 10) for name, _, _ in HOSTED}
    assert all(cost > 0 for cost in costs.values()), costs
    assert costs["gpt-4o-mini"] == pytest.approx(100 * 0.15e-6 + 10 * 0.60e-6)
    assert not any(t.name == "genai_prices:update" for t in threading.enumerate())


# USD per million tokens (input, cached input, output) as the providers publish them:
# OpenAI's pricing page for gpt-4o-mini, gpt-4o and gpt-4-1106-preview (no cached rate),
# Anthropic's for Claude 3.5 Sonnet (cache reads at 0.1x the input price).
PUBLISHED = {
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "gpt-4o": (2.50, 1.25, 10.00),
    "gpt-4-1106-preview": (10.00, 10.00, 30.00),
    "anthropic/claude-3-5-sonnet": (3.00, 0.30, 15.00),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_prices_match_the_published_ones(catalog: PriceCatalog, name: str) -> None:
    input_rate, cached_rate, output_rate = PUBLISHED[name]
    # 1M prompt tokens of which 200k cached, and 100k output tokens
    expected = 0.8 * input_rate + 0.2 * cached_rate + 0.1 * output_rate
    assert catalog.cost(name, 1_000_000, 100_000, 200_000) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("name", "ref"), [
    ("anthropic/claude-3-5-sonnet", "claude-3-5-sonnet"),  # flat
    ("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5"),  # tiered: through genai-prices
])
def test_cache_writes_cost_what_anthropic_bills(catalog: PriceCatalog, name: str, ref: str
                                                ) -> None:
    # 3,000 prompt tokens: 1,000 read from the cache, 1,500 written to it, 500 plain
    usage = Usage(input_tokens=3_000, cache_read_tokens=1_000, cache_write_tokens=1_500,
                  output_tokens=100)
    expected = calc_price(usage, ref, provider_id="anthropic").total_price
    written = catalog.cost(name, 3_000, 100, cached_tokens=1_000, cache_write_tokens=1_500)
    assert written == pytest.approx(float(expected), rel=1e-9)
    assert written > catalog.cost(name, 3_000, 100, cached_tokens=1_000)


def test_the_catalog_data_prices_anthropic_writes_at_1_25x_and_reads_at_0_1x(
    catalog: PriceCatalog,
) -> None:
    rates = catalog.price("anthropic/claude-3-5-sonnet")
    assert rates.cache_write_usd_per_token == pytest.approx(1.25 * rates.input_usd_per_token)
    assert rates.cached_input_usd_per_token == pytest.approx(0.1 * rates.input_usd_per_token)


def test_cache_writes_of_an_override_default_to_the_input_price() -> None:
    catalog = PriceCatalog(overrides={
        "plain": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0),
        "priced": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0, cache_write_per_mtok=1.25),
    })
    assert catalog.cost("plain", 1_000_000, 0, cache_write_tokens=400_000) == pytest.approx(1.0)
    assert catalog.cost("priced", 1_000_000, 0, cache_write_tokens=400_000) == pytest.approx(1.1)
    with pytest.raises(ValueError, match="cannot exceed prompt_tokens"):
        catalog.cost("priced", 10, 0, cached_tokens=6, cache_write_tokens=5)
