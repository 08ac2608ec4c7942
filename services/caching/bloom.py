"""A Bloom filter over cache digests, so an L3 miss costs no database round trip.

Most lookups that reach L3 are misses; asking the store each time would put a database
round trip on the hot path of every new request. The filter answers "certainly not
there" from memory; only a "maybe" goes to the store. Cache digests are already uniform
SHA-256 hex, so the k bit positions are slices of the digest itself, no extra hashing.
A false positive costs one store lookup; there are no false negatives for digests added.
Digests arrive in batches (a refresh reads thousands, a write-behind batch dozens), so
``add_many`` sets them with a few array operations instead of a Python loop per bit.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable

import numpy as np

_WORDS = struct.Struct(">8I")  # a SHA-256 digest as eight big-endian 32-bit words


class DigestBloom:
    def __init__(self, capacity: int, *, false_positive_rate: float = 0.01) -> None:
        capacity = max(capacity, 1024)
        bits = math.ceil(-capacity * math.log(false_positive_rate) / math.log(2) ** 2)
        self.hashes = max(1, min(7, round(bits / capacity * math.log(2))))
        self.size = bits
        self._bits = np.zeros((bits + 7) // 8, dtype=np.uint8)
        self._bytes = memoryview(self._bits)  # same memory; a lookup reads plain ints
        self.count = 0

    def _positions(self, digest: str) -> list[int]:
        # up to 7 disjoint 8-hex-digit (32-bit) slices of the 64-digit digest
        size = self.size
        return [word % size for word in _WORDS.unpack(bytes.fromhex(digest))[: self.hashes]]

    def add(self, digest: str) -> bool:
        """Add a digest; True when it set a new bit (see ``add_many``)."""
        return self.add_many([digest]) == 1

    def add_many(self, digests: Iterable[str]) -> int:
        """Add digests; returns how many set a new bit, and ``count`` grows by that much
        only, so adding one again (every refresh re-reads a margin of recent rows) does
        not fill the filter. Each digest is judged against the filter as it was before
        the batch."""
        unique = list(dict.fromkeys(digests))
        if not unique:
            return 0
        # the same 8-hex-digit slices as ``_positions``, as big-endian 32-bit words
        words = np.frombuffer(bytes.fromhex("".join(unique)), dtype=">u4").reshape(-1, 8)
        positions = words[:, : self.hashes].astype(np.int64) % self.size
        index, masks = positions >> 3, (1 << (positions & 7)).astype(np.uint8)
        new = int(((self._bits[index] & masks) == 0).any(axis=1).sum())
        np.bitwise_or.at(self._bits, index.ravel(), masks.ravel())
        self.count += new
        return new

    def __contains__(self, digest: str) -> bool:
        bits = self._bytes
        for pos in self._positions(digest):
            if not bits[pos >> 3] & (1 << (pos & 7)):  # most misses stop at the first bit
                return False
        return True

    @property
    def nbytes(self) -> int:
        return int(self._bits.nbytes)
