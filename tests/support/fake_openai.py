"""A local stand-in for an OpenAI-compatible server (a vLLM worker or api.openai.com),
following the chat completions API's documented request and response shapes, for tests
of routing, fallback and cascades where the answer's content matters (a random tiny
model's gibberish cannot be steered) or the real API is unreachable.

Each model's answer is configurable (text, finish_reason, token logprobs), a model can
be made to fail with a status, and every request is recorded.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.aio_server import BackgroundServer


@dataclass
class Answer:
    text: str = "The answer is B."
    finish_reason: str = "stop"
    logprob: float | None = None  # each token's logprob, when the request asks for them
    fail_status: int | None = None
    delay_s: float = 0.0  # time to "generate" before answering
    hold: threading.Semaphore | None = None  # when set: each answer waits for a release()
    other_samples: list[str] | None = None  # choices 2..n (default: the same text)

    def samples(self, n: int) -> list[str]:
        others = self.other_samples or [self.text]
        return [self.text] + [others[i % len(others)] for i in range(n - 1)]


@dataclass
class FakeOpenAI:
    models: dict[str, Answer]
    api_key: str | None = None  # when set, requests must carry "Authorization: Bearer KEY"
    requests: list[dict[str, Any]] = field(default_factory=list)
    abandoned: int = 0  # requests whose caller had closed the connection by answer time

    _server: BackgroundServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        return self._server.url

    def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/tokenize", self._tokenize)
        self._server = BackgroundServer(app, "fake-openai").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def calls(self, model: str) -> int:
        return sum(1 for r in self.requests if r["body"].get("model") == model)

    def _authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("authorization") == (
            f"Bearer {self.api_key}"
        )

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _tokenize(self, request: web.Request) -> web.Response:
        """vLLM's ``/tokenize`` for messages: the count its usage will report."""
        body = await request.json()
        count = _prompt_tokens(body.get("messages") or [])
        return web.json_response({"count": count, "max_model_len": 32768, "tokens": []})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        if not self._authorized(request):
            return _error(401, "Incorrect API key provided", "invalid_request_error")
        answer = self.models.get(body.get("model", ""))
        if answer is None:
            return _error(404, f"The model `{body.get('model')}` does not exist", "not_found")
        if answer.hold is not None:
            await asyncio.to_thread(answer.hold.acquire)
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
            if request.transport is None or request.transport.is_closing():
                self.abandoned += 1  # the gateway cancelled its call
        if answer.fail_status is not None:
            return _error(answer.fail_status, "the server had an error", "server_error")
        words = answer.text.split(" ")
        tokens = [w if i == 0 else f" {w}" for i, w in enumerate(words)]
        prompt_tokens = _prompt_tokens(body["messages"])
        samples = answer.samples(body.get("n") or 1)
        # every choice's tokens are billed, as vLLM and OpenAI count them
        completion_tokens = sum(len(text.split(" ")) for text in samples)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        logprobs = None
        if body.get("logprobs") and answer.logprob is not None:
            logprobs = {"content": [
                {"token": t, "logprob": answer.logprob, "bytes": list(t.encode()),
                 "top_logprobs": []} for t in tokens
            ]}
        common = {"id": f"chatcmpl-{len(self.requests)}", "created": int(time.time()),
                  "model": body["model"]}
        if not body.get("stream"):
            return web.json_response({
                **common, "object": "chat.completion",
                "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                             "logprobs": logprobs, "finish_reason": answer.finish_reason}
                            for i, text in enumerate(samples)],
                "usage": usage,
            })
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        chunk = {**common, "object": "chat.completion.chunk"}
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            choice = {"index": 0, "delta": {"content": token},
                      "finish_reason": answer.finish_reason if last else None}
            await response.write(f"data: {json.dumps({**chunk, 'choices': [choice]})}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(
                f"data: {json.dumps({**chunk, 'choices': [], 'usage': usage})}\n\n".encode()
            )
        await response.write(b"data: [DONE]\n\n")
        return response


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content", ""))) // 4 + 1 for m in messages)


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": None}}, status=status
    )
