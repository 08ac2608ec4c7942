"""Between the two forms of an answer: a finished JSON body and an SSE stream.

A streamed answer is assembled into the body it would have had without streaming, so
it can be cached once and served either way; a cached body is replayed as a real stream
(role, the text in several pieces, the finish reason, usage when asked for), which the
``openai`` client cannot tell from a live one.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

_PIECE = re.compile(r"\S+\s*|\s+")
WORDS_PER_CHUNK = 3


def assemble(endpoint: str, chunks: list[dict[str, Any]], usage: dict[str, Any] | None
             ) -> dict[str, Any] | None:
    """The non-streaming body of a finished stream, or None when it cannot be rebuilt
    exactly (tool calls, logprobs, an unfinished choice): such streams are not cached."""
    if not chunks:
        return None
    first = chunks[0]
    texts: dict[int, list[str]] = {}
    roles: dict[int, str] = {}
    finish: dict[int, str | None] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            index = int(choice.get("index", 0))
            if choice.get("logprobs"):
                return None
            if endpoint == "chat.completions":
                delta = choice.get("delta") or {}
                if delta.get("tool_calls") or delta.get("function_call"):
                    return None
                if delta.get("role"):
                    roles[index] = delta["role"]
                texts.setdefault(index, []).append(delta.get("content") or "")
            else:
                texts.setdefault(index, []).append(choice.get("text") or "")
            if choice.get("finish_reason"):
                finish[index] = choice["finish_reason"]
    if not texts or any(finish.get(i) is None for i in texts):
        return None
    if endpoint == "chat.completions":
        choices = [
            {"index": i, "message": {"role": roles.get(i, "assistant"), "content": "".join(t)},
             "finish_reason": finish[i]}
            for i, t in sorted(texts.items())
        ]
        kind = "chat.completion"
    else:
        choices = [{"index": i, "text": "".join(t), "finish_reason": finish[i]}
                   for i, t in sorted(texts.items())]
        kind = "text_completion"
    body = {"id": first.get("id"), "object": kind, "created": first.get("created"),
            "model": first.get("model"), "choices": choices}
    if usage:
        body["usage"] = usage
    return body


def fresh_body(body: dict[str, Any]) -> dict[str, Any]:
    """A cached body with its own id and creation time, as every answer has."""
    prefix = "chatcmpl" if body.get("object") == "chat.completion" else "cmpl"
    return {**body, "id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time())}


def stream_chunks(endpoint: str, body: dict[str, Any], *, include_usage: bool
                  ) -> Iterator[dict[str, Any]]:
    """Replay a cached body as the chunks a live stream would have sent."""
    fresh = fresh_body(body)
    base = {"id": fresh["id"], "created": fresh["created"], "model": fresh.get("model")}
    chat = endpoint == "chat.completions"
    base["object"] = "chat.completion.chunk" if chat else "text_completion"
    for choice in fresh.get("choices") or []:
        index = choice.get("index", 0)
        if chat:
            message = choice.get("message") or {}
            yield {**base, "choices": [{"index": index, "delta": {
                "role": message.get("role", "assistant"), "content": ""},
                "finish_reason": None}]}
            if message.get("tool_calls"):
                calls = [{"index": n, **call} for n, call in enumerate(message["tool_calls"])]
                yield {**base, "choices": [{"index": index, "delta": {"tool_calls": calls},
                                            "finish_reason": None}]}
            text = message.get("content") or ""
        else:
            text = choice.get("text") or ""
        for piece in _pieces(text):
            part = {"delta": {"content": piece}} if chat else {"text": piece}
            yield {**base, "choices": [{"index": index, **part, "finish_reason": None}]}
        last = {"delta": {}} if chat else {"text": ""}
        yield {**base, "choices": [{"index": index, **last,
                                    "finish_reason": choice.get("finish_reason")}]}
    if include_usage and fresh.get("usage"):
        yield {**base, "choices": [], "usage": fresh["usage"]}


def _pieces(text: str) -> Iterator[str]:
    words = _PIECE.findall(text)
    for start in range(0, len(words), WORDS_PER_CHUNK):
        yield "".join(words[start : start + WORDS_PER_CHUNK])
