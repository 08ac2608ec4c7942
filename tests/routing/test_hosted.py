"""Hosted adapters through the gateway, against local fakes of the providers' APIs:
OpenAI chat completions and Anthropic Messages (system split out, cache breakpoints,
cached-token usage mapped back, streams translated to OpenAI chunks); token
optimisation applies to hosted models as to vLLM ones, fallback included."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from genai_prices import Usage, calc_price

from services.execution.hosted import to_anthropic
from services.tokens import count_request, counter_for_model
from tests.routing.conftest import (
    EASY,
    LOSSLESS,
    ORDER_MINIFIED,
    ORDER_QUESTION,
    PRICES,
    logged_rows,
    post_chat,
)
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.fake_openai import Answer, FakeOpenAI

SYSTEM = "You are a terse translator. " * 20
HOSTED = {
    "tiers": ["fast_cheap", "balanced", "powerful"],
    "models": [
        {"name": "small", "tier": "fast_cheap", "context_window": 4096},
        {"name": "gpt-4o-mini", "tier": "balanced", "upstream": "openai",
         "context_window": 128000},
        {"name": "claude", "tier": "powerful", "upstream": "anthropic",
         "upstream_model": "claude-3-5-haiku-latest", "price_model": "claude-3-5-haiku-latest",
         "context_window": 200000},
    ],
}


@pytest.fixture
def providers() -> Iterator[tuple[FakeOpenAI, FakeAnthropic]]:
    openai_api = FakeOpenAI({"gpt-4o-mini": Answer("Buenos dias.")}, api_key="sk-openai").start()
    anthropic_api = FakeAnthropic(api_key="sk-ant").start()
    yield openai_api, anthropic_api
    openai_api.stop()
    anthropic_api.stop()


@pytest.fixture
def gateway(providers, fake_workers, make_settings, start_gateway):
    openai_api, anthropic_api = providers
    return start_gateway(make_settings(
        workers=[fake_workers.url], routing=HOSTED, price_overrides=PRICES, cache_enabled=False,
        openai_base_url=openai_api.url, openai_api_key="sk-openai",
        anthropic_base_url=anthropic_api.url, anthropic_api_key="sk-ant",
    ))


def test_an_openai_model_is_called_with_the_configured_key(gateway, providers) -> None:
    openai_api, _ = providers
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused")
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": EASY}]
    )
    assert reply.choices[0].message.content == "Buenos dias."
    sent = openai_api.requests[-1]
    assert sent["headers"]["Authorization"] == "Bearer sk-openai"
    assert sent["body"]["model"] == "gpt-4o-mini"


def test_a_refused_key_falls_back_to_a_higher_tier(gateway, providers) -> None:
    openai_api, anthropic_api = providers
    openai_api.api_key = "sk-rotated"  # the provider no longer accepts the gateway's key
    response = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=30, json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": EASY}]})
    assert response.status_code == 200, response.text
    assert response.headers["x-route-model"] == "claude"
    assert "fallback: gpt-4o-mini failed (service_unavailable)" in (
        response.headers["x-route-reason"])
    assert len(anthropic_api.requests) == 1


def sent_text(provider: FakeOpenAI | FakeAnthropic) -> str:
    """The last user message's text as the provider received it."""
    content = provider.requests[-1]["body"]["messages"][-1]["content"]
    return content if isinstance(content, str) else content[0]["text"]


@pytest.mark.parametrize(("model", "provider"), [("gpt-4o-mini", 0), ("claude", 1)])
def test_hosted_models_are_sent_the_optimised_request(gateway, providers, model, provider
                                                      ) -> None:
    response = post_chat(gateway, model, ORDER_QUESTION, headers=LOSSLESS, max_tokens=20)
    assert response.status_code == 200, response.text
    assert response.headers["x-route-model"] == model
    assert sent_text(providers[provider]) == ORDER_MINIFIED
    saved = int(response.headers["x-tokens-saved"])
    assert saved > 0 and response.headers["x-token-optimization"] == "lossless"
    [row] = logged_rows(gateway)
    assert row.token_policy == "lossless" and row.token_stages == {"json": saved}
    assert row.prompt_tokens_before_optimization - row.prompt_tokens_after_optimization == saved
    # both counts stand on the provider's own count of what it was sent
    assert row.prompt_tokens_after_optimization == row.prompt_tokens
    if model == "gpt-4o-mini":  # the saving is counted in the model's own tiktoken encoding
        count, exact = counter_for_model(model)
        assert exact

        def tokens(text: str) -> int:
            return count_request("chat.completions",
                                 {"messages": [{"role": "user", "content": text}]}, count)

        assert saved == tokens(ORDER_QUESTION) - tokens(ORDER_MINIFIED)


