"""The gateway's app factory: services are built in the lifespan and kept on app.state."""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Engine

from models import create_store_engine, session_factory
from services.batch import BatchLauncher
from services.batch.serving import BatchServing
from services.caching import (
    CacheMetrics,
    CacheTier,
    MemoryCache,
    PersistentCache,
    RedisCache,
    ResponseCache,
)
from services.caching.prefix import marked_prefix_hashes
from services.caching.semantic import SemanticCache
from services.caching.semantic_store import SemanticStore, SemanticSync
from services.costs import PriceCatalog, ThroughputMeter
from services.execution import (
    AdmissionMetrics,
    PrefixWarmer,
    UpstreamClient,
    WorkerPool,
    load_warm_prefixes,
    store_sync,
)
from services.experiments import load_live
from services.forecasting.metrics import DesiredReplicasCollector
from services.gateway.auth import KeyRing
from services.gateway.deps import AppServices
from services.gateway.errors import HeaderLimit, install_error_handlers
from services.gateway.pipeline import Pipeline, Stage
from services.gateway.routes import (
    admin_router,
    batches_router,
    experiments_router,
    feedback_router,
    flow_runs_router,
    keys_router,
    openai_router,
    ops_router,
)
from services.gateway.serving import OpenAIServing, build_event
from services.gateway.shutdown import close_in_order, shutdown_steps
from services.gateway.stages import (
    CacheStage,
    DispatchStage,
    TokenOptimizationStage,
    TokenPolicyStage,
    build_rate_limit_stage,
)
from services.gateway.stages.experiments import ExperimentStage
from services.gateway.stages.hosted import HostedBackend, hosted_backends
from services.gateway.stages.routing import build_routing_stage
from services.orchestration import FlowRuns
from services.routing.retrain import load_active_router
from services.settings import Settings
from services.telemetry import GatewayMetrics, RequestPricer, TelemetryWriter
from services.tokens import (
    PromptCounter,
    TokenOptimizer,
    WorkerCount,
    encoding_name,
    worker_count,
)

log = logging.getLogger(__name__)


def build_cache(settings: Settings, engine: Engine, metrics: GatewayMetrics) -> ResponseCache:
    tiers: list[CacheTier] = [
        MemoryCache(
            max_bytes=settings.cache_l1_max_bytes,
            ttl_s=settings.cache_l1_ttl_s,
            max_entry_bytes=settings.cache_max_entry_bytes,
        )
    ]
    if settings.redis_url:
        tiers.append(
            RedisCache(
                settings.redis_url,
                ttl_s=settings.cache_l2_ttl_s,
                max_entry_bytes=settings.cache_max_entry_bytes,
                timeout_s=settings.cache_redis_timeout_s,
            )
        )
    if settings.cache_l3_enabled:
        tiers.append(
            PersistentCache(
                engine,
                ttl_s=settings.cache_l3_ttl_s,
                max_bytes=settings.cache_l3_max_bytes,
                max_entry_bytes=settings.cache_max_entry_bytes,
                filter_refresh_s=settings.cache_l3_refresh_s,
            )
        )
    return ResponseCache(
        tiers, CacheMetrics(metrics.registry), flight_timeout_s=settings.upstream_read_timeout_s,
        close_timeout_s=settings.cache_close_timeout_s,
    )


def build_worker_count(settings: Settings, pool: WorkerPool, client: UpstreamClient
                       ) -> WorkerCount | None:
    """A vLLM model's exact prompt count from one of its workers' ``/tokenize`` (None:
    counting with the worker is off)."""
    if not settings.token_count_with_worker:
        return None

    async def counter(model: str, endpoint: str, request: dict) -> int | None:
        if encoding_name(model) is not None:
            return None  # OpenAI-family: tiktoken is already exact
        # any healthy worker of the model shares its tokenizer; reading the list
        # leaves routing state (loads, leases) alone
        worker = next((w for w in pool.workers if w.healthy and model in w.models), None)
        if worker is None:
            return None
        return await worker_count(client.post_json, worker.url, endpoint, model, request)

    return counter


def build_token_stages(settings: Settings, counter: WorkerCount | None
                       ) -> tuple[TokenPolicyStage, TokenOptimizationStage]:
    """The policy stage (first: a bad policy is a 400 even on a cache hit) and the
    optimisation stage (after the cache, before dispatch)."""
    embed = None
    if settings.token_optimization_embeddings:
        from services.embeddings import default_encoder

        embed = default_encoder(settings.embedding_encoder).encode
    return (
        TokenPolicyStage(settings.token_optimization_default,
                         settings.token_optimization_tenants),
        TokenOptimizationStage(TokenOptimizer(embed=embed), counter),
    )


