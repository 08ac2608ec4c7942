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

import hashlib
from typing import Any

import orjson

MIN_COMPLETION_PREFIX_CHARS = 512
COMPLETION_PREFIX_CHARS = 1024
INSTRUCTION_ROLES = ("system", "developer")


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


def _chat_prefix(request: dict[str, Any]) -> bytes | None:
    messages = request.get("messages") or []
    leading = []
    for message in messages[:-1]:
        if message.get("role") not in INSTRUCTION_ROLES:
            break
        leading.append(message)
    tools = request.get("tools")
    if not leading and not tools:
        if len(messages) < 2:
            return None
        leading = messages[:1]  # the conversation's opening, repeated by every later turn
    static = {"tools": tools, "response_format": request.get("response_format"),
              "messages": leading}
    return orjson.dumps(static, option=orjson.OPT_SORT_KEYS)


# Anthropic caches a prompt prefix only when asked: a ``cache_control`` marker on the
# last block of the prefix (at most 4 markers per request), and only from a minimum
# length (1,024 tokens for most models). Roughly 4 characters per token.
ANTHROPIC_MIN_PREFIX_TOKENS = 1024
ANTHROPIC_MAX_BREAKPOINTS = 4


def place_anthropic_breakpoint(body: dict[str, Any], *, chars_per_token: float = 4.0) -> bool:
    """Mark the end of the static prefix of an Anthropic Messages request as cacheable.

    The static prefix is tools, system and every message before the last one; the
    marker goes on its last content block, so everything up to it is read from the
    provider's cache on the next request that shares it. Returns whether a marker was
    placed (not when the prefix is too short to be cached, or the request already uses
    all its markers).
    """
    blocks: list[dict[str, Any]] = []
    for tool in body.get("tools") or []:
        blocks.append(tool)
    system = body.get("system")
    if isinstance(system, str) and system:
        body["system"] = system = [{"type": "text", "text": system}]
    blocks.extend(system or [])
    for message in (body.get("messages") or [])[:-1]:
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = content = [{"type": "text", "text": content}]
        blocks.extend(content or [])
    if not blocks:
        return False
    used = sum(1 for block in _all_blocks(body) if "cache_control" in block)
    if used >= ANTHROPIC_MAX_BREAKPOINTS:
        return False
    size = len(orjson.dumps(blocks)) / chars_per_token
    if size < ANTHROPIC_MIN_PREFIX_TOKENS:
        return False
    blocks[-1]["cache_control"] = {"type": "ephemeral"}
    return True


def _all_blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    found = list(body.get("tools") or [])
    if isinstance(body.get("system"), list):
        found += body["system"]
    for message in body.get("messages") or []:
        if isinstance(message.get("content"), list):
            found += message["content"]
    return found
