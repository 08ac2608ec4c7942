"""The cache stage: answer from the response cache when it is safe, store what is new.

Per request, the client controls it with ``Cache-Control`` (``no-cache``: do not read,
``no-store``: do not write, ``max-age=N``: accept entries at most N seconds old),
``X-Cache-Namespace`` (a sub-namespace inside the tenant's; a namespace shared across
tenants only when configured), ``X-Cache-Sampled: allow`` (cache a sampled request,
temperature > 0, whose answer would otherwise be meant to vary) and ``X-Cache-Semantic:
on|off`` (semantic matching for this request; tenants can be opted in by config).
Responses carry ``X-Cache`` (HIT-L1, HIT-L2, HIT-L3, HIT-SEMANTIC or MISS; BYPASS when
not cacheable) and ``X-Cache-Age``.

A semantic hit is as safe as an exact one: it is looked up only after every exact tier
missed, only among entries of the same namespace and the same context (model,
parameters, system prompt, tools, earlier turns: everything but the last user message),
and served only when the verifier accepts it: at the calibrated threshold, or at the
tenant's own (``cache_semantic_tenant_min_probability``).

The semantic stage is skipped for questions the verifier cannot judge (too long for its
window). A lookup searches the question's static vector (microseconds) and runs the
cheap rules first; only when a candidate survives them does it run MiniLM (concurrent
questions embedded together off the event loop) and the verifier
(``SemanticCache.lookup_async``). The vectors of a miss are kept to index its answer,
never computed twice, and indexing needs no transformer pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson

from services.background import BackgroundTasks, WriteBehind
from services.caching import (
    CachedResponse,
    CacheKey,
    Hit,
    ResponseCache,
    assemble,
    cache_key,
    fresh_body,
    is_deterministic,
    semantic_scope,
    stream_chunks,
)
from services.caching.cache import CLOSE_TIMEOUT_S
from services.caching.semantic import SemanticCache
from services.caching.semantic_store import SemanticStore
from services.errors import InvalidRequest
from services.gateway.pipeline import Next, Reply, RequestContext
from services.protocol import Usage

log = logging.getLogger(__name__)

INDEX_BATCH = 256  # questions indexed and persisted per store transaction
MAX_PENDING_INDEX = 20_000


@dataclass(slots=True)
class SemanticQuery:
    """The request's question in its scope, and its vectors once computed (static; MiniLM
    only when the lookup needed it)."""

    scope: tuple[str, str]
    text: str
    vector: np.ndarray | None = None
    dense: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class CacheDirectives:
    read: bool = True
    write: bool = True
    max_age_s: float | None = None

    @classmethod
    def parse(cls, header: str | None) -> CacheDirectives:
        if not header:
            return _DEFAULT_DIRECTIVES
        read = write = True
        max_age: float | None = None
        for part in header.split(","):
            name, _, value = part.strip().lower().partition("=")
            if name == "no-cache":
                read = False
            elif name == "no-store":
                read = write = False
            elif name == "max-age":
                try:
                    max_age = float(value)
                except ValueError:
                    raise InvalidRequest(f"Cache-Control max-age must be a number: {value!r}",
                                         param="Cache-Control") from None
                if max_age < 0:
                    raise InvalidRequest("Cache-Control max-age must be >= 0",
                                         param="Cache-Control")
        return cls(read=read, write=write, max_age_s=max_age)


_DEFAULT_DIRECTIVES = CacheDirectives()


class CacheStage:
    name = "cache"

    def __init__(
        self,
        cache: ResponseCache,
        *,
        shared_namespaces: frozenset[str] = frozenset(),
        semantic: SemanticCache | None = None,
        semantic_store: SemanticStore | None = None,
        semantic_tenants: frozenset[str] = frozenset(),
        semantic_min_probability: Mapping[str, float] | None = None,
        semantic_ttl_s: float | None = None,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ) -> None:
        self._cache = cache
        self._shared = shared_namespaces
        self._semantic = semantic
        self._semantic_store = semantic_store
        self._semantic_tenants = semantic_tenants
        self._semantic_min_probability = dict(semantic_min_probability or {})
        self._semantic_ttl_s = semantic_ttl_s
        self._close_timeout_s = close_timeout_s
        self._background = BackgroundTasks()
        # cached, not yet indexed
        self._to_index: WriteBehind[tuple[str, SemanticQuery]] = WriteBehind(
            self._index_behind, self._background.spawn, batch=INDEX_BATCH,
            max_pending=MAX_PENDING_INDEX)

    def wants_semantic(self, ctx: RequestContext) -> bool:
        if self._semantic is None:
            return False
        header = ctx.request_headers.get("x-cache-semantic", "").lower()
        if header in ("on", "off"):
            return header == "on"
        return ctx.principal.tenant in self._semantic_tenants or "*" in self._semantic_tenants

    def namespace(self, ctx: RequestContext) -> str:
        """The key's namespace; answers to lossily compressed prompts (token policy
        ``budget=N``/``ratio=R``) live apart from full-prompt answers and per policy."""
        requested = ctx.request_headers.get("x-cache-namespace")
        # parts are quoted: tenant "a/b" must not share tenant "a"'s namespace "b", and a
        # header cannot forge the policy suffix
        if requested and requested in self._shared:
            namespace = f"shared/{quote(requested, safe='')}"
        else:
            tenant = quote(ctx.principal.tenant, safe="")
            namespace = (f"tenant/{tenant}/{quote(requested, safe='')}" if requested
                         else f"tenant/{tenant}")
        policy = ctx.token_policy
        if policy is not None and policy.lossy:
            namespace += f"#tokens={policy}"
        if ctx.experiment_arms:  # each experiment arm caches apart
            namespace += f"#arms={ctx.experiment_arms}"
        return namespace

    def min_probability(self, ctx: RequestContext) -> float | None:
        """The verifier's threshold: an experiment arm's, else the tenant's, else the
        calibrated one (None)."""
        if ctx.overrides and "cache_semantic_min_probability" in ctx.overrides:
            return float(ctx.overrides["cache_semantic_min_probability"])
        return self._semantic_min_probability.get(ctx.principal.tenant)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply:
        directives = CacheDirectives.parse(ctx.request_headers.get("cache-control"))
        request = ctx.request_dict
        sampled_ok = ctx.request_headers.get("x-cache-sampled", "").lower() == "allow"
        if not (is_deterministic(request) or sampled_ok) or not (directives.read or
                                                                  directives.write):
            ctx.response_headers["x-cache"] = "BYPASS"
            return await call_next(ctx)
        namespace = self.namespace(ctx)
        key = cache_key(namespace, ctx.endpoint, request)
        scoped = self._semantic_query(namespace, ctx, request)
        if directives.read:
            hit = await self._cache.lookup(key, max_age_s=directives.max_age_s)
            if hit is None and scoped is not None:
                hit = await self._semantic_lookup(
                    namespace, scoped, directives, self.min_probability(ctx))
            if hit is not None:
                return self._answer(ctx, hit.layer, hit.entry)
        ctx.cache_layer = "MISS"
        ctx.response_headers["x-cache"] = "MISS"
        if not directives.write:
            return await call_next(ctx)
        async with self._cache.flight(key) as flight:
            if not flight.leader:
                entry = await flight.wait()
                if entry is not None:
                    return self._answer(ctx, "L1", entry)
                return await call_next(ctx)  # the leader failed: go upstream ourselves
            # A leader that finished while our lookup was waiting on a shared tier has
            # already left its answer in L1: take it rather than call upstream again.
            settled = await self._cache.tiers[0].get(key) if directives.read else None
            if settled is not None and (
                directives.max_age_s is None or settled.age_s <= directives.max_age_s
            ):
                flight.finish(settled)
                return self._answer(ctx, self._cache.tiers[0].name, settled)
            reply = await call_next(ctx)
            if reply.chunks is None:
                entry = self._entry_from_body(ctx, reply)
                if entry is not None:
                    await self._store(key, entry, scoped)
                flight.finish(entry)
                return reply
            reply.chunks = self._recording(ctx, reply.chunks, key, flight, scoped)
            return reply

    def _answer(self, ctx: RequestContext, layer: str, entry: CachedResponse) -> Reply:
        ctx.cache_layer = layer
        ctx.cache_age_s = entry.age_s
        ctx.response_headers["x-cache"] = f"HIT-{layer}"
        ctx.response_headers["x-cache-age"] = str(int(entry.age_s))
        usage = entry.usage()
        ctx.usage = Usage.model_validate(usage) if usage else None
        ctx.model = entry.body.get("model") or ctx.model
        if ctx.stream:
            chunks = stream_chunks(ctx.endpoint, entry.body,
                                   include_usage=ctx.request.wants_usage_in_stream)
            return Reply(chunks=_as_bytes(chunks))
        return Reply(body=orjson.dumps(fresh_body(entry.body)))

    @staticmethod
    def _entry_from_body(ctx: RequestContext, reply: Reply) -> CachedResponse | None:
        if reply.status_code != 200 or reply.body is None:
            return None
        # kept as the upstream sent it (dispatch validated it): parsed only if served
        return CachedResponse.from_json(ctx.endpoint, reply.body)

    def _semantic_query(self, namespace: str, ctx: RequestContext, request: dict[str, Any]
                        ) -> SemanticQuery | None:
        if not self.wants_semantic(ctx):
            return None
        scoped = semantic_scope(namespace, ctx.endpoint, request)
        if scoped is None:
            return None
        assert self._semantic is not None
        if not self._semantic.serves(scoped[1]):  # too long to judge: neither look up nor index
            return None
        return SemanticQuery(*scoped)

    async def _semantic_lookup(
        self, namespace: str, query: SemanticQuery, directives: CacheDirectives,
        min_probability: float | None,
    ) -> Hit | None:
        assert self._semantic is not None
        match, found = await self._semantic.lookup_async(query.scope, query.text,
                                                         min_probability=min_probability)
        query.vector, query.dense = found.vector, found.dense
        if match is None:
            return None
        hit = await self._cache.lookup(CacheKey(namespace, match.digest),
                                       max_age_s=directives.max_age_s)
        if hit is None:  # the exact entry is gone: forget it here too
            self._semantic.remove(match.digest)
            return None
        return Hit("SEMANTIC", hit.entry)

    async def _store(self, key: CacheKey, entry: CachedResponse,
                     scoped: SemanticQuery | None) -> None:
        await self._cache.store(key, entry)
        if scoped is None or self._semantic is None:
            return
        if not self._to_index.put((key.digest, scoped)):  # indexing cannot keep up
            log.warning("semantic indexing queue full; entry not indexed")

    async def _index_behind(self, batch: list[tuple[str, SemanticQuery]]) -> None:
        """Index newly cached questions (their vectors from their lookup, or the static one
        computed now when the request did not read the cache) and persist them on a worker
        thread, off the requests' path, one store transaction per batch."""
        try:
            await asyncio.to_thread(self._index_batch, batch)
        except Exception:  # best effort: the exact entries are already stored
            log.warning("semantic indexing failed", exc_info=True)

    def _index_batch(self, batch: list[tuple[str, SemanticQuery]]) -> None:
        semantic = self._semantic
        assert semantic is not None
        rows = [semantic.add(q.scope, digest, q.text, vector=q.vector, dense=q.dense,
                             ttl_s=self._semantic_ttl_s) for digest, q in batch]
        if self._semantic_store is not None:
            self._semantic_store.save_many(rows)

    async def drain(self) -> None:
        await self._background.drain()

    async def aclose(self) -> None:
        """Write what is queued for the semantic index (shutdown, before the semantic
        cache and the store close), waiting at most ``close_timeout_s``: past it the writes
        are cancelled (a store call already on its thread ends on its own, unwaited) and
        the count of entries not written is logged; they are dropped (their exact entries
        are stored; only their semantic matching is lost). A failed write is logged by
        ``_index_behind`` and the next batch goes on."""
        if not await self._background.drain_within(self._close_timeout_s):
            log.warning("semantic index: %d entries not written within %.1f s at close; "
                        "dropped", len(self._to_index), self._close_timeout_s)

    async def _recording(self, ctx: RequestContext, chunks: AsyncIterator[bytes], key: Any,
                         flight: Any, scoped: SemanticQuery | None
                         ) -> AsyncIterator[bytes]:
        """Pass the stream through untouched, keeping a copy to cache once it completes."""
        seen: list[dict[str, Any]] = []
        entry = None
        try:
            async for chunk in chunks:
                seen.append(orjson.loads(chunk))
                yield chunk
            if ctx.error_type is None and ctx.usage is not None:
                body = assemble(ctx.endpoint, seen, ctx.usage.model_dump(exclude_none=True))
                if body is not None:
                    entry = CachedResponse(endpoint=ctx.endpoint, body=body)
                    await self._store(key, entry, scoped)
        finally:
            flight.finish(entry)


async def _as_bytes(chunks: Any) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield orjson.dumps(chunk)
