"""The semantic cache: answer a question with the stored answer to the same question
asked in other words, when that is as safe as an exact hit.

Safety comes from two places. Scope: an entry is only ever compared with questions of
the same scope, ``(namespace, context hash)``, where the context hash (computed by the
gateway stage) covers the whole request except the text of the last user message:
model, sampling parameters, system prompt, earlier turns, tools. Verification, the
second stage: the nearest stored questions of the scope are judged by the verifier,
which accepts only above a threshold calibrated on data for a target precision. The
default, ``CrossEncoderVerifier``, refuses by rule what cosine similarity misses (a
different number, negation or entity) and lets a cross-encoder that reads both
questions together score the rest; ``SemanticVerifier`` is the earlier feature model.

Use::

    cache = SemanticCache()                          # loads the encoder and the verifier
    match = cache.lookup(scope, last_user_message)   # SemanticMatch | None
    cache.add(scope, exact_key_digest, last_user_message)   # from a worker thread
    rows = cache.snapshot(); cache.load(rows)        # persistence: see SemanticRow

Thread safety: every method may be called from any thread. The index serialises its
mutations and scans with one lock (a scan is milliseconds); embedding and verification
run outside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from services.caching.semantic.index import IndexStats, Neighbor, Scope, VectorIndex
from services.caching.semantic.verifier import SemanticVerifier

if TYPE_CHECKING:
    from services.caching.semantic.cross_encoder import CrossEncoderVerifier
    from services.embeddings.batcher import EmbeddingBatcher

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
DEFAULT_SEARCH_K = 4
VerifierKind = Literal["cross-encoder", "features"]
VERIFIER_KINDS: tuple[VerifierKind, ...] = ("cross-encoder", "features")

__all__ = [
    "EMBEDDING_MODEL",
    "Encoder",
    "IndexStats",
    "Neighbor",
    "Scope",
    "SemanticCache",
    "SemanticMatch",
    "SemanticRow",
    "SemanticVerifier",
    "VERIFIER_KINDS",
    "VectorIndex",
    "VerifierKind",
    "load_verifier",
]


class Encoder(Protocol):
    dimension: int

    def encode_one(self, text: str) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class SemanticMatch:
    """The best stored question for a lookup; ``accepted`` says whether it may be served."""

    digest: str          # the exact-cache key digest of the stored entry
    text: str            # the stored question (last user message)
    cosine: float
    probability: float   # the verifier's P(same question)
    accepted: bool


@dataclass(frozen=True, slots=True)
class SemanticRow:
    """One persisted entry: what a store table row must hold to rebuild the index.

    ``embedding`` is the float32 little-endian vector (1,536 bytes for 384 dimensions):
    re-embedding 100k texts on start would take half an hour on two cores.
    ``embedding_model`` lets a replica skip rows written by another model.
    """

    namespace: str
    context_hash: str
    digest: str
    text: str
    embedding: bytes
    created_at: float
    expires_at: float | None
    embedding_model: str = EMBEDDING_MODEL

    @property
    def scope(self) -> Scope:
        return (self.namespace, self.context_hash)

    def vector(self) -> np.ndarray:
        return np.frombuffer(self.embedding, dtype="<f4").astype(np.float32)


def load_verifier(kind: VerifierKind = "cross-encoder", *, threshold: float | None = None
                  ) -> SemanticVerifier | CrossEncoderVerifier:
    """The shipped verifier of ``kind``: the cross-encoder (two-stage lookup, the
    default) or the feature model over the bi-encoder's cosine (no second model)."""
    if kind == "cross-encoder":
        from services.caching.semantic.cross_encoder import CrossEncoderVerifier

        return CrossEncoderVerifier.load(threshold=threshold)
    if kind == "features":
        return SemanticVerifier.load(threshold=threshold)
    raise ValueError(f"unknown semantic verifier {kind!r}; expected one of {VERIFIER_KINDS}")


