"""The semantic cache: answer a question with the stored answer to the same question
asked in other words, when that is as safe as an exact hit.

Safety comes from two places. Scope: an entry is only ever compared with questions of
the same scope, ``(namespace, context hash)``, where the context hash (computed by the
gateway stage) covers the whole request except the text of the last user message:
model, sampling parameters, system prompt, earlier turns, tools. Verification: the
nearest stored questions of the scope are judged by the verifier, which accepts only
above a threshold calibrated on data for a target precision. ``CrossEncoderVerifier``
lets a cross-encoder that reads both questions together score them; ``SemanticVerifier``
is the feature model over the bi-encoder's cosine.

A lookup runs in three steps, cheapest first, and stops as soon as the answer is known:

1. candidates: the question's static vector (``embeddings.static``, distilled from
   all-MiniLM-L6-v2: microseconds) is searched in the scope's index, and the entries
   under ``static_floor`` are dropped;
2. rules: the same words in the same order are the same question (served); a number,
   a negation or an entity on one side only refuses a candidate (the verifier's
   ``admits``; the feature verifier judges the nearest only, so when the rules refuse
   the nearest it is a miss). A miss decided here costs no transformer pass;
3. verification: only for the candidates left, the verifier exactly as calibrated.
   The feature verifier reads MiniLM cosines: the question's and any candidate's MiniLM
   vector not yet known are computed in one pass (a candidate keeps its vector); so does
   the cross-encoder's combiner as shipped (``cross-encoder``). The ``cross-encoder-static``
   calibration combines with the static cosine instead (``needs_dense`` False), so its
   lookups run no MiniLM pass at all.

Storing an entry needs only its static vector (and keeps the MiniLM vector when its own
lookup computed one).

Use::

    cache = SemanticCache()                          # loads the encoders and the verifier
    match = cache.lookup(scope, last_user_message)   # SemanticMatch | None
    cache.add(scope, exact_key_digest, last_user_message)
    rows = cache.snapshot(); cache.load(rows)        # persistence: see SemanticRow

Thread safety: every method may be called from any thread. The index serialises its
mutations and scans with one lock; embedding and verification run outside it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from services.caching.semantic.features import same_words_key
from services.caching.semantic.index import IndexStats, Neighbor, Scope, VectorIndex
from services.caching.semantic.verifier import SemanticVerifier

if TYPE_CHECKING:
    from services.caching.semantic.cross_encoder import CrossEncoderVerifier
    from services.embeddings.batcher import EmbeddingBatcher

EMBEDDING_MODEL = "all-MiniLM-L6-v2"  # the verifier's (dense) encoder
DEFAULT_SEARCH_K = 4
# Static top-k searched per lookup, and the static cosine under which a candidate is
# dropped: chosen on the QQP training half so that (almost) every pair a verifier accepts
# passes (bench/semantic_cache.py --floor; docs/benchmarks.md, "Semantic cache").
CANDIDATE_K = 8
STATIC_FLOOR = 0.45
# Up to this many entries a scope is scanned exactly, above it through the index's PCA
# prefilter (an exact scan of 16,384 static rows took 1.7 ms here, the prefilter 0.33 ms);
# such a scope is searched on a worker thread rather than the event loop. 96 of the 256
# static dimensions: at 100,000 entries 64 found the exact top 4 for 86% of queries, 96
# for 99% (bench/semantic_cache.py --latency, index designs).
EXACT_SCAN_LIMIT = 4096
PREFILTER_DIMS = 96
VerifierKind = Literal["cross-encoder", "cross-encoder-static", "features"]
VERIFIER_KINDS: tuple[VerifierKind, ...] = ("cross-encoder", "cross-encoder-static", "features")

__all__ = [
    "EMBEDDING_MODEL",
    "Candidates",
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
    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_one(self, text: str) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class SemanticMatch:
    """The best stored question for a lookup; ``accepted`` says whether it may be served."""

    digest: str          # the exact-cache key digest of the stored entry
    text: str            # the stored question (last user message)
    cosine: float        # MiniLM cosine when it was computed, else the static one
    probability: float   # the verifier's P(same question); 0 when a rule refused it
    accepted: bool


@dataclass(slots=True)
class Candidates:
    """What the cheap steps of a lookup found: ``decided`` when no transformer pass is
    needed (``match`` then holds the answer, or None), else the ``admitted`` candidates
    (static cosine, best first) that the verifier must judge."""

    text: str
    vector: np.ndarray                    # the question's static vector
    admitted: list[Neighbor] = field(default_factory=list)
    match: SemanticMatch | None = None
    decided: bool = True
    pending: list[str] = field(default_factory=list)  # digests step 3 embeds, in order
    dense: np.ndarray | None = None       # the question's MiniLM vector, once computed


@dataclass(frozen=True, slots=True)
class SemanticRow:
    """One persisted entry: what a store table row must hold to rebuild the index.

    ``embedding`` is the float32 little-endian vector of ``embedding_model``: the static
    vector for rows written now; rows of the MiniLM model (written before the static
    stage) are re-embedded statically on load and keep their vector as the MiniLM one.
    """

    namespace: str
    context_hash: str
    digest: str
    text: str
    embedding: bytes
    created_at: float
    expires_at: float | None
    embedding_model: str

    @property
    def scope(self) -> Scope:
        return (self.namespace, self.context_hash)

    def vector(self) -> np.ndarray:
        return np.frombuffer(self.embedding, dtype="<f4").astype(np.float32)


def load_verifier(kind: VerifierKind = "cross-encoder", *, threshold: float | None = None
                  ) -> SemanticVerifier | CrossEncoderVerifier:
    """The shipped verifier of ``kind``: the cross-encoder with its combiner on the MiniLM
    cosine, the same model with its combiner on the static cosine (no MiniLM pass), or
    the feature model over the MiniLM cosine (no second model)."""
    if kind in ("cross-encoder", "cross-encoder-static"):
        from services.caching.semantic.cross_encoder import SPEC_PATHS, CrossEncoderVerifier

        cosine = "static" if kind == "cross-encoder-static" else "minilm"
        return CrossEncoderVerifier.load(SPEC_PATHS[cosine], threshold=threshold)
    if kind == "features":
        return SemanticVerifier.load(threshold=threshold)
    raise ValueError(f"unknown semantic verifier {kind!r}; expected one of {VERIFIER_KINDS}")


class SemanticCache:
    """Scoped static index + rules + verifier + expiry; the gateway stage's entry point."""

    def __init__(self, *, encoder: Encoder | None = None, static_encoder: Encoder | None = None,
                 verifier: SemanticVerifier | CrossEncoderVerifier | None = None,
                 index: VectorIndex | None = None, min_probability: float | None = None,
                 search_k: int | None = None, candidate_k: int = CANDIDATE_K,
                 static_floor: float = STATIC_FLOOR,
                 verifier_kind: VerifierKind = "cross-encoder") -> None:
        from services.embeddings import default_encoder, default_static_encoder

        self._encoder: Encoder = encoder if encoder is not None else default_encoder()
        self._static: Encoder = (static_encoder if static_encoder is not None
                                 else default_static_encoder())
        if verifier is None:
            verifier = load_verifier(verifier_kind, threshold=min_probability)
        elif min_probability is not None:
            verifier = verifier.with_threshold(min_probability)
        self.verifier = verifier
        self._batcher: EmbeddingBatcher | None = None
        self._batcher_lock = threading.Lock()
        # not `index or ...`: an empty index is falsy (it has a length)
        self.index = index if index is not None else VectorIndex(
            self._static.dimension, exact_limit=EXACT_SCAN_LIMIT, reduced_dims=PREFILTER_DIMS)
        if self.index.dimension != self._static.dimension:
            raise ValueError(f"the index holds {self.index.dimension}-dim vectors, the static "
                             f"encoder makes {self._static.dimension}")
        self.search_k = search_k or int(self.verifier.spec.get("search_k", DEFAULT_SEARCH_K))
        self.candidate_k = max(candidate_k, self.search_k)
        self.static_floor = static_floor
        self._meta: dict[str, tuple[float, float | None]] = {}  # digest -> created, expires
        self._dense: dict[str, np.ndarray] = {}  # digest -> MiniLM vector, once computed
        self._lock = threading.Lock()
        self.dense_texts = 0  # texts that went through the MiniLM encoder (benchmarks)

    @property
    def threshold(self) -> float:
        return self.verifier.threshold

    @property
    def static_model(self) -> str:
        """The name persisted rows carry: a row of another table is another model."""
        return self._static.name

    def static_embed(self, text: str) -> np.ndarray:
        return self._static.encode_one(text)

    def embed(self, text: str) -> np.ndarray:
        """The MiniLM vector (what the verifier's cosine is computed on)."""
        self.dense_texts += 1
        return self._encoder.encode_one(text)

    async def embed_batched(self, text: str) -> np.ndarray:
        """``embed`` for the event loop: joins the texts other requests are waiting to
        embed and runs them in one pass on the batcher's thread (see ``EmbeddingBatcher``)."""
        with self._batcher_lock:
            if self._batcher is None:
                from services.embeddings.batcher import EmbeddingBatcher

                self._batcher = EmbeddingBatcher(self._encoder.encode)
            batcher = self._batcher
        self.dense_texts += 1
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

    def lookup(self, scope: Scope, text: str, *, now: float | None = None,
               min_probability: float | None = None) -> SemanticMatch | None:
        """The stored entry that answers ``text`` in ``scope``, or None. Blocking (it may
        run the MiniLM encoder and the verifier): the event loop uses ``lookup_async``.
        ``min_probability`` replaces the cache's threshold for this lookup (a tenant's
        own trade of precision for recall)."""
        match = self.score(scope, text, now=now, min_probability=min_probability)
        return match if match is not None and match.accepted else None

    def score(self, scope: Scope, text: str, *, now: float | None = None,
              min_probability: float | None = None) -> SemanticMatch | None:
        """Like ``lookup`` but returns the best candidate even when it is refused (for
        benchmarks, calibration and logging why a lookup missed)."""
        found = self.candidates(scope, text, now=now, min_probability=min_probability)
        if found.decided:
            return found.match
        texts = self.missing_dense(found)
        vectors = self._encoder.encode(texts) if texts else None
        self.dense_texts += len(texts)
        return self.verify(scope, found, vectors, min_probability=min_probability)

    async def lookup_async(self, scope: Scope, text: str, *, min_probability: float | None = None
                           ) -> tuple[SemanticMatch | None, Candidates]:
        """``lookup`` for the event loop: the cheap steps inline (on a worker thread for a
        large scope), MiniLM through the batcher, the verifier on a worker thread. Returns
        the accepted match (or None) and the candidates (their static vector is what
        ``add`` indexes; ``dense`` what it keeps)."""
        if self.index.scope_size(scope) <= EXACT_SCAN_LIMIT:
            found = self.candidates(scope, text, min_probability=min_probability)
        else:
            found = await asyncio.to_thread(self.candidates, scope, text,
                                            min_probability=min_probability)
        if found.decided:
            match = found.match
        else:
            texts = self.missing_dense(found)
            vectors = (np.stack(await asyncio.gather(*(self.embed_batched(t) for t in texts)))
                       if texts else None)
            match = await asyncio.to_thread(self.verify, scope, found, vectors,
                                            min_probability=min_probability)
        return (match if match is not None and match.accepted else None), found

    def candidates(self, scope: Scope, text: str, *, vector: np.ndarray | None = None,
                   now: float | None = None, min_probability: float | None = None
                   ) -> Candidates:
        """Steps 1 and 2 of a lookup: static search, floor, rules. No transformer pass."""
        vector = self.static_embed(text) if vector is None else vector
        found = Candidates(text, vector)
        neighbors = self.index.search(scope, vector, k=self.candidate_k,
                                      min_cosine=self.static_floor)
        neighbors = self._live(neighbors, time.time() if now is None else now)
        if not neighbors:
            return found
        words = same_words_key(text)
        # the verifier's own rule, applied here where it looks at every near candidate (the
        # cross-encoder's probabilities); the feature verifier applies it to the nearest by
        # MiniLM only, which the static order cannot tell (it hardly sees punctuation, so
        # "= and ==" and "() and []" look alike): that one is left to step 3
        judged = neighbors[: self.search_k] if self.verifier.skips_refused else []
        for neighbor in judged:
            if same_words_key(neighbor.text) == words:
                found.match = SemanticMatch(neighbor.digest, neighbor.text, neighbor.cosine,
                                            1.0, True)
                return found
        if self.verifier.skips_refused:
            # lazily: the rules stop at the search_k-th candidate they let through
            found.admitted = list(islice((n for n in neighbors
                                          if self.verifier.admits(text, n.text)), self.search_k))
        else:
            nearest = neighbors[: self.search_k]
            if any(self.verifier.admits(text, n.text) for n in nearest):
                found.admitted = nearest
        if not found.admitted:  # refused by a rule: report the nearest
            nearest = neighbors[0]
            found.match = SemanticMatch(nearest.digest, nearest.text, nearest.cosine, 0.0,
                                        False)
            return found
        found.decided = False
        return found

    def missing_dense(self, found: Candidates) -> list[str]:
        """The texts step 3 must embed with MiniLM: the question first, then admitted
        candidates whose vector is not known yet; none when the verifier reads the static
        cosine."""
        if not self.verifier.needs_dense:
            found.pending = []
            return []
        with self._lock:
            missing = [n for n in found.admitted if n.digest not in self._dense]
        found.pending = [n.digest for n in missing]
        return [found.text] + [n.text for n in missing]

    def verify(self, scope: Scope, found: Candidates, vectors: np.ndarray | None, *,
               min_probability: float | None = None) -> SemanticMatch | None:
        """Step 3: ``vectors`` are the MiniLM rows of ``missing_dense(found)``, in order.
        Keeps the candidates' new vectors, ranks by MiniLM cosine and asks the verifier;
        a verifier on the static cosine judges the admitted candidates as they are
        (``vectors`` None)."""
        if not self.verifier.needs_dense:
            return self._judge(found.text, found.admitted, min_probability)
        if vectors is None:
            raise ValueError("the verifier reads MiniLM cosines: verify needs the vectors "
                             "of missing_dense")
        query = vectors[0]
        fresh = dict(zip(found.pending, vectors[1:], strict=True))
        neighbors = []
        with self._lock:
            for n in found.admitted:
                dense = fresh.get(n.digest)
                if dense is None:
                    dense = self._dense.get(n.digest)
                    if dense is None:  # removed since missing_dense: not a candidate now
                        continue
                elif n.digest in self._meta:  # keep it, unless removed meanwhile
                    self._dense[n.digest] = dense
                neighbors.append(Neighbor(n.digest, n.text, float(dense @ query)))
        found.dense = query
        neighbors.sort(key=lambda n: -n.cosine)
        return self._judge(found.text, neighbors, min_probability)

    def _judge(self, text: str, neighbors: Sequence[Neighbor], min_probability: float | None
               ) -> SemanticMatch | None:
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

    def add(self, scope: Scope, digest: str, text: str, *, vector: np.ndarray | None = None,
            dense: np.ndarray | None = None, ttl_s: float | None = None,
            now: float | None = None) -> SemanticRow:
        """Index one entry and return its row for the store. ``vector`` is its static
        vector (computed here when not given: microseconds, no transformer pass);
        ``dense`` its MiniLM vector when the caller has it."""
        vector = np.asarray(self.static_embed(text) if vector is None else vector,
                            dtype=np.float32)
        created = time.time() if now is None else now
        expires = created + ttl_s if ttl_s is not None else None
        self.index.add(scope, digest, text, vector)
        with self._lock:
            self._meta[digest] = (created, expires)
            if dense is not None:
                self._dense[digest] = np.asarray(dense, dtype=np.float32)
            else:
                self._dense.pop(digest, None)  # a re-added digest may carry another text
        return SemanticRow(scope[0], scope[1], digest, text, vector.astype("<f4").tobytes(),
                           created, expires, self.static_model)

    def remove(self, digest: str) -> bool:
        """Forget an entry (its exact-cache entry is gone, or it was purged)."""
        with self._lock:
            self._meta.pop(digest, None)
            self._dense.pop(digest, None)
        return self.index.remove(digest)

    def purge_expired(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._lock:
            expired = [d for d, (_, e) in self._meta.items() if e is not None and e <= now]
        for digest in expired:
            self.remove(digest)
        return len(expired)

    def holds(self, digest: str) -> bool:
        """Whether the entry is indexed here (the store's refresh skips such rows)."""
        return digest in self._meta

    def dense_known(self, digest: str) -> bool:
        """Whether an entry's MiniLM vector is known (computed by a lookup, or loaded)."""
        with self._lock:
            return digest in self._dense

    # --- persistence --------------------------------------------------------------------

    def snapshot(self) -> list[SemanticRow]:
        with self._lock:
            meta = dict(self._meta)
        rows = []
        for scope, digest, text, vector in self.index.entries():
            created, expires = meta.get(digest, (0.0, None))
            rows.append(SemanticRow(scope[0], scope[1], digest, text,
                                    vector.astype("<f4").tobytes(), created, expires,
                                    self.static_model))
        return rows

    def load(self, rows: Iterable[SemanticRow], *, now: float | None = None) -> int:
        """Rebuild from stored rows (on start, or to follow other replicas' writes);
        skips expired rows and rows of an unknown model. Rows of this static model are
        indexed as they are; rows of the MiniLM model are embedded statically (cheap)
        and keep their vector as the MiniLM one. Returns rows loaded."""
        now = time.time() if now is None else now
        loaded = 0
        for row in rows:
            if row.expires_at is not None and row.expires_at <= now:
                continue
            if row.embedding_model == self.static_model:
                vector, dense = row.vector(), None
            elif row.embedding_model == EMBEDDING_MODEL:
                vector, dense = self.static_embed(row.text), row.vector()
                if len(dense) != self._encoder.dimension:
                    continue
            else:
                continue
            self.index.add(row.scope, row.digest, row.text, vector)
            with self._lock:
                self._meta[row.digest] = (row.created_at, row.expires_at)
                if dense is not None:
                    self._dense[row.digest] = dense
                else:
                    self._dense.pop(row.digest, None)
            loaded += 1
        return loaded

    def stats(self) -> IndexStats:
        return self.index.stats()

    def __len__(self) -> int:
        return len(self.index)
