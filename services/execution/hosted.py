"""Hosted model APIs behind one OpenAI-shaped interface: OpenAI and Anthropic Messages.

Both adapters take an OpenAI request body and give back an OpenAI answer: a whole
``chat.completion`` JSON body, or a stream of ``chat.completion.chunk`` dicts. They
share the gateway's pooled HTTP client and its error mapping (a refused key or a
provider's rate limit is an upstream failure, so the router falls back to another
model).

Anthropic (Messages API, ``anthropic-version: 2023-06-01``): system and developer
messages become ``system`` blocks; a ``cache_control`` breakpoint marks the end of the
static prefix (the system prompt, and the earlier turns of a conversation), so the
provider's prompt cache serves it on the next call; ``cache_read_input_tokens`` come
back as OpenAI's ``usage.prompt_tokens_details.cached_tokens``,
``cache_creation_input_tokens`` as our ``prompt_tokens_details.cache_write_tokens`` (they
are billed differently: reads at 0.1x the input rate, writes at 1.25x), and the prompt
tokens are ``input_tokens`` + cache reads + cache writes (Anthropic counts them apart).
Streams are translated event by event into OpenAI chunks. Tool calls are not
translated: a request with tools or tool messages is refused with a clear 400.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson

from services.errors import InvalidRequest, UpstreamError
from services.execution.client import UpstreamClient, parse_stream_event

ANTHROPIC_VERSION = "2023-06-01"
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
           "tool_use": "tool_calls", "refusal": "content_filter"}


class OpenAIAPI:
    provider = "openai"

    def __init__(self, client: UpstreamClient, base_url: str, api_key: str) -> None:
        self._client = client
        self.url = base_url.rstrip("/").removesuffix("/v1")
        self._headers = {"authorization": f"Bearer {api_key}"}

    async def complete(self, path: str, body: dict[str, Any]) -> bytes:
        return await self._client.post_json(
            self.url, path, orjson.dumps(body), headers=self._headers
        )

    @asynccontextmanager
    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[AsyncIterator[dict]]:
        async with self._client.stream_lines(
            self.url, path, orjson.dumps(body), headers=self._headers
        ) as lines:
            yield _sse_data(lines, self.url)


class AnthropicAPI:
    provider = "anthropic"

    def __init__(
        self, client: UpstreamClient, base_url: str, api_key: str, *, default_max_tokens: int
    ) -> None:
        self._client = client
        self.url = base_url.rstrip("/").removesuffix("/v1")
        self._headers = {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION}
        self._default_max_tokens = default_max_tokens

    async def complete(self, path: str, body: dict[str, Any]) -> bytes:
        request = self._request(path, body)
        raw = await self._client.post_json(
            self.url, "/v1/messages", orjson.dumps(request), headers=self._headers
        )
        return orjson.dumps(_chat_completion(orjson.loads(raw)))

    @asynccontextmanager
    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[AsyncIterator[dict]]:
        request = {**self._request(path, body), "stream": True}
        async with self._client.stream_lines(
            self.url, "/v1/messages", orjson.dumps(request), headers=self._headers
        ) as lines:
            yield _anthropic_chunks(lines, body["model"], self.url)

    def _request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path != "/v1/chat/completions":
            raise InvalidRequest(f"model {body['model']!r} is served by the Anthropic Messages "
                                 "API, which has no /v1/completions: use /v1/chat/completions")
        return to_anthropic(body, default_max_tokens=self._default_max_tokens)


def to_anthropic(body: dict[str, Any], *, default_max_tokens: int) -> dict[str, Any]:
    """An OpenAI chat request as a Messages API request, with cache breakpoints."""
    if body.get("tools") or body.get("functions"):
        raise InvalidRequest("tool calls are not translated for Anthropic models", param="tools")
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for message in body["messages"]:
        role = message["role"]
        blocks = _text_blocks(message.get("content"))
        if role in {"system", "developer"}:
            system.extend(blocks)
        elif role in {"user", "assistant"}:
            messages.append({"role": role, "content": blocks})
        else:
            raise InvalidRequest(f"{role} messages are not translated for Anthropic models",
                                 param="messages")
    if system:
        system[-1] = {**system[-1], "cache_control": {"type": "ephemeral"}}
    if len(messages) >= 3 and messages[-2]["content"]:  # earlier turns: a static prefix
        last = messages[-2]["content"]
        last[-1] = {**last[-1], "cache_control": {"type": "ephemeral"}}
    request: dict[str, Any] = {
        "model": body["model"],
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens")
        or default_max_tokens,
        "messages": messages,
    }
    if system:
        request["system"] = system
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            request[name] = body[name]
    stop = body.get("stop")
    if stop:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("user"):
        request["metadata"] = {"user_id": body["user"]}
    return request


def _text_blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for part in content:
        if part.get("type") != "text":
            raise InvalidRequest(f"content parts of type {part.get('type')!r} are not "
                                 "translated for Anthropic models", param="messages")
        blocks.append({"type": "text", "text": part.get("text", "")})
    return blocks


def openai_usage(usage: dict[str, Any]) -> dict[str, Any]:
    read = usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + read + written
    completion = usage.get("output_tokens") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": written}}


def _chat_completion(message: dict[str, Any]) -> dict[str, Any]:
    try:
        text = "".join(b.get("text", "") for b in message["content"] if b.get("type") == "text")
        return {
            "id": message["id"], "object": "chat.completion", "created": int(time.time()),
            "model": message["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None,
                         "finish_reason": _FINISH.get(message.get("stop_reason"), "stop")}],
            "usage": openai_usage(message.get("usage") or {}),
        }
    except (KeyError, TypeError, AttributeError) as exc:
        raise UpstreamError("anthropic sent a malformed message") from exc


async def _sse_data(lines: AsyncIterator[str], url: str) -> AsyncIterator[dict[str, Any]]:
    async for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        event = parse_stream_event(url, data)
        if event.get("type") == "error" or "error" in event:
            error = event.get("error") or {}
            raise UpstreamError(f"{url} failed mid-stream: {error.get('message', error)}")
        yield event


async def _anthropic_chunks(
    lines: AsyncIterator[str], model: str, url: str
) -> AsyncIterator[dict[str, Any]]:
    usage: dict[str, Any] = {}
    base: dict[str, Any] = {"object": "chat.completion.chunk", "created": int(time.time()),
                            "model": model, "id": ""}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    async for event in _sse_data(lines, url):
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            base["id"] = message.get("id", "")
            usage.update(message.get("usage") or {})
            yield chunk({"role": "assistant", "content": ""})
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                yield chunk({"content": delta.get("text", "")})
        elif kind == "message_delta":
            usage.update(event.get("usage") or {})
            reason = (event.get("delta") or {}).get("stop_reason")
            yield chunk({}, _FINISH.get(reason, "stop"))
        elif kind == "message_stop":
            yield {**base, "choices": [], "usage": openai_usage(usage)}
            return
    raise UpstreamError(f"{url} ended the stream before message_stop")
