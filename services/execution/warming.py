"""Prefix warming: a vLLM worker that joins the pool gets the known cacheable prefixes
into its prefix cache before real requests need them.

The ``token_optimization`` flow marks recurring system prompts in ``cacheable_prefixes``,
with their leading messages when prompts may be stored (the joined ``text`` cannot give
back the chat-templated token prefix; the messages can). When a worker joins (start-up,
registration, back healthy after an ejection) its prefix cache is empty, and prefix
affinity may now send it prefixes another worker had cached. So the prefixes that
affinity routes to it, most valuable first (occurrences x tokens) and within a count and
a token bound, are sent to it as chat requests with one empty user turn and
``max_tokens=1``: the same template output as a real request up to the end of the
system messages, so vLLM caches those blocks, and the first real request with the
prefix reads them instead of paying their prefill.

With per-tenant prefix caches (``prefix_cache_per_tenant``) a block serves only requests
with the same ``cache_salt``, so a prefix is warmed once per tenant that sent it (the
row's ``tenants``, most frequent first), under that tenant's salt; each counts against
the bounds, and a row without tenants is not warmed. A request that brings its own
``cache_salt`` narrows its tenant's salt and finds nothing warmed.

It never costs live traffic anything but spare capacity: it runs as a background task
per joining worker, reads the store in a thread, takes each slot through admission at
``low`` priority, never fills more than ``max_kv_share`` of the worker's KV cache (so
warmed prefixes do not evict what live traffic needs), and a failure (store down, a row
that does not hash to its key, the worker refusing) is logged and counted in
``optengine_prefix_warm_total``, never raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import Engine, select

from models import CacheablePrefix
from services.background import cancel_and_wait
from services.caching.prefix import (
    cacheable_prefix_hash,
    prefix_cache_salt,
    static_prefix_key,
)
from services.errors import EngineError
from services.execution.client import UpstreamClient
from services.execution.pool import WorkerPool, WorkerState
from services.workers import vllm_metrics

log = logging.getLogger(__name__)
CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class WarmPrefix:
    prefix_hash: str
    tokens: int
    messages: list[dict[str, Any]]
    tenants: tuple[str, ...] = ()  # who sent it, most frequent first

    def request(self, model: str, cache_salt: str | None = None) -> dict[str, Any]:
        """The chat request that leaves the prefix in a vLLM prefix cache (under
        ``cache_salt``: the blocks only requests with that salt may read)."""
        request = {"model": model, "max_tokens": 1,
                   "messages": [*self.messages, {"role": "user", "content": ""}]}
        if cache_salt is not None:
            request["cache_salt"] = cache_salt
        return request


@dataclass(frozen=True, slots=True)
class WarmUnit:
    """One warming request: a prefix for a model, under one tenant's salt or none."""

    model: str
    prefix: WarmPrefix
    cache_salt: str | None = None


def load_warm_prefixes(engine: Engine, limit: int) -> tuple[list[WarmPrefix], int]:
    """The prefixes among the ``limit`` most valuable rows with stored messages, and
    how many of those rows were skipped as broken (messages that do not hash to their
    ``prefix_hash``)."""
    query = (select(CacheablePrefix.prefix_hash, CacheablePrefix.tokens,
                    CacheablePrefix.messages, CacheablePrefix.tenants)
             .where(CacheablePrefix.messages.is_not(None))
             .order_by((CacheablePrefix.occurrences * CacheablePrefix.tokens).desc(),
                       CacheablePrefix.prefix_hash)
             .limit(limit))
    with engine.connect() as conn:
        # a JSON null (rows written before none_as_null) is "not stored" too
        rows = [row for row in conn.execute(query) if row.messages is not None]
    found = [WarmPrefix(h, tokens, messages, tuple(
                 t for t in tenants or () if isinstance(t, str)))
             for h, tokens, messages, tenants in rows if _hashes_to(messages, h)]
    return found, len(rows) - len(found)


