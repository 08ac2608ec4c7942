"""A TCP relay in its own process, placed between the gateway and a real vLLM worker.

Killing it with SIGKILL cuts every open connection at once, exactly as the worker's
host dying would, without paying for a second vLLM start."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import socket
import time


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


def _serve(listen_port: int, target_port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class KillableProxy:
    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self._process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(listen_port, target_port), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    def start(self) -> KillableProxy:
        self._process.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.listen_port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("proxy did not start")

    def kill(self) -> None:
        if self._process.pid and self._process.is_alive():
            import os

            os.kill(self._process.pid, signal.SIGKILL)
            self._process.join(5)