class SemanticCache:
    """Scoped vector index + verifier + expiry; the gateway stage's one entry point."""

    def __init__(self, *, encoder: Encoder | None = None,
                 verifier: SemanticVerifier | CrossEncoderVerifier | None = None,
                 index: VectorIndex | None = None, min_probability: float | None = None,
                 search_k: int | None = None, verifier_kind: VerifierKind = "cross-encoder"
                 ) -> None:
        if encoder is None:
            from services.embeddings import default_encoder

            encoder = default_encoder()
        self._encoder = encoder
        if verifier is None:
            verifier = load_verifier(verifier_kind, threshold=min_probability)
        elif min_probability is not None:
            verifier = verifier.with_threshold(min_probability)
        self.verifier = verifier
        self._batcher: EmbeddingBatcher | None = None
        self._batcher_lock = threading.Lock()
        # not `index or ...`: an empty index is falsy (it has a length)
        self.index = index if index is not None else VectorIndex(encoder.dimension)
        self.search_k = search_k or int(self.verifier.spec.get("search_k", DEFAULT_SEARCH_K))
        self._meta: dict[str, tuple[float, float | None]] = {}  # digest -> created, expires
        self._lock = threading.Lock()

    @property
    def threshold(self) -> float:
        return self.verifier.threshold

    def embed(self, text: str) -> np.ndarray:
        return self._encoder.encode_one(text)

    async def embed_batched(self, text: str) -> np.ndarray:
        """``embed`` for the event loop: joins the texts other requests are waiting to
        embed and runs them in one pass on the batcher's thread (see ``EmbeddingBatcher``)."""
        with self._batcher_lock:
            if self._batcher is None:
                from services.embeddings.batcher import EmbeddingBatcher

                encode = getattr(self._encoder, "encode", None)
                self._batcher = EmbeddingBatcher(
                    encode or (lambda texts: np.stack([self.embed(t) for t in texts])))
            batcher = self._batcher
        return await batcher.embed(text)

    def serves(self, text: str) -> bool:
        """Whether ``text`` can be looked up or stored at all: a question too long for
        the verifier's window skips the semantic stage (never embedded, never indexed)."""
        serves = getattr(self.verifier, "serves", None)
        return True if serves is None else bool(serves(text))

    def close(self) -> None:
        """Stop the embedding batcher's thread (it restarts on the next use)."""
        with self._batcher_lock:
            batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.close()

    # --- lookups ------------------------------------------------------------------------

    def lookup(self, scope: Scope, text: str, *, embedding: np.ndarray | None = None,
               now: float | None = None, min_probability: float | None = None
               ) -> SemanticMatch | None:
        """The stored entry that answers ``text`` in ``scope``, or None.

        Pass ``embedding`` when the caller has it already; otherwise the text is embedded
        here (the larger part of the cost: ~10-30 ms on this machine's CPU).
        ``min_probability`` replaces the cache's threshold for this lookup (a tenant's
        own trade of precision for recall).
        """
        match = self.score(scope, text, embedding=embedding, now=now,
                           min_probability=min_probability)
        return match if match is not None and match.accepted else None

    def score(self, scope: Scope, text: str, *, embedding: np.ndarray | None = None,
              now: float | None = None, min_probability: float | None = None
              ) -> SemanticMatch | None:
        """Like ``lookup`` but returns the best candidate even when it is refused (for
        benchmarks, calibration and logging why a lookup missed)."""
        vector = self.embed(text) if embedding is None else embedding
        neighbors = self.index.search(scope, vector, k=self.search_k)
        neighbors = self._live(neighbors, time.time() if now is None else now)
        best = self.verifier.best(text, neighbors)
        if best is None:
            return None
        neighbor, probability = best
        threshold = self.verifier.threshold if min_probability is None else min_probability
        return SemanticMatch(neighbor.digest, neighbor.text, neighbor.cosine, probability,
                             probability >= threshold)

    def _live(self, neighbors: list[Neighbor], now: float) -> list[Neighbor]:
        live = []
        for neighbor in neighbors:
            meta = self._meta.get(neighbor.digest)
            expires = meta[1] if meta else None
            if expires is not None and expires <= now:
                self.remove(neighbor.digest)
            else:
                live.append(neighbor)
        return live

    # --- writes -------------------------------------------------------------------------

    def add(self, scope: Scope, digest: str, text: str, *, embedding: np.ndarray | None = None,
            ttl_s: float | None = None, now: float | None = None) -> SemanticRow:
        """Index one entry and return its row for the store. Embeds unless ``embedding``
        is given; call it off the event loop (``asyncio.to_thread``)."""
        vector = np.asarray(self.embed(text) if embedding is None else embedding,
                            dtype=np.float32)
        created = time.time() if now is None else now
        expires = created + ttl_s if ttl_s is not None else None
        self.index.add(scope, digest, text, vector)
        with self._lock:
            self._meta[digest] = (created, expires)
        return SemanticRow(scope[0], scope[1], digest, text, vector.astype("<f4").tobytes(),
                           created, expires)

    def remove(self, digest: str) -> bool:
        """Forget an entry (its exact-cache entry is gone, or it was purged)."""
        with self._lock:
            self._meta.pop(digest, None)
        return self.index.remove(digest)

    def purge_expired(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._lock:
            expired = [d for d, (_, e) in self._meta.items() if e is not None and e <= now]
        for digest in expired:
            self.remove(digest)
        return len(expired)

    # --- persistence --------------------------------------------------------------------

    def snapshot(self) -> list[SemanticRow]:
        with self._lock:
            meta = dict(self._meta)
        rows = []
        for scope, digest, text, vector in self.index.entries():
            created, expires = meta.get(digest, (0.0, None))
            rows.append(SemanticRow(scope[0], scope[1], digest, text,
                                    vector.astype("<f4").tobytes(), created, expires))
        return rows

    def load(self, rows: Iterable[SemanticRow], *, now: float | None = None) -> int:
        """Rebuild from stored rows (on start, or to follow other replicas' writes);
        skips expired rows and rows of another embedding model. Returns rows loaded."""
        now = time.time() if now is None else now
        loaded = 0
        for row in rows:
            if row.embedding_model != EMBEDDING_MODEL or (
                    row.expires_at is not None and row.expires_at <= now):
                continue
            self.index.add(row.scope, row.digest, row.text, row.vector())
            with self._lock:
                self._meta[row.digest] = (row.created_at, row.expires_at)
            loaded += 1
        return loaded

    def stats(self) -> IndexStats:
        return self.index.stats()

    def __len__(self) -> int:
        return len(self.index)