def prefix_salt_key(settings: Settings) -> bytes | None:
    """The key per-tenant prefix-cache salts derive from, or None when vLLM's prefix
    cache is shared by all tenants."""
    if not settings.prefix_cache_per_tenant:
        return None
    key = settings.prefix_cache_salt_key.get_secret_value()
    if key:
        return key.encode()
    log.warning("prefix_cache_per_tenant without prefix_cache_salt_key: a random key for "
                "this process, so other replicas' requests of a tenant miss its prefixes")
    return secrets.token_bytes(32)


def build_services(settings: Settings) -> AppServices:
    engine = create_store_engine(settings.database_url)
    sessions = session_factory(engine)
    client = UpstreamClient(
        connect_timeout_s=settings.upstream_connect_timeout_s,
        read_timeout_s=settings.upstream_read_timeout_s,
        max_connections=settings.upstream_max_connections,
        keepalive_s=settings.upstream_keepalive_s,
    )
    catalog = PriceCatalog.from_settings(settings)
    metrics = GatewayMetrics()
    # the autoscaling decision, for KEDA / an HPA external metric (services/forecasting)
    metrics.registry.register(DesiredReplicasCollector(engine))
    pool = WorkerPool(
        client,
        health_interval_s=settings.health_interval_s,
        probe_failures_to_eject=settings.health_failures_to_eject,
        store_sync=store_sync(sessions),
        affinity_load_factor=settings.prefix_affinity_load_factor or None,
        on_models=lambda models: [catalog.register_self_hosted(m) for m in models],
        policy=settings.scheduling_policy,
        max_in_flight=settings.max_in_flight_per_worker,
        queue_timeout_s=settings.admission_queue_timeout_s,
        breaker_threshold=settings.breaker_failure_threshold,
        breaker_reset_s=settings.breaker_reset_s,
        metrics=AdmissionMetrics(metrics.registry),
    )
    salt_key = prefix_salt_key(settings)  # one per process: dispatch and warming agree
    warmer = None
    if settings.prefix_warm_enabled:
        warmer = PrefixWarmer(
            pool, client, lambda limit: load_warm_prefixes(engine, limit),
            max_prefixes=settings.prefix_warm_max_prefixes,
            max_tokens=settings.prefix_warm_max_tokens,
            max_kv_share=settings.prefix_warm_max_kv_share, salt_key=salt_key,
            registry=metrics.registry,
        )
        pool.on_join = warmer.worker_joined
    telemetry = TelemetryWriter(
        engine,
        spill_path=settings.spill_path,
        metrics=metrics,
        pricer=RequestPricer(catalog, ThroughputMeter(catalog)
                             if settings.self_hosted.measure_throughput else None),
        queue_size=settings.telemetry_queue_size,
        batch_size=settings.telemetry_batch_size,
        replay_interval_s=settings.telemetry_spill_replay_interval_s,
    )
    keyring = KeyRing(settings.api_keys, required=settings.auth_required, sessions=sessions,
                      refresh_interval_s=settings.api_key_refresh_s)
    cache = build_cache(settings, engine, metrics) if settings.cache_enabled else None
    cache_stage: CacheStage | None = None
    semantic_sync = None
    stages: list[Stage] = []
    rate_limit = build_rate_limit_stage(settings)
    if rate_limit is not None:  # first: a refused caller costs nothing further
        stages.append(rate_limit)
    experiments = ExperimentStage(settings.experiments_unit_max_chars) if (
        settings.experiments_enabled) else None
    if experiments is not None:  # next: its overrides feed every later stage
        stages.append(experiments)
    worker_counter = build_worker_count(settings, pool, client)
    token_stages = build_token_stages(settings, worker_counter) if (
        settings.token_optimization_enabled) else None
    if token_stages is not None:
        stages.append(token_stages[0])
    if cache is not None:
        semantic = semantic_store = None
        if settings.cache_semantic_enabled:
            from services.embeddings import default_encoder

            semantic = SemanticCache(encoder=default_encoder(settings.embedding_encoder),
                                     min_probability=settings.cache_semantic_min_probability,
                                     verifier_kind=settings.cache_semantic_verifier)
            semantic_store = SemanticStore(engine)
            semantic_sync = SemanticSync(semantic, semantic_store)
        cache_stage = CacheStage(
            cache,
            shared_namespaces=frozenset(settings.cache_shared_namespaces),
            semantic=semantic,
            semantic_store=semantic_store,
            semantic_tenants=frozenset(settings.cache_semantic_tenants),
            semantic_min_probability=settings.cache_semantic_tenant_min_probability,
            semantic_ttl_s=settings.cache_l3_ttl_s,
            close_timeout_s=settings.cache_semantic_close_timeout_s,
        )
        stages.append(cache_stage)
    routing, budget = build_routing_stage(
        settings, catalog, pool,
        lambda ctx: telemetry.submit(build_event(ctx, store_prompts=settings.store_prompts)),
        PromptCounter(worker_counter),
    )
    hosted: dict[str, HostedBackend] = {}  # hosted models are reached through routing
    stages.append(routing if routing is not None else budget)  # a key's limit holds either way
    if routing is not None:
        hosted = hosted_backends(settings, client,
                                 default_max_tokens=routing.policy.config.default_max_tokens)
    if token_stages is not None:
        stages.append(token_stages[1])
    stages.append(
        DispatchStage(
            pool,
            client,
            retries=settings.retry_on_connect_error,
            tenant_priorities=settings.tenant_priorities,
            expected_output_tokens=settings.expected_output_tokens,
            hosted=hosted,
            prefix_salt_key=salt_key,
            worker_pools=settings.worker_pools,
        )
    )
    pipeline = Pipeline(stages)
    serving = OpenAIServing(pipeline, telemetry, store_prompts=settings.store_prompts)
    flow_runs = FlowRuns(settings.prefect_api_url, timeout_s=settings.prefect_timeout_s)
    batches = BatchServing(engine, BatchLauncher(settings, engine, flow_runs=flow_runs),
                           max_file_bytes=settings.batch_max_file_bytes)
    return AppServices(
        settings=settings,
        engine=engine,
        sessions=sessions,
        client=client,
        pool=pool,
        keyring=keyring,
        metrics=metrics,
        telemetry=telemetry,
        serving=serving,
        batches=batches,
        flow_runs=flow_runs,
        cache=cache,
        cache_stage=cache_stage,
        semantic_sync=semantic_sync,
        routing=routing,
        budget=budget,
        warmer=warmer,
        tokens=token_stages[1] if token_stages is not None else None,
        experiments=experiments,
        rate_limit=rate_limit,
    )