def _hashes_to(messages: object, prefix_hash: str) -> bool:
    """A row whose messages do not give back the key the flow gave them was edited or
    corrupted."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return False
    return cacheable_prefix_hash(messages) == prefix_hash


async def kv_cache_tokens(client: UpstreamClient, worker: str) -> int | None:
    """How many tokens a vLLM worker's KV cache holds (``num_gpu_blocks`` x
    ``block_size`` of its ``vllm:cache_config_info``), or None when it does not say (not
    vLLM, metrics off or unreachable)."""
    try:
        text = (await client.get(worker, "/metrics")).decode(errors="replace")
    except EngineError:
        return None
    labels = vllm_metrics.labels(text, vllm_metrics.CACHE_CONFIG)
    if labels is None:
        return None
    try:
        blocks, size = int(labels["num_gpu_blocks"]), int(labels["block_size"])
    except (KeyError, ValueError):
        return None
    return blocks * size if blocks > 0 and size > 0 else None


class PrefixWarmer:
    """Warms each joining worker once per join; hand ``worker_joined`` to the pool's
    ``on_join`` and ``stop()`` it before the pool."""

    def __init__(
        self,
        pool: WorkerPool,
        client: UpstreamClient,
        load: Callable[[int], tuple[list[WarmPrefix], int]],
        *,
        max_prefixes: int,
        max_tokens: int,
        max_kv_share: float = 0.5,
        salt_key: bytes | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._pool = pool
        self._client = client
        self._load = load
        self._salt_key = salt_key
        self.max_prefixes = max_prefixes
        self.max_tokens = max_tokens
        self.max_kv_share = max_kv_share
        self.outcomes = Counter(
            "optengine_prefix_warm_total",
            "Prefixes sent to joining workers' prefix caches, by outcome "
            "(warmed | failed | invalid row | store_error)",
            ["outcome"], registry=registry,
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def worker_joined(self, worker: WorkerState) -> None:
        running = self._tasks.get(worker.url)
        if running is not None and not running.done():
            return
        task = asyncio.create_task(self._warm(worker), name=f"prefix-warm {worker.url}")
        self._tasks[worker.url] = task

    async def stop(self) -> None:
        for task in list(self._tasks.values()):
            await cancel_and_wait(task)
        self._tasks.clear()

    async def _warm(self, worker: WorkerState) -> None:
        try:
            # each worker gets about its share of the table: read that many per worker
            limit = self.max_prefixes * max(1, len(self._pool.workers))
            try:
                prefixes, broken = await asyncio.to_thread(self._load, limit)
            except Exception:
                log.warning("prefix warming of %s: could not read cacheable_prefixes",
                            worker.url, exc_info=True)
                self.outcomes.labels("store_error").inc()
                return
            if broken:
                self.outcomes.labels("invalid").inc(broken)
                log.warning("prefix warming skipped %d cacheable_prefixes rows whose messages "
                            "do not hash to their prefix_hash", broken)
            if not prefixes:
                return
            capacity = await kv_cache_tokens(self._client, worker.url)
            budget = self.max_tokens if capacity is None else min(
                self.max_tokens, int(capacity * self.max_kv_share))
            chosen = self._routed_to(worker, prefixes, budget)
            for unit in chosen:
                if not await self._send(worker, unit):
                    break
            if chosen:
                log.info("prefix warming of %s: %d prefixes sent", worker.url, len(chosen))
        except Exception:  # a bug here must not surface as an unhandled task error
            log.exception("prefix warming of %s failed", worker.url)
            self.outcomes.labels("failed").inc()

    def _routed_to(self, worker: WorkerState, prefixes: Sequence[WarmPrefix],
                   max_tokens: int | None = None) -> list[WarmUnit]:
        """The prefixes prefix affinity sends to ``worker``, within the bounds (tokens:
        ``max_tokens``, else the warmer's); with per-tenant prefix caches, once per
        tenant that sent it (each is its own prefill)."""
        max_tokens = self.max_tokens if max_tokens is None else max_tokens
        chosen: list[WarmUnit] = []
        tokens = 0
        for model in sorted(worker.models):
            for prefix in prefixes:
                key = static_prefix_key("chat.completions", model, prefix.request(model))
                if key is None or not self._pool.affinity_target(worker, model, key):
                    continue
                for salt in self._salts(prefix):
                    if len(chosen) >= self.max_prefixes:
                        return chosen
                    if tokens + prefix.tokens <= max_tokens:
                        chosen.append(WarmUnit(model, prefix, salt))
                        tokens += prefix.tokens
        return chosen

    def _salts(self, prefix: WarmPrefix) -> list[str | None]:
        """The cache salts to warm ``prefix`` under: none when the prefix cache is shared,
        else one per tenant that sent it (an unsalted copy would serve nobody)."""
        if self._salt_key is None:
            return [None]
        return [prefix_cache_salt(self._salt_key, tenant) for tenant in prefix.tenants]

    async def _send(self, worker: WorkerState, unit: WarmUnit) -> bool:
        """Send one warming request; False when the worker can no longer be used for
        warming."""
        model, prefix = unit.model, unit.prefix
        others = [w for w in self._pool.workers if w is not worker]
        try:
            lease = await self._pool.acquire(model, tokens=prefix.tokens, priority="low",
                                             exclude=others)
        except EngineError as exc:  # gone, draining, or busy with real traffic
            log.info("prefix warming of %s stopped: %s", worker.url, exc.message)
            return False
        try:
            await self._client.post_json(worker.url, CHAT_PATH,
                                         orjson.dumps(prefix.request(model, unit.cache_salt)))
        except EngineError as exc:
            # no verdict on the lease: a warming request must not open the breaker
            log.warning("prefix warming of %s: prefix %s refused: %s",
                        worker.url, prefix.prefix_hash[:12], exc.message)
            self.outcomes.labels("failed").inc()
        else:
            lease.succeeded()
            self.outcomes.labels("warmed").inc()
        finally:
            lease.release()
        return True
