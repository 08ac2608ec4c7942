"""The set of upstream workers, their health, and which one takes the next request.

Workers come from settings, from run-time registration (admin API, ``optengine
worker``) and from the shared ``workers`` table, so every gateway replica sees the same
set. A background loop probes each worker's ``/v1/models``: that one call both checks
health and discovers which models it serves. Choosing a worker is in memory only: the
healthy worker serving the model with the fewest requests in flight (ties broken in
turn, so idle workers share the load).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from services.background import cancel_and_wait
from services.errors import EngineError, ModelNotFound, UpstreamUnavailable
from services.execution.affinity import HashRing, pick_bounded
from services.execution.client import UpstreamClient

log = logging.getLogger(__name__)


@dataclass(eq=False)
class WorkerState:
    url: str
    source: str = "config"
    models: frozenset[str] = frozenset()
    healthy: bool = False
    outstanding: int = 0
    served: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    last_probe_at: float | None = None
    _order: int = field(default=0, repr=False)


# A store sync returns the worker URLs registered in the shared table (with their
# source) and receives this replica's view of health to write back.
StoreSync = Callable[[list[WorkerState]], Awaitable[dict[str, str]]]


class WorkerPool:
    def __init__(
        self,
        client: UpstreamClient,
        *,
        health_interval_s: float = 5.0,
        store_sync: StoreSync | None = None,
        on_models: Callable[[frozenset[str]], object] | None = None,
        affinity_load_factor: float | None = 1.25,
    ) -> None:
        self._client = client
        self._workers: dict[str, WorkerState] = {}
        self._health_interval_s = health_interval_s
        self._store_sync = store_sync
        self._on_models = on_models
        self.affinity_load_factor = affinity_load_factor
        self._rings: dict[tuple[str, ...], HashRing] = {}
        self._turn = itertools.count(1)  # 0 is "never chosen": new workers go first
        self._task: asyncio.Task[None] | None = None

    # --- membership -----------------------------------------------------------------

    @property
    def workers(self) -> list[WorkerState]:
        return list(self._workers.values())

    def get(self, url: str) -> WorkerState | None:
        return self._workers.get(url.rstrip("/"))

    async def register(self, url: str, *, source: str = "registered") -> WorkerState:
        """Add a worker (idempotent) and probe it at once so it can serve immediately."""
        url = url.rstrip("/").removesuffix("/v1")
        worker = self._workers.get(url)
        if worker is None:
            worker = WorkerState(url=url, source=source)
            self._workers[url] = worker
            log.info("worker %s added (%s)", url, source)
        await self.probe(worker)
        return worker

    def deregister(self, url: str) -> bool:
        removed = self._workers.pop(url.rstrip("/").removesuffix("/v1"), None)
        if removed:
            log.info("worker %s removed", removed.url)
        return removed is not None

    # --- health ---------------------------------------------------------------------

    async def probe(self, worker: WorkerState) -> None:
        try:
            models = await self._client.list_models(worker.url)
        except EngineError as exc:
            self.mark_failed(worker, exc.message)
        else:
            found = frozenset(models)
            if found != worker.models and self._on_models is not None:
                self._on_models(found)
            worker.models = found
            if not worker.healthy:
                log.info("worker %s healthy, serving %s", worker.url, sorted(models))
            worker.healthy = True
            worker.consecutive_failures = 0
            worker.last_error = None
        worker.last_probe_at = time.monotonic()

    def mark_failed(self, worker: WorkerState, reason: str) -> None:
        """Eject a worker from selection until a probe finds it healthy again."""
        if worker.healthy:
            log.warning("worker %s marked unhealthy: %s", worker.url, reason)
        worker.healthy = False
        worker.consecutive_failures += 1
        worker.last_error = reason

    async def probe_all(self) -> None:
        if self._workers:
            await asyncio.gather(*(self.probe(w) for w in list(self._workers.values())))

    async def sync_store(self) -> None:
        if self._store_sync is None:
            return
        try:
            registered = await self._store_sync(self.workers)
        except Exception:  # the store being down must not stop health probing
            log.warning("worker registry sync failed", exc_info=True)
            return
        for url, source in registered.items():
            if url not in self._workers:
                self._workers[url] = WorkerState(url=url, source=source)
        for worker in self.workers:
            if worker.source != "config" and worker.url not in registered:
                self.deregister(worker.url)

    async def start(self, initial: Iterable[str] = ()) -> None:
        for url in initial:
            url = url.rstrip("/").removesuffix("/v1")
            self._workers.setdefault(url, WorkerState(url=url, source="config"))
        await self.sync_store()
        await self.probe_all()
        self._task = asyncio.create_task(self._health_loop(), name="worker-health")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval_s)
            await self.sync_store()
            await self.probe_all()

    # --- selection ------------------------------------------------------------------

    def models(self) -> list[str]:
        """Every model some healthy worker serves."""
        found: set[str] = set()
        for worker in self._workers.values():
            if worker.healthy:
                found |= worker.models
        return sorted(found)

    def knows_model(self, model: str) -> bool:
        return any(model in w.models for w in self._workers.values())

    def choose(
        self, model: str, *, exclude: Iterable[WorkerState] = (), affinity: str | None = None
    ) -> WorkerState:
        """The worker for the next request to ``model``.

        With an ``affinity`` key (a static prefix) and prefix affinity on: the key's
        worker on a consistent-hash ring, unless that would overload it (bounded loads).
        Otherwise: the healthy worker with the fewest requests in flight.
        """
        excluded = set(map(id, exclude))
        candidates = [
            w for w in self._workers.values()
            if w.healthy and model in w.models and id(w) not in excluded
        ]
        if not candidates:
            if not self.knows_model(model):
                raise ModelNotFound(f"The model '{model}' does not exist", param="model")
            raise UpstreamUnavailable(f"no healthy worker serves model '{model}'")
        if affinity is not None and self.affinity_load_factor and len(candidates) > 1:
            best = pick_bounded(self._ring(candidates), affinity, candidates,
                                self.affinity_load_factor)
        else:
            best = min(candidates, key=lambda w: (w.outstanding, w._order))
        best._order = next(self._turn)
        return best

    def _ring(self, candidates: list[WorkerState]) -> HashRing:
        urls = tuple(sorted(w.url for w in candidates))
        ring = self._rings.get(urls)
        if ring is None:
            if len(self._rings) > 64:
                self._rings.clear()
            ring = self._rings[urls] = HashRing(urls)
        return ring

    @contextmanager
    def lease(self, worker: WorkerState) -> Iterator[WorkerState]:
        """Count a request as in flight on ``worker`` for as long as it runs."""
        worker.outstanding += 1
        try:
            yield worker
        finally:
            worker.outstanding -= 1
            worker.served += 1
