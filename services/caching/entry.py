"""What a cache holds: one finished response in its non-streaming OpenAI form.

Streamed answers are assembled into that form when they end, so one entry serves both
kinds of request: a plain JSON body, or a replayed SSE stream (see ``replay``).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(slots=True)
class CachedResponse:
    endpoint: str
    body: dict[str, Any]
    created_at: float = field(default_factory=time.time)

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.created_at)

    def usage(self) -> dict[str, Any]:
        return self.body.get("usage") or {}

    def to_bytes(self) -> bytes:
        return orjson.dumps({"e": self.endpoint, "b": self.body, "t": self.created_at})

    @classmethod
    def from_bytes(cls, data: bytes) -> CachedResponse:
        raw = orjson.loads(data)
        return cls(endpoint=raw["e"], body=raw["b"], created_at=raw["t"])

    def compressed(self) -> bytes:
        return zlib.compress(self.to_bytes(), 6)

    @classmethod
    def decompressed(cls, data: bytes) -> CachedResponse:
        return cls.from_bytes(zlib.decompress(data))
