"""Embed concurrent requests' texts together, on one thread off the event loop.

One short text costs the encoder about as much as a dozen together (a forward pass is
dominated by fixed per-call work at a few dozen tokens), and each ``asyncio.to_thread``
call embedding alone also pays a thread hand-off. ``EmbeddingBatcher`` keeps one worker
thread: it takes whatever texts are waiting, embeds them in one pass and hands each
caller its row. While it works, new requests queue up and form the next batch, so under
load batches grow by themselves. After a batch of more than one text (concurrent
traffic), the worker also waits up to ``max_wait_s`` for stragglers; a lone request
never waits.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

_Item = tuple[str, asyncio.Future[np.ndarray], asyncio.AbstractEventLoop]


class EmbeddingBatcher:
    """``await embed(text)`` -> unit-norm float32 vector; thread- and loop-safe."""

    def __init__(self, encode: Callable[[Sequence[str]], np.ndarray], *,
                 max_wait_s: float = 0.0015, max_batch: int = 32) -> None:
        self._encode = encode
        self.max_wait_s = max_wait_s
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = 0  # passes run, and texts embedded: their ratio is the batch size
        self.texts = 0

    async def embed(self, text: str) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._ensure_started()
        self._queue.put((text, future, loop))
        return await future

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="embedding-batcher",
                                                daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Stop the worker after the texts already queued."""
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=5)

    def _collect(self, first: _Item, wait: bool) -> tuple[list[_Item], bool]:
        """``first`` and whatever else is waiting (up to ``max_wait_s`` more when
        ``wait``); the flag says whether the stop sentinel was met."""
        batch = [first]
        deadline = time.monotonic() + (self.max_wait_s if wait else 0.0)
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else (
                    self._queue.get_nowait())
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        busy = False  # the last batch had company: traffic is concurrent, stragglers likely
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._collect(first, busy)
            busy = len(batch) > 1
            try:
                vectors = self._encode([text for text, _, _ in batch])
                self.batches += 1
                self.texts += len(batch)
                for row, (_, future, loop) in enumerate(batch):
                    _deliver(loop, future, vectors[row], None)
            except Exception as exc:  # every caller of the failed pass gets the error
                for _, future, loop in batch:
                    _deliver(loop, future, None, exc)
            if stop:
                return


def _deliver(loop: asyncio.AbstractEventLoop, future: asyncio.Future[np.ndarray],
             value: np.ndarray | None, error: BaseException | None) -> None:
    try:
        loop.call_soon_threadsafe(_resolve, future, value, error)
    except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
        pass


def _resolve(future: asyncio.Future[np.ndarray], value: np.ndarray | None,
             error: BaseException | None) -> None:
    if future.done():  # the caller gave up (cancelled)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)  # type: ignore[arg-type]
