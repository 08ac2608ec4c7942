"""Admission control: who waits for a worker slot, in what order, and for how long.

Each worker takes at most ``max_in_flight`` requests at once (its batch size: beyond
it, requests only queue inside vLLM where nobody can see or order them). Requests over
the cap wait here instead, highest priority class first and in arrival order within a
class; one that waits longer than the queue timeout is refused with 503 ``overloaded``
and a ``Retry-After``, so a client under overload gets a quick, actionable answer
rather than a hang. One that could not be served within the timeout even if it joined
the queue (the waiters ahead of it, at the rate the workers free slots, would take
longer) is refused at once instead of after the timeout: under sustained overload the
refused learn it in milliseconds, not seconds. Queue depth, wait time and refusals
(by reason: ``queue_full`` at once, ``queue_timeout`` after waiting) are exported:
they are the autoscaler's signals.

A tenant's class comes from settings; a request may ask for a *lower* class with the
``X-Priority`` header (a batch job yielding to interactive traffic), never a higher one.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.errors import InvalidRequest, clipped

PriorityClass = Literal["high", "normal", "low"]
PRIORITY_CLASSES: tuple[PriorityClass, ...] = ("high", "normal", "low")  # first = served first
DEFAULT_PRIORITY: PriorityClass = "normal"


def request_priority(tenant_class: PriorityClass, header: str | None) -> PriorityClass:
    """The class a request waits in: its tenant's, or a lower one it asked for."""
    if header is None:
        return tenant_class
    asked = header.strip().lower()
    if asked not in PRIORITY_CLASSES:
        raise InvalidRequest(
            f"X-Priority must be one of {', '.join(PRIORITY_CLASSES)}; got {clipped(header)}",
            param="X-Priority",
        )
    rank = max(PRIORITY_CLASSES.index(tenant_class), PRIORITY_CLASSES.index(asked))  # type: ignore[arg-type]
    return PRIORITY_CLASSES[rank]


class AdmissionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_depth = Gauge(
            "optengine_admission_queue_depth", "Requests waiting for a worker slot",
            ["priority"], registry=registry,
        )
        self.wait_seconds = Histogram(
            "optengine_admission_wait_seconds", "Time admitted requests waited for a slot",
            ["priority"], registry=registry,
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.rejected = Counter(
            "optengine_admission_rejected", "Requests refused by admission control",
            ["priority", "reason"], registry=registry,
        )


@dataclass(eq=False)
class Waiter:
    """One request waiting for a slot; its future receives the lease (or an error)."""

    priority: PriorityClass
    model: str
    tokens: int
    exclude: frozenset[str]
    affinity: str | None
    enqueued_at: float
    future: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop()
                                        .create_future())
    sort_key: tuple[int, int] = (0, 0)


class WaitQueue:
    """Waiters in service order: priority class, then arrival."""

    def __init__(self, metrics: AdmissionMetrics | None = None) -> None:
        self._waiters: list[Waiter] = []
        self._arrivals = itertools.count()
        self._metrics = metrics
        self._counts: dict[tuple[str, PriorityClass], int] = {}  # waiters per (model, class)

    def __len__(self) -> int:
        return len(self._waiters)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(list(self._waiters))  # a copy: callers remove while iterating

    def push(self, waiter: Waiter) -> None:
        waiter.sort_key = (PRIORITY_CLASSES.index(waiter.priority), next(self._arrivals))
        bisect.insort(self._waiters, waiter, key=lambda w: w.sort_key)
        key = (waiter.model, waiter.priority)
        self._counts[key] = self._counts.get(key, 0) + 1
        if self._metrics is not None:
            self._metrics.queue_depth.labels(waiter.priority).inc()

    def remove(self, waiter: Waiter) -> bool:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return False
        key = (waiter.model, waiter.priority)
        self._counts[key] -= 1
        if not self._counts[key]:
            del self._counts[key]
        if self._metrics is not None:
            self._metrics.queue_depth.labels(waiter.priority).dec()
        return True

    def ahead_of(self, priority: PriorityClass, model: str) -> int:
        """Waiters for ``model`` that a new one of class ``priority`` would wait behind."""
        rank = PRIORITY_CLASSES.index(priority)
        return sum(self._counts.get((model, cls), 0) for cls in PRIORITY_CLASSES[:rank + 1])

    def depth(self) -> dict[str, int]:
        counts = dict.fromkeys(PRIORITY_CLASSES, 0)
        for waiter in self._waiters:
            counts[waiter.priority] += 1
        return counts
