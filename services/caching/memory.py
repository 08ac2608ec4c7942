"""L1: an in-process LRU bounded by bytes, with a TTL and a per-entry size cap.

Per replica by design (DESIGN: L1 and single flight are per replica). Entries are kept
as Python objects, so a hit costs a dict lookup and no decoding; their size is counted
as the size of their serialised form.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from services.caching.cache import TierWrite
from services.caching.entry import CachedResponse
from services.caching.keys import CacheKey


@dataclass(slots=True)
class _Slot:
    entry: CachedResponse
    size: int
    expires_at: float


class MemoryCache:
    name = "L1"

    def __init__(self, *, max_bytes: int, ttl_s: float, max_entry_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.max_entry_bytes = max_entry_bytes
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._slots)

    async def get(self, key: CacheKey) -> CachedResponse | None:
        k = str(key)
        slot = self._slots.get(k)
        if slot is None:
            return None
        if slot.expires_at <= time.monotonic():
            self._drop(k)
            return None
        self._slots.move_to_end(k)
        return slot.entry

    async def set(self, key: CacheKey, entry: CachedResponse, ttl_s: float | None = None) -> bool:
        size = len(entry.to_bytes())
        if size > self.max_entry_bytes or size > self.max_bytes:
            return False
        k = str(key)
        if k in self._slots:
            self._drop(k)
        ttl = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
        self._slots[k] = _Slot(entry, size, time.monotonic() + ttl)
        self.bytes += size
        while self.bytes > self.max_bytes:
            oldest = next(iter(self._slots))
            self._drop(oldest)
            self.evictions += 1
        return True

    async def set_many(self, items: Sequence[TierWrite]) -> int:
        return sum([await self.set(key, entry, ttl_s) for key, entry, ttl_s in items])

    async def delete(self, key: CacheKey) -> None:
        self._drop(str(key))

    def _drop(self, k: str) -> None:
        slot = self._slots.pop(k, None)
        if slot is not None:
            self.bytes -= slot.size
