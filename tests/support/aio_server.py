"""An aiohttp app served on a free port in a background thread (for fake upstreams)."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from services.workers import free_port


class BackgroundServer:
    def __init__(self, app: web.Application, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner = web.AppRunner(app)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, daemon=True, name=name)
        self._started = threading.Event()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._started.set()
        self._loop.run_forever()

    def start(self) -> BackgroundServer:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError(f"{self._thread.name} did not start")
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
