"""A per-worker circuit breaker.

Health probes run every few seconds; a worker that starts failing requests in between
would keep receiving (and failing) traffic until the next probe. The breaker reacts to
the requests themselves: ``threshold`` consecutive failures open it (the worker gets no
new requests); after ``reset_after_s`` it lets exactly one probe request through
(half-open); that request's success closes it, its failure opens it for another period.

    closed --threshold failures--> open --reset_after_s--> half-open --success--> closed
                                     ^                         |
                                     '--------failure----------'
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self,
        *,
        threshold: int = 3,
        reset_after_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {threshold}")
        self.threshold = threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self.failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._probing or self._clock() - self._opened_at >= self.reset_after_s:
            return "half_open"
        return "open"

    def allows_request(self) -> bool:
        """Whether a new request may go to the worker now."""
        state = self.state
        return state == "closed" or (state == "half_open" and not self._probing)

    def on_dispatch(self) -> None:
        """A request was sent; when half-open it is the one probe allowed through."""
        if self._opened_at is not None:
            self._probing = True

    def on_abandoned(self) -> None:
        """A request ended with no verdict (the client left): free the probe slot."""
        self._probing = False

    def record_success(self) -> None:
        self.failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self.failures += 1
        if self._probing or self.failures >= self.threshold:
            self._opened_at = self._clock()
        self._probing = False