def create_app(settings: Settings, *, freeze_heap: bool = False) -> FastAPI:
    """The gateway's ASGI app. ``freeze_heap`` (the ``serve`` command) moves every object
    alive once startup is done (modules, settings, services: about 300k objects) out of
    the garbage collector's reach with ``gc.freeze()``: otherwise each full collection,
    triggered about once a second under load by the objects of requests in flight, walks
    them all (about 150 ms each on this machine)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.auto_migrate:
            from migrations import upgrade_to_head

            try:
                await asyncio.to_thread(upgrade_to_head, settings.database_url)
            except Exception:  # a store that is down must not keep the gateway from serving
                log.warning("could not migrate the metrics store at startup", exc_info=True)
        services = build_services(settings)
        app.state.services = services
        await services.telemetry.start()
        await services.keyring.start()
        await services.pool.start(settings.workers)
        await services.batches.launcher.start()
        if services.cache is not None:
            await services.cache.start()
        if services.semantic_sync is not None:
            await services.semantic_sync.start()
        if services.routing is not None:
            await services.routing.start(lambda: load_active_router(services.engine),
                                         settings.router_refresh_s)
        if services.tokens is not None and settings.token_keep_marked_prefixes:
            await services.tokens.start(lambda: marked_prefix_hashes(services.engine),
                                        settings.token_marked_prefixes_refresh_s)
        if services.experiments is not None:
            await services.experiments.start(lambda: load_live(services.engine),
                                             settings.experiments_refresh_s)
        if freeze_heap:
            gc.collect()
            gc.freeze()
        log.info("gateway ready; stages: %s", " -> ".join(services.serving.stage_names))
        try:
            yield
        finally:
            await close_in_order(shutdown_steps(services))

    app = FastAPI(
        title="Performance Optimization Engine",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(HeaderLimit, max_bytes=settings.max_header_bytes)
    app.include_router(openai_router)
    app.include_router(batches_router)
    app.include_router(feedback_router)
    app.include_router(ops_router)
    app.include_router(admin_router)
    app.include_router(keys_router)
    app.include_router(experiments_router)
    app.include_router(flow_runs_router)
    return app
