"""The static prefix of a request: the part that repeats across requests.

Its hash keys prefix-affinity routing, so requests that share it meet the same vLLM
prefix cache. The key must stay the same from one turn of a conversation to the next,
or each turn would land on another worker and find nothing cached there:

- chat: the tools, the response format and the leading system/developer messages (the
  part shared by every conversation of an application); a conversation without them is
  keyed by its first message, which its later turns repeat;
- completions: the leading part of a long prompt.

A request with no such part (one short user turn) has no prefix.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import orjson
from sqlalchemy import Engine, select

from models import CacheablePrefix

MIN_COMPLETION_PREFIX_CHARS = 512
COMPLETION_PREFIX_CHARS = 1024
INSTRUCTION_ROLES = ("system", "developer")


def prefix_cache_salt(key: bytes, tenant: str, client_salt: object = None) -> str:
    """vLLM's ``cache_salt`` for a tenant's requests: prefix-cache blocks are shared
    only among requests with the same salt, so one tenant cannot learn from its time to
    first token whether another's prompt is cached.

    HMAC-SHA256 of the tenant (and of the client's own ``cache_salt``, which narrows
    its sharing further but can never widen it to another tenant), base64url without
    padding: 43 characters, none of the ``/ @ \\`` vLLM refuses.
    """
    material = orjson.dumps([tenant, client_salt if isinstance(client_salt, str) else None])
    digest = hmac.new(key, material, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def static_prefix_key(endpoint: str, model: str, request: dict[str, Any]) -> str | None:
    if endpoint == "chat.completions":
        material = _chat_prefix(request)
    else:
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or len(prompt) < MIN_COMPLETION_PREFIX_CHARS:
            return None
        material = prompt[:COMPLETION_PREFIX_CHARS].encode()
    if material is None:
        return None
    return hashlib.blake2b(model.encode() + b"\x00" + material, digest_size=16).hexdigest()


def cacheable_prefix_hash(messages: list[dict[str, Any]]) -> str:
    """The ``cacheable_prefixes`` key of leading messages (model-free, unlike the
    affinity key: the table is written offline from prompts of any model)."""
    return hashlib.sha256(orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)).hexdigest()


def leading_instructions(messages: object) -> list[dict[str, Any]]:
    """A chat's leading system/developer messages: the part ``cacheable_prefixes``
    records, and the one an application repeats in every request."""
    lead: list[dict[str, Any]] = []
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict) or message.get("role") not in INSTRUCTION_ROLES:
            break
        lead.append(message)
    return lead


def marked_prefix_hashes(engine: Engine) -> frozenset[str]:
    """Every prefix the ``token_optimization`` flow has marked cacheable."""
    with engine.connect() as conn:
        return frozenset(conn.execute(select(CacheablePrefix.prefix_hash)).scalars())


def _chat_prefix(request: dict[str, Any]) -> bytes | None:
    messages = request.get("messages") or []
    leading = leading_instructions(messages[:-1])
    tools = request.get("tools")
    if not leading and not tools:
        if len(messages) < 2:
            return None
        leading = messages[:1]  # the conversation's opening, repeated by every later turn
    static = {"tools": tools, "response_format": request.get("response_format"),
              "messages": leading}
    return orjson.dumps(static, option=orjson.OPT_SORT_KEYS)

