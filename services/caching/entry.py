"""What a cache holds: one finished response in its non-streaming OpenAI form.

Streamed answers are assembled into that form when they end, so one entry serves both
kinds of request: a plain JSON body, or a replayed SSE stream (see ``replay``).

An entry holds its body as a dict, as JSON bytes, or both, and makes the other form on
first use: a miss keeps the upstream's bytes as they came (``from_json``), so storing it
parses nothing and serialises nothing but the small envelope around them; a hit parses
them once when it answers.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import orjson


class CachedResponse:
    __slots__ = ("endpoint", "created_at", "_body", "_json")

    def __init__(self, endpoint: str, body: dict[str, Any], created_at: float | None = None
                 ) -> None:
        self.endpoint = endpoint
        self.created_at = time.time() if created_at is None else created_at
        self._body: dict[str, Any] | None = body
        self._json: bytes | None = None

    @classmethod
    def from_json(cls, endpoint: str, body_json: bytes, created_at: float | None = None
                  ) -> CachedResponse:
        """An entry for a body still in its JSON form (a JSON object, as an upstream
        answered it); it is parsed only when read."""
        entry = cls.__new__(cls)
        entry.endpoint = endpoint
        entry.created_at = time.time() if created_at is None else created_at
        entry._body = None
        entry._json = body_json
        return entry

    @property
    def body(self) -> dict[str, Any]:
        if self._body is None:
            assert self._json is not None
            body = orjson.loads(self._json)
            if not isinstance(body, dict):
                raise ValueError(f"a cached body must be a JSON object, not {type(body).__name__}")
            self._body = body
        return self._body

    @property
    def body_json(self) -> bytes:
        if self._json is None:
            self._json = orjson.dumps(self._body)
        return self._json

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.created_at)

    def usage(self) -> dict[str, Any]:
        return self.body.get("usage") or {}

    def to_bytes(self) -> bytes:
        """``{"e": endpoint, "t": created_at, "b": body}`` as JSON, the body's bytes
        spliced in as they are."""
        head = orjson.dumps({"e": self.endpoint, "t": self.created_at})
        return b"".join((head[:-1], b',"b":', self.body_json, b"}"))

    @classmethod
    def from_bytes(cls, data: bytes) -> CachedResponse:
        raw = orjson.loads(data)
        return cls(endpoint=raw["e"], body=raw["b"], created_at=raw["t"])

    def compressed(self) -> bytes:
        return zlib.compress(self.to_bytes(), 6)

    @classmethod
    def decompressed(cls, data: bytes) -> CachedResponse:
        return cls.from_bytes(zlib.decompress(data))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CachedResponse):
            return NotImplemented
        return (self.endpoint, self.created_at, self.body) == (
            other.endpoint, other.created_at, other.body)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        return (f"CachedResponse(endpoint={self.endpoint!r}, body={self.body!r}, "
                f"created_at={self.created_at!r})")
