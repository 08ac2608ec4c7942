"""Pooled connections to a worker, against a real uvicorn server (what vLLM serves on):
reused while fresh, dropped once idle for ``keepalive_s``; the gateway's default is
below uvicorn's keep-alive, so it never reuses one the worker is closing."""

from __future__ import annotations

import asyncio
import threading
import time

import orjson
import uvicorn

from services.execution import UpstreamClient
from services.settings import load_settings
from services.workers import free_port


async def _peer_port(scope, receive, send) -> None:
    """Answer every POST with the client's port: one port per TCP connection."""
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body",
                "body": orjson.dumps({"port": scope["client"][1]})})


class Uvicorn:
    def __init__(self, keep_alive_s: int) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(_peer_port, host="127.0.0.1", port=port,
                                lifespan="off", log_level="warning",
                                timeout_keep_alive=keep_alive_s)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Uvicorn:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "no uvicorn"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(30)


async def ports(client: UpstreamClient, url: str, pause_s: float) -> list[int]:
    """The client ports of two requests ``pause_s`` apart."""
    found = []
    for i in range(2):
        if i:
            await asyncio.sleep(pause_s)
        found.append(orjson.loads(await client.post_json(url, "/echo", b"{}"))["port"])
    return found


def test_the_gateway_drops_idle_connections_before_uvicorn_does() -> None:
    assert load_settings().upstream_keepalive_s < uvicorn.Config(_peer_port).timeout_keep_alive


async def test_an_idle_connection_is_reused_until_keepalive_then_replaced() -> None:
    with Uvicorn(keep_alive_s=60) as server:
        fresh, idle = UpstreamClient(keepalive_s=60), UpstreamClient(keepalive_s=0.2)
        try:
            first, second = await ports(fresh, server.url, pause_s=0.05)
            assert first == second  # one connection, reused
            first, second = await ports(idle, server.url, pause_s=0.6)
            assert first != second  # idle past keepalive_s: a new connection
        finally:
            await fresh.aclose()
            await idle.aclose()
