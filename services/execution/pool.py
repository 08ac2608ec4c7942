"""The set of upstream workers, their health, and which one takes the next request.

Workers come from settings, from run-time registration (admin API, ``optengine
worker``) and from the shared ``workers`` table, so every gateway replica sees the same
set. A background loop probes each worker's ``/v1/models``: that one call both checks
health and discovers which models it serves; a worker is ejected after
``probe_failures_to_eject`` failed probes in a row (one lost probe on a busy machine is
not a dead worker). Between probes, each worker's circuit breaker reacts to the
requests themselves.

``acquire`` hands out a ``Lease`` on the worker for one request, all in memory: among
the eligible workers (healthy, serving the model, not draining, breaker letting
requests through) with a free slot under ``max_in_flight``, the prefix-affinity worker
(consistent hashing with bounded loads) when the request has a shared prefix, else the
one the scheduling policy prefers. When every eligible worker is full the request waits
in the admission queue (``services.execution.admission``) until a lease is released.

``on_join`` is called with a worker each time it becomes healthy (first probe after
start-up or registration, or back after an ejection): its caches are cold then, which is
when prefix warming (``services.execution.warming``) fills them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from services.background import cancel_and_wait
from services.errors import (
    EngineError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    UpstreamUnavailable,
)
from services.execution.admission import (
    DEFAULT_PRIORITY,
    AdmissionMetrics,
    PriorityClass,
    Waiter,
    WaitQueue,
)
from services.execution.affinity import HashRing, pick_bounded
from services.execution.breaker import CircuitBreaker
from services.execution.client import UpstreamClient
from services.execution.scheduling import SchedulingPolicy, pick_least_loaded

log = logging.getLogger(__name__)


@dataclass(eq=False)
class WorkerState:
    url: str
    source: str = "config"
    models: frozenset[str] = frozenset()
    healthy: bool = False
    draining: bool = False
    outstanding: int = 0
    outstanding_tokens: int = 0
    served: int = 0
    failed_probes: int = 0
    last_error: str | None = None
    last_probe_at: float | None = None
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    order: int = field(default=0, repr=False)  # when last chosen: ties go to the oldest

    def summary(self) -> dict[str, object]:
        """What the admin and readiness endpoints show about the worker."""
        return {
            "url": self.url, "source": self.source, "healthy": self.healthy,
            "draining": self.draining, "circuit": self.breaker.state,
            "models": sorted(self.models), "outstanding": self.outstanding,
            "outstanding_tokens": self.outstanding_tokens, "served": self.served,
            "last_error": self.last_error,
        }


@dataclass(eq=False)
class Lease:
    """One request's claim on a worker slot; ``release()`` it exactly when it ends.

    Report the outcome with ``succeeded()`` or ``failed()`` first: they drive the
    worker's circuit breaker. A lease released without a verdict (the client went
    away) counts for neither.
    """

    worker: WorkerState
    tokens: int
    _pool: WorkerPool = field(repr=False)
    _started_at: float = 0.0
    _verdict: bool = False
    _released: bool = False

    def succeeded(self) -> None:
        self._verdict = True
        self._pool.mark_succeeded(self.worker)

    def failed(self, reason: str) -> None:
        self._verdict = True
        self._pool.mark_failed(self.worker, reason)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self)


# A store sync returns the worker URLs registered in the shared table (with their
# source) and receives this replica's view of health to write back.
StoreSync = Callable[[list[WorkerState]], Awaitable[dict[str, str]]]


class WorkerPool:
    def __init__(
        self,
        client: UpstreamClient,
        *,
        health_interval_s: float = 5.0,
        probe_failures_to_eject: int = 3,
        store_sync: StoreSync | None = None,
        on_models: Callable[[frozenset[str]], object] | None = None,
        affinity_load_factor: float | None = 1.25,
        policy: SchedulingPolicy = "least_outstanding_tokens",
        max_in_flight: int = 64,
        queue_timeout_s: float = 30.0,
        breaker_threshold: int = 3,
        breaker_reset_s: float = 10.0,
        metrics: AdmissionMetrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if probe_failures_to_eject < 1:
            raise ValueError("probe_failures_to_eject must be >= 1")
        self._client = client
        self._workers: dict[str, WorkerState] = {}
        self._health_interval_s = health_interval_s
        self._probe_failures_to_eject = probe_failures_to_eject
        self._store_sync = store_sync
        self._on_models = on_models
        self.affinity_load_factor = affinity_load_factor
        self.policy = policy
        self.max_in_flight = max_in_flight  # 0 = no cap, no queue
        self.queue_timeout_s = queue_timeout_s
        self._breaker_threshold = breaker_threshold
        self._breaker_reset_s = breaker_reset_s
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._queue = WaitQueue(metrics)
        self._rings: dict[tuple[str, ...], HashRing] = {}
        self._turn = itertools.count(1)  # 0 is "never chosen": new workers go first
        self._idle_waiters: dict[str, list[asyncio.Future[None]]] = {}
        # url -> when this replica last added or removed it: a store read older than
        # that is stale for the url (it would undo a registration it started before)
        self._changed_at: dict[str, float] = {}
        self._mean_hold_s: float | None = None  # moving average of how long a lease is held
        self._task: asyncio.Task[None] | None = None
        self.on_join: Callable[[WorkerState], object] | None = None

    # --- membership -----------------------------------------------------------------

    @property
    def workers(self) -> list[WorkerState]:
        return list(self._workers.values())

    def get(self, url: str) -> WorkerState | None:
        return self._workers.get(_normalise(url))

    def _new_worker(self, url: str, source: str) -> WorkerState:
        breaker = CircuitBreaker(threshold=self._breaker_threshold,
                                 reset_after_s=self._breaker_reset_s)
        worker = self._workers[url] = WorkerState(url=url, source=source, breaker=breaker)
        self._changed_at[url] = time.monotonic()
        return worker

    async def register(self, url: str, *, source: str = "registered") -> WorkerState:
        """Add a worker (idempotent; ends a drain) and probe it at once so it can serve."""
        url = _normalise(url)
        worker = self._workers.get(url)
        if worker is None:
            worker = self._new_worker(url, source)
            log.info("worker %s added (%s)", url, source)
        worker.draining = False
        await self.probe(worker)
        return worker

    def deregister(self, url: str) -> bool:
        removed = self._workers.pop(_normalise(url), None)
        if removed:
            self._changed_at[removed.url] = time.monotonic()
            log.info("worker %s removed", removed.url)
        return removed is not None

    async def drain(self, url: str, *, timeout_s: float) -> WorkerState:
        """Send no new request to the worker and wait (up to ``timeout_s``) until its
        requests in flight have finished. ``register`` puts it back in service."""
        worker = self.get(url)
        if worker is None:
            raise InvalidRequest(f"no worker registered at {url}", param="url")
        if not worker.draining:
            log.info("worker %s draining (%d in flight)", worker.url, worker.outstanding)
        worker.draining = True
        if worker.outstanding:
            idle = asyncio.get_running_loop().create_future()
            self._idle_waiters.setdefault(worker.url, []).append(idle)
            try:
                await asyncio.wait_for(idle, timeout_s)
            except TimeoutError:
                log.warning("worker %s still has %d in flight after draining %.0f s",
                            worker.url, worker.outstanding, timeout_s)
        return worker

    # --- health ---------------------------------------------------------------------

    async def probe(self, worker: WorkerState) -> None:
        try:
            models = await self._client.list_models(worker.url)
        except EngineError as exc:
            worker.failed_probes += 1
            worker.last_error = exc.message
            if worker.healthy and worker.failed_probes >= self._probe_failures_to_eject:
                log.warning("worker %s ejected after %d failed probes: %s",
                            worker.url, worker.failed_probes, exc.message)
                worker.healthy = False
        else:
            found = frozenset(models)
            if found != worker.models and self._on_models is not None:
                self._on_models(found)
            worker.models = found
            joined = not worker.healthy
            if joined:
                log.info("worker %s healthy, serving %s", worker.url, sorted(models))
            worker.healthy = True
            worker.failed_probes = 0
            worker.last_error = None
            if joined and self.on_join is not None:
                self.on_join(worker)
        worker.last_probe_at = time.monotonic()

    def mark_succeeded(self, worker: WorkerState) -> None:
        if worker.breaker.state != "closed":
            log.info("worker %s circuit closed", worker.url)
        worker.breaker.record_success()

    def mark_failed(self, worker: WorkerState, reason: str) -> None:
        """Count a failed request toward the worker's circuit breaker."""
        was_open = worker.breaker.state != "closed"
        worker.breaker.record_failure()
        worker.last_error = reason
        if not was_open and worker.breaker.state == "open":
            log.warning("worker %s circuit open after %d failures: %s",
                        worker.url, worker.breaker.failures, reason)

    async def probe_all(self) -> None:
        if self._workers:
            await asyncio.gather(*(self.probe(w) for w in list(self._workers.values())))
        self._admit_waiters()  # a worker may be back, or its breaker half-open

    async def sync_store(self) -> None:
        """Follow the store's registry: add the workers other replicas registered, drop
        the ones they removed; this replica's own changes made while the store was being
        read win over that (older) read."""
        if self._store_sync is None:
            return
        read_at = time.monotonic()
        try:
            registered = await self._store_sync(self.workers)
        except Exception:  # the store being down must not stop health probing
            log.warning("worker registry sync failed", exc_info=True)
            return
        changed = {url for url, at in self._changed_at.items() if at >= read_at}
        for url, source in registered.items():
            if url not in self._workers and url not in changed:
                self._new_worker(url, source)
        for worker in self.workers:
            if (worker.source != "config" and worker.url not in registered
                    and worker.url not in changed):
                self.deregister(worker.url)
        self._changed_at = {url: at for url, at in self._changed_at.items() if at >= read_at}

    async def start(self, initial: Iterable[str] = ()) -> None:
        for url in map(_normalise, initial):
            if url not in self._workers:
                self._new_worker(url, "config")
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

    # --- selection and admission ----------------------------------------------------

    def models(self) -> list[str]:
        """Every model some healthy worker serves."""
        found: set[str] = set()
        for worker in self._workers.values():
            if worker.healthy:
                found |= worker.models
        return sorted(found)

    def knows_model(self, model: str) -> bool:
        return any(model in w.models for w in self._workers.values())

    def queue_depth(self) -> dict[str, int]:
        return self._queue.depth()

    async def acquire(
        self,
        model: str,
        *,
        tokens: int = 0,
        priority: PriorityClass = DEFAULT_PRIORITY,
        exclude: Iterable[WorkerState] = (),
        affinity: str | None = None,
        fail_fast: bool = True,
    ) -> Lease:
        """A lease on the worker for the next request to ``model``.

        Raises ``ModelNotFound`` when no worker ever served the model,
        ``UpstreamUnavailable`` when none can take it now (down, draining, circuit
        open, or all in ``exclude``), ``Overloaded`` when all are at their cap for
        longer than the queue timeout, or at once when the queue ahead could not be
        served within it (unless ``fail_fast`` is off: a batch line, which nobody
        waits on, would rather wait the whole timeout).
        """
        excluded = frozenset(w.url for w in exclude)
        worker = self._choose(model, excluded, affinity)
        if worker is not None and not self._queue:
            return self._lease(worker, tokens)
        if fail_fast and self._expected_wait_s(model, priority) > self.queue_timeout_s:
            raise self._refusal(model, priority, "queue_full",
                                f"{self._queue.ahead_of(priority, model)} requests are "
                                f"waiting ahead, more than they can serve in "
                                f"{self.queue_timeout_s:g} s")
        waiter = Waiter(priority, model, tokens, excluded, affinity, time.monotonic())
        self._queue.push(waiter)
        self._admit_waiters()  # whoever is first in line takes the free slot
        try:
            done, _ = await asyncio.wait((waiter.future,), timeout=self.queue_timeout_s)
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        if not done:
            self._abandon(waiter)
            raise self._refusal(model, priority, "queue_timeout",
                                f"waited {self.queue_timeout_s:g} s")
        lease: Lease = waiter.future.result()
        return lease

    def _expected_wait_s(self, model: str, priority: PriorityClass) -> float:
        """How long a request joining the queue now would wait for a slot: the waiters
        served before it, at the rate the model's workers free slots (their slots over
        the mean time a lease is held)."""
        slots = len(self._serving(model)) * self.max_in_flight
        if not slots or self._mean_hold_s is None:
            return 0.0  # nothing to estimate from: wait, and let the timeout decide
        return (self._queue.ahead_of(priority, model) + 1) * self._mean_hold_s / slots

    def _refusal(self, model: str, priority: PriorityClass, reason: str, why: str
                 ) -> Overloaded:
        if self._metrics is not None:
            self._metrics.rejected.labels(priority, reason).inc()
        return Overloaded(
            f"every worker for '{model}' is at its limit of {self.max_in_flight} "
            f"requests; {why}",
            retry_after_s=max(1, math.ceil(self._mean_hold_s or 1.0)),
        )

    def _choose(self, model: str, excluded: frozenset[str], affinity: str | None
                ) -> WorkerState | None:
        """The worker for the request, or None when every eligible one is full."""
        eligible = [w for w in self._serving(model) if w.url not in excluded]
        if not eligible:
            if not self.knows_model(model):
                raise ModelNotFound(f"The model '{model}' does not exist", param="model")
            raise UpstreamUnavailable(f"no healthy worker can take model '{model}' now")
        free = [w for w in eligible if not self.max_in_flight or w.outstanding < self.max_in_flight]
        if not free:
            return None
        if affinity is not None and self.affinity_load_factor and len(free) > 1:
            return pick_bounded(self._ring(free), affinity, free, self.affinity_load_factor)
        return pick_least_loaded(free, self.policy, self._rng)

    def _serving(self, model: str) -> list[WorkerState]:
        """Workers that can take a request for ``model`` now (capacity aside)."""
        return [
            w for w in self._workers.values()
            if w.healthy and model in w.models and not w.draining and w.breaker.allows_request()
        ]

    def affinity_target(self, worker: WorkerState, model: str, affinity: str) -> bool:
        """Whether prefix affinity sends requests keyed ``affinity`` to ``worker`` while no
        worker is over its load bound (any worker may get them when affinity is off)."""
        serving = self._serving(model)
        if worker not in serving:
            return False
        if not self.affinity_load_factor or len(serving) == 1:
            return True
        return self._ring(serving).walk(affinity)[0] == worker.url

    def _ring(self, candidates: list[WorkerState]) -> HashRing:
        urls = tuple(sorted(w.url for w in candidates))
        ring = self._rings.get(urls)
        if ring is None:
            if len(self._rings) > 64:
                self._rings.clear()
            ring = self._rings[urls] = HashRing(urls)
        return ring

    def _lease(self, worker: WorkerState, tokens: int) -> Lease:
        worker.outstanding += 1
        worker.outstanding_tokens += tokens
        worker.order = next(self._turn)
        worker.breaker.on_dispatch()
        return Lease(worker, tokens, self, _started_at=time.monotonic())

    def _release(self, lease: Lease) -> None:
        worker = lease.worker
        worker.outstanding -= 1
        worker.outstanding_tokens -= lease.tokens
        worker.served += 1
        if not lease._verdict:
            worker.breaker.on_abandoned()
        held = time.monotonic() - lease._started_at
        self._mean_hold_s = held if self._mean_hold_s is None else (
            self._mean_hold_s + 0.05 * (held - self._mean_hold_s))
        if worker.outstanding == 0:
            for idle in self._idle_waiters.pop(worker.url, []):
                if not idle.done():
                    idle.set_result(None)
        self._admit_waiters()

    def _admit_waiters(self) -> None:
        """Give free slots to waiting requests, in priority order."""
        for waiter in self._queue:
            if self._every_worker_busy():
                break  # the rest keep waiting; no need to look at each of them
            try:
                worker = self._choose(waiter.model, waiter.exclude, waiter.affinity)
            except EngineError as exc:  # nobody can serve it any more: fail it now
                self._queue.remove(waiter)
                waiter.future.set_exception(exc)
                continue
            if worker is None:
                continue
            self._queue.remove(waiter)
            waiter.future.set_result(self._lease(worker, waiter.tokens))
            if self._metrics is not None:
                self._metrics.wait_seconds.labels(waiter.priority).observe(
                    time.monotonic() - waiter.enqueued_at
                )

    def _every_worker_busy(self) -> bool:
        """True when every worker could serve but is at its cap: then no waiter can be
        placed now, nor needs failing (a worker gone or out of use could mean either)."""
        return bool(self.max_in_flight and self._workers) and all(
            w.outstanding >= self.max_in_flight and w.healthy and not w.draining
            and w.breaker.allows_request()
            for w in self._workers.values()
        )

    def _abandon(self, waiter: Waiter) -> None:
        """A waiter gave up (timeout or cancel): leave the queue, or return its lease."""
        if self._queue.remove(waiter):
            waiter.future.cancel()
        elif not waiter.future.cancelled() and waiter.future.exception() is None:
            waiter.future.result().release()


def _normalise(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1")
