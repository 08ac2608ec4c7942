"""Token counting offline: tiktoken with the bundled, hash-checked vocabularies."""

from __future__ import annotations

import pytest

from services.tokens import count_request, counter_for_model, encoding_name, text_counter
from services.tokens.counting import EncodingUnavailable, _bundled_ranks, encoding


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


async def test_worker_count_reads_tokenize_and_falls_back_to_none() -> None:
    from services.errors import UpstreamUnavailable
    from services.tokens import worker_count

    sent: list[bytes] = []

    async def answers(worker: str, path: str, payload: bytes) -> bytes:
        sent.append(payload)
        assert path == "/tokenize"
        return b'{"count": 17, "max_model_len": 2048, "tokens": []}'

    async def down(worker: str, path: str, payload: bytes) -> bytes:
        raise UpstreamUnavailable("gone")

    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert await worker_count(answers, "http://w", "chat.completions", "m", chat) == 17
    assert b'"add_generation_prompt":true' in sent[0]
    assert await worker_count(down, "http://w", "chat.completions", "m", chat) is None
    assert await worker_count(answers, "http://w", "completions", "m", {"prompt": [1, 2]}) is None
