"""The static prefix of a request: the part that repeats across requests.

For chat it is everything before the last message (tools, response format, system
prompt, documents, earlier turns); for completions, the leading part of a long prompt.
Its hash keys prefix-affinity routing, so requests that share it meet the same vLLM
prefix cache. A request with no such part (one short user turn) has no prefix.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

MIN_COMPLETION_PREFIX_CHARS = 512
COMPLETION_PREFIX_CHARS = 1024


def static_prefix_key(endpoint: str, model: str, request: dict[str, Any]) -> str | None:
    if endpoint == "chat.completions":
        messages = request.get("messages") or []
        static = {
            "tools": request.get("tools"),
            "response_format": request.get("response_format"),
            "messages": messages[:-1],
        }
        if not static["messages"] and not static["tools"]:
            return None
        material = orjson.dumps(static, option=orjson.OPT_SORT_KEYS)
    else:
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or len(prompt) < MIN_COMPLETION_PREFIX_CHARS:
            return None
        material = prompt[:COMPLETION_PREFIX_CHARS].encode()
    return hashlib.blake2b(model.encode() + b"\x00" + material, digest_size=16).hexdigest()
