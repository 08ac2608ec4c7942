"""L1: an in-process LRU bounded by bytes, with a TTL and a per-entry size cap.

Per replica by design (DESIGN: L1 and single flight are per replica). An entry is kept
as one tuple of immutable values (the body's JSON bytes, endpoint, times, size): the
garbage collector stops tracking such a tuple at its first pass, so a full L1 adds
nothing to the collections a busy gateway runs every second (a body kept as a dict is
a dozen tracked objects). A hit builds the entry around those bytes, and answering it
parses them once. An entry's size is the size of its body's JSON.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

from services.caching.cache import TierWrite
from services.caching.entry import CachedResponse
from services.caching.keys import CacheKey

# (body JSON, endpoint, created_at, expires_at, size): only untracked values
_Slot = tuple[bytes, str, float, float, int]


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
        body_json, endpoint, created_at, expires_at, _ = slot
        if expires_at <= time.monotonic():
            self._drop(k)
            return None
        self._slots.move_to_end(k)
        return CachedResponse.from_json(endpoint, body_json, created_at)

    async def set(self, key: CacheKey, entry: CachedResponse, ttl_s: float | None = None) -> bool:
        body_json = entry.body_json
        size = len(body_json)
        if size > self.max_entry_bytes or size > self.max_bytes:
            return False
        k = str(key)
        if k in self._slots:
            self._drop(k)
        ttl = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
        self._slots[k] = (body_json, entry.endpoint, entry.created_at,
                          time.monotonic() + ttl, size)
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
            self.bytes -= slot[4]
