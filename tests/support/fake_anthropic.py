"""A local stand-in for Anthropic's Messages API (POST /v1/messages), following its
documented shapes: ``x-api-key`` and ``anthropic-version`` headers, ``system`` blocks,
``cache_control`` breakpoints with prompt caching (the prefix up to a breakpoint is
written on first sight, ``cache_creation_input_tokens``, and read afterwards,
``cache_read_input_tokens``; ``input_tokens`` counts only the rest), and streaming as
named SSE events (message_start, content_block_*, message_delta, message_stop)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.aio_server import BackgroundServer


def _tokens(blocks: list[dict[str, Any]]) -> int:
    return sum(len(b.get("text", "")) // 4 + 1 for b in blocks)


@dataclass
class FakeAnthropic:
    api_key: str
    reply: str = "Bonjour."
    requests: list[dict[str, Any]] = field(default_factory=list)
    _cache: set[str] = field(default_factory=set)

    _server: BackgroundServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        return self._server.url

    def start(self) -> FakeAnthropic:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        self._server = BackgroundServer(app, "fake-anthropic").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def _usage(self, body: dict[str, Any]) -> dict[str, int]:
        """Prompt caching: the prefix up to the last cache_control breakpoint is cached."""
        blocks = list(body.get("system") or [])
        for message in body["messages"]:
            content = message["content"]
            blocks += [{"type": "text", "text": content}] if isinstance(content, str) else content
        cut = max((i + 1 for i, b in enumerate(blocks) if "cache_control" in b), default=0)
        prefix, rest = blocks[:cut], blocks[cut:]
        key = json.dumps(prefix, sort_keys=True)
        read = written = 0
        if prefix and key in self._cache:
            read = _tokens(prefix)
        elif prefix:
            written = _tokens(prefix)
            self._cache.add(key)
        return {"input_tokens": _tokens(rest), "output_tokens": len(self.reply.split()),
                "cache_creation_input_tokens": written, "cache_read_input_tokens": read}

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        if request.headers.get("x-api-key") != self.api_key:
            return _error(401, "authentication_error", "invalid x-api-key")
        if request.headers.get("anthropic-version") != "2023-06-01":
            return _error(400, "invalid_request_error", "anthropic-version header is required")
        if "max_tokens" not in body:
            return _error(400, "invalid_request_error", "max_tokens: Field required")
        if any(m["role"] not in {"user", "assistant"} for m in body["messages"]):
            return _error(400, "invalid_request_error", "messages: roles must be user/assistant")
        usage = self._usage(body)
        message = {"id": f"msg_{len(self.requests)}", "type": "message", "role": "assistant",
                   "model": body["model"], "stop_reason": "end_turn", "stop_sequence": None}
        if not body.get("stream"):
            return web.json_response({**message, "usage": usage,
                                      "content": [{"type": "text", "text": self.reply}]})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

        start_usage = {**usage, "output_tokens": 1}
        await send("message_start", {"type": "message_start", "message": {
            **message, "content": [], "stop_reason": None, "usage": start_usage}})
        await send("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}})
        await send("ping", {"type": "ping"})
        for i, word in enumerate(self.reply.split(" ")):
            text = word if i == 0 else f" {word}"
            await send("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": text}})
        await send("content_block_stop", {"type": "content_block_stop", "index": 0})
        await send("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                     "usage": {"output_tokens": usage["output_tokens"]}})
        await send("message_stop", {"type": "message_stop"})
        return response


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response(
        {"type": "error", "error": {"type": kind, "message": message}}, status=status
    )