def test_a_fallback_sends_the_optimised_request_to_the_next_model(gateway, providers) -> None:
    openai_api, anthropic_api = providers
    openai_api.api_key = "sk-rotated"
    response = post_chat(gateway, "gpt-4o-mini", ORDER_QUESTION, headers=LOSSLESS)
    assert response.status_code == 200, response.text
    assert response.headers["x-route-model"] == "claude"
    assert sent_text(openai_api) == sent_text(anthropic_api) == ORDER_MINIFIED
    assert int(response.headers["x-tokens-saved"]) > 0


def test_off_sends_hosted_models_the_request_as_received(gateway, providers) -> None:
    response = post_chat(gateway, "gpt-4o-mini", ORDER_QUESTION)
    assert response.status_code == 200, response.text
    assert sent_text(providers[0]) == ORDER_QUESTION
    assert "x-tokens-saved" not in response.headers


def test_anthropic_gets_the_system_prompt_apart_with_a_cache_breakpoint(
    gateway, providers
) -> None:
    _, anthropic_api = providers
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused")
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": EASY}]
    first = client.chat.completions.create(model="claude", messages=messages, max_tokens=50)
    second = client.chat.completions.create(model="claude", messages=messages, max_tokens=50)
    sent = anthropic_api.requests[-1]
    assert sent["headers"]["x-api-key"] == "sk-ant"
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    body = sent["body"]
    assert body["model"] == "claude-3-5-haiku-latest" and body["max_tokens"] == 50
    assert body["system"] == [{"type": "text", "text": SYSTEM,
                               "cache_control": {"type": "ephemeral"}}]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": EASY}]}]
    assert first.choices[0].message.content == "Bonjour."
    assert first.choices[0].finish_reason == "stop"
    system_tokens = len(SYSTEM) // 4 + 1
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == system_tokens
    assert second.usage.prompt_tokens == first.usage.prompt_tokens  # cached ones included


def test_a_request_that_wrote_the_anthropic_cache_costs_what_anthropic_bills(
    gateway, providers
) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused")
    system = "You are a patient tutor. " * 30
    messages = [{"role": "system", "content": system}, {"role": "user", "content": EASY}]
    write = client.chat.completions.create(model="claude", messages=messages, max_tokens=50)
    read = client.chat.completions.create(model="claude", messages=messages, max_tokens=50)
    system_tokens = len(system) // 4 + 1
    assert write.usage.prompt_tokens_details.cache_write_tokens == system_tokens
    assert read.usage.prompt_tokens_details.cache_write_tokens == 0
    rows = logged_rows(gateway)
    for row, wrote in zip(rows, (True, False), strict=True):
        usage = Usage(input_tokens=row.prompt_tokens, output_tokens=row.completion_tokens,
                      cache_read_tokens=row.cached_tokens,
                      cache_write_tokens=row.cache_write_tokens)
        billed = calc_price(usage, "claude-3-5-haiku-latest", provider_id="anthropic")
        assert row.cost_usd == pytest.approx(float(billed.total_price), rel=1e-9)
        assert (row.cache_write_tokens == system_tokens) is wrote
    plain = calc_price(Usage(input_tokens=rows[0].prompt_tokens,
                             output_tokens=rows[0].completion_tokens),
                       "claude-3-5-haiku-latest", provider_id="anthropic").total_price
    assert rows[0].cost_usd > float(plain) > rows[1].cost_usd  # writing costs more than input


def test_an_anthropic_stream_is_translated_to_openai_chunks(gateway) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused")
    chunks = list(client.chat.completions.create(
        model="claude", messages=[{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": EASY}],
        stream=True, stream_options={"include_usage": True},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Bonjour."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 1
    assert chunks[-1].usage.prompt_tokens > len(SYSTEM) // 4


def test_earlier_turns_get_a_breakpoint_and_unsupported_content_is_refused() -> None:
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "bye"}]
    request = to_anthropic({"model": "c", "messages": turns}, default_max_tokens=64)
    assert request["messages"][1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in request["messages"][2]["content"][-1]
    assert request["max_tokens"] == 64 and "system" not in request
    with pytest.raises(Exception, match="not translated for Anthropic"):
        to_anthropic({"model": "c", "messages": [{"role": "tool", "content": "x"}]},
                     default_max_tokens=64)
