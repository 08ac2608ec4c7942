"""The semantic cache's vector index: one small matrix per scope, searched in NumPy.

Entries are grouped by scope (namespace, context hash) and a query is only ever compared
with its own scope, so a tenant, a model, a set of sampling parameters or a conversation
prefix can never reach another's entries: scoping is a dictionary lookup, not a filter
that could be forgotten.

Why NumPy and not an ANN library: measured on this 2-core machine (docs/benchmarks.md,
"Semantic cache"), an exact float32 scan is memory-bound (150 MB per query at 100k
entries: 12-20 ms), so above ``exact_limit`` entries the scan runs on a PCA projection
of the vectors instead (``reduced_dims`` columns, 25 MB at 100k), keeps the best
``candidates`` rows and re-ranks those exactly: ~1.5 ms at 100k, with the exact nearest
entry found for every benchmark query. The cache only cares about neighbours with a high
cosine, which a projection preserves well. FAISS HNSW and friends are faster still, but
NumPy keeps exact removal, no build step and no native dependency. The semantic cache
indexes 256-dimension static vectors (``embeddings.static``) with the scan exact up to
4,096 entries and a 96-dimension prefilter above (``SemanticCache``).

Thread safety: one lock guards all mutation and the (short) NumPy scans; the gateway
searches from its event loop thread while worker threads add entries.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from dataclasses import dataclass

import numpy as np

Scope = tuple[str, str]  # (namespace, context hash)


@dataclass(frozen=True, slots=True)
class Neighbor:
    digest: str
    text: str
    cosine: float


@dataclass(frozen=True, slots=True)
class IndexStats:
    entries: int
    scopes: int
    largest_scope: int
    vector_bytes: int  # allocated float32 matrices, projections included
    text_bytes: int


class _Shard:
    """The entries of one scope: rows of a growing matrix, removal by swap-with-last."""

    def __init__(self, dimension: int) -> None:
        self.vectors = np.empty((0, dimension), dtype=np.float32)
        self.count = 0
        self.digests: list[str] = []
        self.texts: list[str] = []
        self.rows: dict[str, int] = {}
        self.basis: np.ndarray | None = None  # (dimension, reduced) PCA basis, once large
        self.reduced: np.ndarray | None = None
        self.fitted_at = 0
        self.fitting = False  # a projection is being fitted outside the lock

    def add(self, digest: str, text: str, vector: np.ndarray) -> None:
        row = self.rows.get(digest)
        if row is None:
            row = self.count
            if row == len(self.vectors):
                self._grow(max(64, 2 * row))
            self.count += 1
            self.digests.append(digest)
            self.texts.append(text)
            self.rows[digest] = row
        else:
            self.texts[row] = text
        self.vectors[row] = vector
        if self.reduced is not None and self.basis is not None:
            self.reduced[row] = vector @ self.basis

    def remove(self, digest: str) -> None:
        row = self.rows.pop(digest)
        last = self.count - 1
        if row != last:
            moved = self.digests[last]
            self.vectors[row] = self.vectors[last]
            if self.reduced is not None:
                self.reduced[row] = self.reduced[last]
            self.digests[row] = moved
            self.texts[row] = self.texts[last]
            self.rows[moved] = row
        self.digests.pop()
        self.texts.pop()
        self.count = last

    def _grow(self, capacity: int) -> None:
        vectors = np.empty((capacity, self.vectors.shape[1]), dtype=np.float32)
        vectors[: self.count] = self.vectors[: self.count]
        self.vectors = vectors
        if self.reduced is not None:
            reduced = np.empty((capacity, self.reduced.shape[1]), dtype=np.float32)
            reduced[: self.count] = self.reduced[: self.count]
            self.reduced = reduced

    def sample(self, size: int) -> np.ndarray:
        step = max(1, self.count // size)
        return self.vectors[: self.count : step].copy()

    def set_projection(self, basis: np.ndarray, fitted_at: int) -> None:
        self.basis = basis
        self.reduced = np.empty((len(self.vectors), basis.shape[1]), dtype=np.float32)
        self.reduced[: self.count] = self.vectors[: self.count] @ basis
        self.fitted_at = fitted_at

    def drop_projection(self) -> None:
        self.basis = self.reduced = None
        self.fitted_at = 0

    def nbytes(self) -> int:
        return self.vectors.nbytes + (self.reduced.nbytes if self.reduced is not None else 0)


class VectorIndex:
    """Cosine search over unit vectors, partitioned by scope.

    ``exact_limit``: up to this many entries a scope is scanned exactly (float32). Above
    it, a PCA projection to ``reduced_dims`` dimensions is scanned first and the best
    ``candidates`` rows are re-ranked exactly; the projection is refitted whenever the scope
    has doubled since the last fit, so it follows the data it indexes.
    """

    def __init__(self, dimension: int = 384, *, exact_limit: int = 16384,
                 reduced_dims: int = 64, candidates: int = 256, fit_sample: int = 16384) -> None:
        if reduced_dims >= dimension:
            raise ValueError("reduced_dims must be smaller than the dimension")
        self.dimension = dimension
        self.exact_limit = exact_limit
        self.reduced_dims = reduced_dims
        self.candidates = candidates
        self.fit_sample = fit_sample
        self._shards: dict[Hashable, _Shard] = {}
        self._scope_of: dict[str, Hashable] = {}
        self._lock = threading.Lock()

    # --- mutation -----------------------------------------------------------------------

    def add(self, scope: Scope, digest: str, text: str, embedding: np.ndarray) -> None:
        """Insert or replace one entry. A digest lives in one scope: re-adding it under
        another scope moves it (the exact-cache key already covers the scope)."""
        vector = self._as_vector(embedding)
        with self._lock:
            previous = self._scope_of.get(digest)
            if previous is not None and previous != scope:
                self._remove_locked(digest)
            shard = self._shards.get(scope)
            if shard is None:
                shard = self._shards[scope] = _Shard(self.dimension)
            shard.add(digest, text, vector)
            self._scope_of[digest] = scope
            refit = (shard.count > self.exact_limit and shard.count >= 2 * shard.fitted_at
                     and not shard.fitting)
            sample = shard.sample(self.fit_sample) if refit else None
            shard.fitting = shard.fitting or refit
        if sample is not None:
            self._refit(scope, sample)

    def _refit(self, scope: Scope, sample: np.ndarray) -> None:
        """Fit the scope's projection outside the lock (an eigendecomposition: tens of ms),
        then install it under the lock (one projection of the rows)."""
        basis: np.ndarray | None = None
        try:
            basis = pca_basis(sample, self.reduced_dims)
        finally:
            with self._lock:
                shard = self._shards.get(scope)
                if shard is not None:
                    shard.fitting = False
                    if basis is not None and shard.count > self.exact_limit:
                        shard.set_projection(basis, shard.count)

    def remove(self, digest: str) -> bool:
        with self._lock:
            return self._remove_locked(digest)

    def clear(self) -> None:
        with self._lock:
            self._shards.clear()
            self._scope_of.clear()

    def _remove_locked(self, digest: str) -> bool:
        scope = self._scope_of.pop(digest, None)
        if scope is None:
            return False
        shard = self._shards[scope]
        shard.remove(digest)
        if shard.count == 0:
            del self._shards[scope]
        elif shard.count <= self.exact_limit // 2 and shard.basis is not None:
            shard.drop_projection()
        return True

    # --- queries ------------------------------------------------------------------------

    def search(self, scope: Scope, embedding: np.ndarray, k: int = 4,
               min_cosine: float = -1.0) -> list[Neighbor]:
        """The ``k`` entries of ``scope`` nearest to ``embedding``, best first."""
        query = self._as_vector(embedding)
        with self._lock:
            shard = self._shards.get(scope)
            if shard is None or shard.count == 0:
                return []
            n = shard.count
            if shard.reduced is None or shard.basis is None:
                rows = np.arange(n)
                scores = shard.vectors[:n] @ query
            else:
                rough = shard.reduced[:n] @ (query @ shard.basis)
                rows = _top(rough, self.candidates)
                scores = shard.vectors[rows] @ query
            best = _top(scores, k)
            best = best[np.argsort(-scores[best], kind="stable")]
            return [Neighbor(shard.digests[rows[i]], shard.texts[rows[i]], float(scores[i]))
                    for i in best if scores[i] >= min_cosine]

    def __len__(self) -> int:
        return len(self._scope_of)

    def __contains__(self, digest: object) -> bool:
        return digest in self._scope_of

    def scope_size(self, scope: Scope) -> int:
        shard = self._shards.get(scope)
        return shard.count if shard else 0

    def stats(self) -> IndexStats:
        with self._lock:
            shards = list(self._shards.values())
            return IndexStats(
                entries=len(self._scope_of),
                scopes=len(shards),
                largest_scope=max((s.count for s in shards), default=0),
                vector_bytes=sum(s.nbytes() for s in shards),
                text_bytes=sum(len(t.encode()) for s in shards for t in s.texts),
            )

    def entries(self) -> Iterator[tuple[Scope, str, str, np.ndarray]]:
        """Every (scope, digest, text, vector), a snapshot taken under the lock."""
        with self._lock:
            items = [(scope, shard.digests[i], shard.texts[i], shard.vectors[i].copy())
                     for scope, shard in self._shards.items() for i in range(shard.count)]
        return iter(items)  # type: ignore[arg-type]

    def _as_vector(self, embedding: np.ndarray) -> np.ndarray:
        vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dimension:
            raise ValueError(f"expected a {self.dimension}-dim vector, got {vector.shape[0]}")
        return vector


def pca_basis(sample: np.ndarray, dims: int) -> np.ndarray:
    """The ``dims`` leading directions of ``sample`` (rows are unit vectors).

    Uncentred on purpose: the scan ranks by dot product with the query, and the mean
    direction carries a large part of every dot product between sentence embeddings.
    """
    data = sample.astype(np.float64)
    _, eigvecs = np.linalg.eigh(data.T @ data)
    return np.ascontiguousarray(eigvecs[:, ::-1][:, :dims].astype(np.float32))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, unordered (argpartition: O(n), not a sort)."""
    if k >= len(scores):
        return np.arange(len(scores))
    return np.argpartition(scores, len(scores) - k)[len(scores) - k :]
