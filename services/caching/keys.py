"""Cache keys: a hash of everything in a request that can change its answer.

The key covers the whole request as the client sent it (model, every message, tools,
response format, every sampling parameter, vendor extras such as ``top_k``) except the
fields that only change how the answer is delivered. It is scoped by a namespace, the
tenant by default, so one tenant's entry can never answer another tenant's request.
Requests that sample (temperature > 0, or no temperature, which means 1 for OpenAI and
vLLM) are not cacheable unless the caller opts in: their answer is meant to vary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

# Fields that change delivery, not content.
DELIVERY_FIELDS = frozenset({"stream", "stream_options", "user", "metadata", "store"})


@dataclass(frozen=True, slots=True)
class CacheKey:
    namespace: str
    digest: str

    def __str__(self) -> str:
        return f"{self.namespace}:{self.digest}"


def canonical_request(endpoint: str, request: dict[str, Any]) -> bytes:
    body = {k: v for k, v in request.items() if k not in DELIVERY_FIELDS}
    return orjson.dumps({"endpoint": endpoint, "request": body}, option=orjson.OPT_SORT_KEYS)


def cache_key(namespace: str, endpoint: str, request: dict[str, Any]) -> CacheKey:
    hasher = hashlib.sha256(namespace.encode())
    hasher.update(b"\x00")
    hasher.update(canonical_request(endpoint, request))
    return CacheKey(namespace=namespace, digest=hasher.hexdigest())


def is_deterministic(request: dict[str, Any]) -> bool:
    """True when the request asks for the one most likely answer (greedy decoding)."""
    temperature = request.get("temperature")
    return temperature is not None and float(temperature) == 0.0


def semantic_scope(
    namespace: str, endpoint: str, request: dict[str, Any]
) -> tuple[tuple[str, str], str] | None:
    """``((namespace, context hash), last user text)`` for a request the semantic cache
    may answer, else None.

    The context hash covers the whole request but the text of the last user message, so
    only questions asked with the same model, parameters, system prompt, tools and earlier
    turns are ever compared. Only chat requests whose last turn is plain user text qualify.
    """
    if endpoint != "chat.completions":
        return None
    messages = request.get("messages") or []
    if not messages:
        return None
    last = messages[-1]
    if last.get("role") != "user" or not isinstance(last.get("content"), str):
        return None
    text = last["content"].strip()
    if not text:
        return None
    context = {k: v for k, v in request.items() if k not in DELIVERY_FIELDS}
    context["messages"] = [*messages[:-1], {**last, "content": None}]
    digest = hashlib.sha256(
        orjson.dumps({"endpoint": endpoint, "context": context}, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    return (namespace, digest), text
