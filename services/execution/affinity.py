"""Consistent hashing with bounded loads, for prefix affinity.

Requests that share a long prefix (system prompt, tools, documents, earlier turns) are
sent to the same worker, whose vLLM prefix cache then skips their prefill. Plain
consistent hashing would let one hot prefix swamp its worker; with bounded loads
(Mirrokni, Thorup and Zadimoghaddam, 2018) a worker already carrying more than
``load_factor`` times the mean load is passed over for the next one on the ring, so no
worker exceeds that bound while most requests still land where their prefix is cached.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence
from typing import Protocol


class Loaded(Protocol):
    url: str
    outstanding: int


def _point(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, urls: Sequence[str], *, vnodes: int = 64) -> None:
        points = sorted((_point(f"{url}#{i}"), url) for url in urls for i in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._urls = [u for _, u in points]

    def walk(self, key: str) -> list[str]:
        """Distinct workers in ring order, starting at the key's position."""
        start = bisect.bisect(self._hashes, _point(key)) % len(self._hashes)
        seen: list[str] = []
        for i in range(len(self._urls)):
            url = self._urls[(start + i) % len(self._urls)]
            if url not in seen:
                seen.append(url)
        return seen


def pick_bounded(ring: HashRing, key: str, workers: Sequence[Loaded], load_factor: float
                 ) -> Loaded:
    """The first worker on the ring from ``key`` whose load stays within the bound."""
    by_url = {w.url: w for w in workers}
    total = sum(w.outstanding for w in workers) + 1  # counting the request being placed
    capacity = math.ceil(load_factor * total / len(workers))
    for url in ring.walk(key):
        worker = by_url.get(url)
        if worker is not None and worker.outstanding < capacity:
            return worker
    return min(workers, key=lambda w: w.outstanding)  # unreachable: capacity >= mean + 1
