"""The gateway served by uvicorn on a free port, in a background thread of the test
process, so tests use real HTTP (the official openai client) and can still reach the
app's services (flush telemetry, look at the worker pool)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvicorn

from services.gateway import create_app
from services.gateway.deps import AppServices
from services.settings import Settings
from services.workers import free_port

T = TypeVar("T")


def wait_for(predicate: Callable[[], object], timeout_s: float = 30) -> bool:
    """Poll ``predicate`` until it is true; False when ``timeout_s`` passed first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


class RunningGateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            loop="asyncio",
        )
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="gateway")

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def start(self, timeout_s: float = 30) -> RunningGateway:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)

    @property
    def running(self) -> bool:
        """Whether the server's thread is still up (its shutdown has not finished)."""
        return self._thread.is_alive()

    @property
    def services(self) -> AppServices:
        return self.app.state.services  # type: ignore[no-any-return]

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        """Run a coroutine on the gateway's own event loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def flush_telemetry(self) -> None:
        self.run(self.services.telemetry.flush())

    def __enter__(self) -> RunningGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
