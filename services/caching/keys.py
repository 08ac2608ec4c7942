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
