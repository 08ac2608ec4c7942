"""Token counting offline: tiktoken with the bundled, hash-checked vocabularies."""

from __future__ import annotations

import orjson
import pytest

from services.tokens import count_request, counter_for_model, encoding_name, text_counter
from services.tokens.counting import EncodingUnavailable, _bundled_ranks, encoding
from services.workers import free_port


def test_known_counts_for_both_encodings() -> None:
    # reference values from tiktoken with the official vocabulary files
    assert encoding("cl100k_base").encode("hello world") == [15339, 1917]
    assert encoding("o200k_base").encode("hello world") == [24912, 2375]
    assert text_counter("o200k_base")("tiktoken is great!") == 6


def test_models_map_to_their_encodings() -> None:
    assert encoding_name("gpt-4o-mini") == "o200k_base"
    assert encoding_name("openai/gpt-4") == "cl100k_base"
    assert encoding_name("tiny-llama") is None
    assert counter_for_model("tiny-llama")[1] is False  # an estimate, and said so
    assert counter_for_model("gpt-4o")[1] is True


def test_a_vocabulary_with_the_wrong_hash_is_refused() -> None:
    with pytest.raises(EncodingUnavailable, match="refusing"):
        _bundled_ranks("https://x/cl100k_base.tiktoken", expected_hash="0" * 64)


def test_chat_framing_is_counted() -> None:
    count = text_counter()
    request = {"messages": [{"role": "user", "content": "hi"},
                            {"role": "user", "content": [{"type": "text", "text": "yo"}]}]}
    assert count_request("chat.completions", request, count) == 3 + 2 * (3 + 1 + 1)


async def test_worker_count_is_the_prompt_tokens_the_worker_then_bills(vllm_worker) -> None:
    """The real worker's ``/tokenize`` (chat template, generation prompt included) counts
    exactly the prompt tokens its own usage reports; a worker that cannot answer, or a
    prompt one call cannot count, gives None."""
    from services.execution import UpstreamClient
    from services.tokens import worker_count

    client = UpstreamClient()
    model = vllm_worker.served_model_name
    chat = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "How many tokens is this question?"}]}
    prompt = {"prompt": "Once upon a time, in a land far away,"}
    try:
        counts = {}
        for endpoint, path, request in [("chat.completions", "/v1/chat/completions", chat),
                                        ("completions", "/v1/completions", prompt)]:
            counts[endpoint] = await worker_count(
                client.post_json, vllm_worker.base_url, endpoint, model, request)
            answer = orjson.loads(await client.post_json(
                vllm_worker.base_url, path,
                orjson.dumps({"model": model, "max_tokens": 1, **request})))
            assert counts[endpoint] == answer["usage"]["prompt_tokens"]
        assert counts["chat.completions"] > counts["completions"] > 5
        dead = f"http://127.0.0.1:{free_port()}"
        assert await worker_count(client.post_json, dead, "chat.completions", model, chat) is None
        assert await worker_count(client.post_json, vllm_worker.base_url, "completions", model,
                                  {"prompt": [1, 2]}) is None
    finally:
        await client.aclose()
