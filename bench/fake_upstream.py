"""A minimal, fast OpenAI-compatible upstream for measuring proxy overhead.

The gateway-overhead benchmark subtracts "direct to the upstream" from "through a
proxy", so the upstream must cost as little as possible and never be the bottleneck:
it is a raw asyncio protocol on uvloop with the ``httptools`` parser (the one uvicorn
uses), answering every ``POST /v1/chat/completions`` (``/v1/completions``) with the
same prebuilt chat.completion (text_completion) JSON (usage included, so proxies can
count and price it) and ``GET /v1/models`` with one model. A body with
``"stream":true`` (as the gateway sends it) gets a prebuilt SSE stream instead: two
content chunks, a usage chunk and ``[DONE]``. No JSON is parsed or built per request.
Several processes can share the port (``SO_REUSEPORT``) so one slow scheduling slot of
one process does not stall every connection.

With ``--usage-from-request`` (the cost replay) it parses each completion request
instead and answers with the usage that request implies: ``prompt_tokens`` one per 4
characters of its messages (or prompt), ``completion_tokens`` its ``max_tokens``, the
model it named, and token logprobs when asked (a confidence taken from a hash of the
prompt, so a cascade accepts some cheap answers and escalates others, the same ones on
every run).

Run it on its own::

    python bench/fake_upstream.py --port 9100 --model gpt-4o-mini --processes 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import sys
import time
import zlib

import httptools
import uvloop

_CLOSE = b"close"
_COMPLETION_PATHS = (b"/v1/chat/completions", b"/v1/completions")


def chat_completion_body(model: str, completion_tokens: int = 8) -> bytes:
    """The fixed answer: a small, valid chat.completion with usage."""
    body = {
        "id": "chatcmpl-bench0000000000000000",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "This is a benchmark reply."},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": completion_tokens,
            "total_tokens": 12 + completion_tokens,
        },
    }
    return json.dumps(body, separators=(",", ":")).encode()


def completion_body(model: str, completion_tokens: int = 8) -> bytes:
    """The fixed answer of ``/v1/completions``: a text_completion with usage."""
    body = {
        "id": "cmpl-bench0000000000000000", "object": "text_completion",
        "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": " This is a benchmark reply.", "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": completion_tokens,
                  "total_tokens": 12 + completion_tokens},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def models_body(model: str) -> bytes:
    card = {"id": model, "object": "model", "created": 0, "owned_by": "bench"}
    return json.dumps({"object": "list", "data": [card]}, separators=(",", ":")).encode()


def chat_stream_body(model: str, completion_tokens: int = 8) -> bytes:
    """The fixed answer as SSE: content chunks, the usage chunk, ``[DONE]``."""
    common = {"id": "chatcmpl-bench0000000000000000", "object": "chat.completion.chunk",
              "created": int(time.time()), "model": model}
    events = [
        {**common, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "This"},
                                "finish_reason": None}]},
        {**common, "choices": [{"index": 0, "delta": {"content": " is a benchmark reply."},
                                "finish_reason": "stop"}]},
        {**common, "choices": [], "usage": {"prompt_tokens": 12,
                                            "completion_tokens": completion_tokens,
                                            "total_tokens": 12 + completion_tokens}},
    ]
    lines = [b"data: " + json.dumps(e, separators=(",", ":")).encode() for e in events]
    return b"\n\n".join([*lines, b"data: [DONE]"]) + b"\n\n"


def _response(status: bytes, body: bytes, *, keep_alive: bool,
              content_type: bytes = b"application/json") -> bytes:
    connection = b"keep-alive" if keep_alive else b"close"
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type + b"\r\ncontent-length: "
        + str(len(body)).encode() + b"\r\nconnection: " + connection + b"\r\n\r\n" + body
    )


class _Responses:
    """Every answer prebuilt as bytes, in keep-alive and close variants."""

    def __init__(self, model: str) -> None:
        chat = chat_completion_body(model)
        models = models_body(model)
        missing = b'{"error":{"message":"not found","type":"not_found","param":null,"code":null}}'
        self.table: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}
        for method, path, status, body in (
            (b"POST", b"/v1/chat/completions", b"200 OK", chat),
            (b"POST", b"/v1/completions", b"200 OK", completion_body(model)),
            (b"GET", b"/v1/models", b"200 OK", models),
            (b"GET", b"/health", b"200 OK", b"{}"),
        ):
            self.table[(method, path)] = (
                _response(status, body, keep_alive=True),
                _response(status, body, keep_alive=False),
            )
        stream = chat_stream_body(model)
        self.stream = (
            _response(b"200 OK", stream, keep_alive=True, content_type=b"text/event-stream"),
            _response(b"200 OK", stream, keep_alive=False, content_type=b"text/event-stream"),
        )
        self.not_found = (
            _response(b"404 Not Found", missing, keep_alive=True),
            _response(b"404 Not Found", missing, keep_alive=False),
        )


def usage_answer(raw: bytes) -> bytes:
    """A completion whose usage follows the request (``--usage-from-request``)."""
    request = json.loads(raw or b"{}")
    messages = request.get("messages")
    text = ("".join(str(m.get("content") or "") for m in messages) if messages
            else str(request.get("prompt") or ""))
    prompt_tokens = max(1, len(text) // 4)
    completion_tokens = max(1, int(request.get("max_tokens") or 16))
    content = " ".join(["tok"] * min(completion_tokens, 256))
    choice: dict[str, object] = {"index": 0, "finish_reason": "stop", "logprobs": None}
    if request.get("logprobs"):
        confident = zlib.crc32(text.encode()) % 10 < 7  # 7 in 10 cheap answers pass
        logprob = -0.05 if confident else -2.5
        tokens = [{"token": "tok", "logprob": logprob, "top_logprobs": []}] * min(
            completion_tokens, 256)
        choice["logprobs"] = ({"content": tokens} if messages
                              else {"token_logprobs": [logprob] * len(tokens)})
    if messages:
        choice["message"] = {"role": "assistant", "content": content}
    else:
        choice["text"] = content
    body = {
        "id": "chatcmpl-bench", "object": "chat.completion" if messages else "text_completion",
        "created": int(time.time()), "model": request.get("model") or "unknown",
        "choices": [choice],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }
    return json.dumps(body, separators=(",", ":")).encode()


class _HttpProtocol(asyncio.Protocol):
    """One connection: parse with httptools, answer each complete request at once."""

    __slots__ = ("_responses", "_transport", "_parser", "_url", "_close", "_body", "_echo",
                 "_stream")

    def __init__(self, responses: _Responses, echo: bool = False) -> None:
        self._responses = responses
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._close = False
        self._body = bytearray()
        self._echo = echo
        self._stream = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._close = False
        self._body.clear()
        self._stream = False

    def on_body(self, body: bytes) -> None:
        if self._echo:
            self._body += body
        if b'"stream":true' in body:
            self._stream = True

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"connection" and value.lower() == _CLOSE:
            self._close = True

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None:
            return
        path = self._url.split(b"?", 1)[0]
        method = self._parser.get_method()
        answers = self._responses.table.get((method, path), self._responses.not_found)
        if self._stream and method == b"POST" and answers is not self._responses.not_found:
            answers = self._responses.stream
        close = self._close or not self._parser.should_keep_alive()
        if self._echo and method == b"POST" and path in _COMPLETION_PATHS:
            body = usage_answer(bytes(self._body))
            transport.write(_response(b"200 OK", body, keep_alive=not close))
        else:
            transport.write(answers[1] if close else answers[0])
        if close:
            transport.close()


def _listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def _serve(host: str, port: int, model: str, echo: bool = False) -> None:
    """One server process; several of them share the port through SO_REUSEPORT."""
    responses = _Responses(model)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        server = await loop.create_server(
            lambda: _HttpProtocol(responses, echo), sock=_listening_socket(host, port)
        )
        async with server:
            await stop.wait()

    uvloop.run(main())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--model", default="gpt-4o-mini", help="model id served and answered")
    parser.add_argument("--processes", type=int, default=1, help="server processes (SO_REUSEPORT)")
    parser.add_argument("--usage-from-request", action="store_true",
                        help="answer each request with the usage it implies (cost replay)")
    args = parser.parse_args(argv)
    if args.processes <= 1:
        _serve(args.host, args.port, args.model, args.usage_from_request)
        return
    children = [
        multiprocessing.Process(target=_serve, args=(args.host, args.port, args.model,
                                                     args.usage_from_request))
        for _ in range(args.processes)
    ]
    for child in children:
        child.start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()
    sys.exit(0)


if __name__ == "__main__":
    main()
