"""Token counts from a vLLM worker's own tokenizer (its ``/tokenize`` endpoint).

vLLM answers ``POST /tokenize`` with ``{"count", "max_model_len", "tokens"}`` for a
``prompt`` or, applying the model's chat template, for ``messages``. The count is exact
for the model that will serve the request; when the worker cannot answer (old build,
timeout, gone) the caller falls back to an estimate and records that it did.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

log = logging.getLogger(__name__)

PostJson = Callable[[str, str, bytes], Awaitable[bytes]]


def tokenize_payload(endpoint: str, model: str, request: dict[str, Any]) -> dict[str, Any]:
    if endpoint == "chat.completions":
        return {"model": model, "messages": request.get("messages") or [],
                "add_generation_prompt": True}
    return {"model": model, "prompt": request.get("prompt") or ""}


async def worker_count(post_json: PostJson, worker: str, endpoint: str, model: str,
                       request: dict[str, Any]) -> int | None:
    """The worker's token count of the request's prompt, None when it cannot tell."""
    prompt = request.get("prompt")
    if endpoint != "chat.completions" and not isinstance(prompt, str):
        return None  # token-id or batched prompts: nothing one call can count
    payload = orjson.dumps(tokenize_payload(endpoint, model, request))
    try:
        body = orjson.loads(await post_json(worker, "/tokenize", payload))
        return int(body["count"])
    except Exception as exc:  # any failure means "no exact count", never a failed request
        log.debug("worker %s could not tokenize: %s", worker, exc)
        return None
