"""Metrics-store tables.

``request_log`` is the one table every optimisation is judged by: one row per request
with what was asked, what served it, how long each part took and what it cost against
what it would have cost without the platform. Raw prompts are not stored unless
configured; ``prompt_hash`` lets flows find repeats without them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy import func as sql_func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


class RequestLog(Base):
    __tablename__ = "request_log"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    tenant: Mapped[str] = mapped_column(String(128))
    api_key_id: Mapped[str | None] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(64))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    model_requested: Mapped[str | None] = mapped_column(String(256))
    model_served: Mapped[str | None] = mapped_column(String(256))
    worker: Mapped[str | None] = mapped_column(String(512))
    cache_layer: Mapped[str | None] = mapped_column(
        String(32), doc="which cache tier answered (None = no cache hit)"
    )
    cache_age_s: Mapped[float | None] = mapped_column(
        Double, doc="age of the cache entry that answered (hits only)"
    )
    route_reason: Mapped[str | None] = mapped_column(String(256))
    cascade_score: Mapped[float | None] = mapped_column(
        Double, doc="the cascade judge's P(cheap answer is right), when a cascade judged one"
    )
    cascade_decision: Mapped[str | None] = mapped_column(
        String(16), doc="accepted | escalated | kept_late (no time to escalate) | cheap_failed"
    )
    status_code: Mapped[int] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(String(64))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    max_tokens: Mapped[int | None] = mapped_column(
        Integer, doc="the request's max_tokens (a feature of the batch length predictor)"
    )
    cached_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_write_tokens: Mapped[int | None] = mapped_column(
        Integer, doc="prompt tokens written to a hosted provider's prompt cache (Anthropic)"
    )
    prompt_tokens_before_optimization: Mapped[int | None] = mapped_column(Integer)
    prompt_tokens_after_optimization: Mapped[int | None] = mapped_column(
        Integer, doc="same counter as the before count, so their difference is the saving"
    )
    token_policy: Mapped[str | None] = mapped_column(
        String(64), doc="token optimisation policy applied (off | lossless | budget=N ...)"
    )
    token_stages: Mapped[dict | None] = mapped_column(JSON, doc="tokens saved per stage")
    ttft_ms: Mapped[float | None] = mapped_column(Double)
    tpot_ms: Mapped[float | None] = mapped_column(Double, doc="mean time per output token")
    latency_ms: Mapped[float | None] = mapped_column(Double)
    upstream_ms: Mapped[float | None] = mapped_column(Double)
    gateway_overhead_ms: Mapped[float | None] = mapped_column(Double)
    cost_usd: Mapped[float | None] = mapped_column(Double)
    baseline_cost_usd: Mapped[float | None] = mapped_column(
        Double, doc="cost of the same request with no optimisation, on the baseline model"
    )
    prompt_hash: Mapped[str | None] = mapped_column(String(64))
    prompt_text: Mapped[str | None] = mapped_column(Text)
    experiment_arms: Mapped[str | None] = mapped_column(
        String(512), doc="experiment=arm pairs the request was assigned to, comma-separated"
    )
    ingested_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), server_default=sql_func.now(),
        doc="when the store took the row (its own clock): the cost rollup's watermark. "
        "A row replayed from the spill file hours late has an old created_at but a new "
        "ingested_at, so the rollup still sees it",
    )

    __table_args__ = (
        Index("ix_request_log_created_at", "created_at"),
        Index("ix_request_log_ingested_at", "ingested_at"),
        Index("ix_request_log_tenant_created_at", "tenant", "created_at"),
        Index("ix_request_log_model_served_created_at", "model_served", "created_at"),
        Index("ix_request_log_prompt_hash", "prompt_hash"),
    )


class QuarantinedEvent(Base):
    """A telemetry event the store refused for its content (a value that does not fit
    its column), kept whole with the store's error instead of being retried forever:
    one bad row must never stop ``request_log`` for everyone else. Operators read it,
    fix the cause and may re-insert the event by hand."""

    __tablename__ = "telemetry_quarantine"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    quarantined_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    event_id: Mapped[str] = mapped_column(Text, doc="the event's request id, as sent")
    event: Mapped[str] = mapped_column(Text, doc="the whole event as JSON")
    error: Mapped[str] = mapped_column(Text, doc="what the store said")

    __table_args__ = (Index("ix_telemetry_quarantine_quarantined_at", "quarantined_at"),)


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    url: Mapped[str] = mapped_column(String(512), unique=True)
    models: Mapped[list[str]] = mapped_column(JSON, default=list)
    source: Mapped[str] = mapped_column(
        String(32), default="config", doc="config | registered | launched"
    )
    healthy: Mapped[bool] = mapped_column(Boolean, default=False)
    gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    pid: Mapped[int | None] = mapped_column(Integer)
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deregistered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, doc="sha256 hex of the key")
    key_prefix: Mapped[str] = mapped_column(String(16), doc="first characters, for display")
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str | None] = mapped_column(String(128))
    budget_usd: Mapped[float | None] = mapped_column(
        Double, doc="spending limit per budget_period; None = unlimited")
    budget_period: Mapped[str] = mapped_column(
        String(8), default="month", server_default="month", doc="day, month or total (UTC)")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CacheEntry(Base):
    """L3 of the response cache: compressed responses, shared by every replica and read
    by the cache optimisation flow (purge, warming, TTL advice)."""

    __tablename__ = "cache_entries"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(256))
    endpoint: Mapped[str] = mapped_column(String(64))
    value: Mapped[bytes] = mapped_column(LargeBinary, doc="zlib-compressed response")
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_hit_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    hit_count: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        Index("ix_cache_entries_expires_at", "expires_at"),
        Index("ix_cache_entries_created_at", "created_at"),  # replicas read new rows
        Index("ix_cache_entries_namespace", "namespace"),
        Index("ix_cache_entries_hit_count", "hit_count"),
    )


class Alert(Base):
    """Something a person should look at (the dashboard and /admin/alerts list them).

    An alert of a rule (services/alerts) is one row from the moment its condition
    first holds to its resolution: ``state`` pending -> firing -> resolved (or
    ``cleared`` when it stopped holding before ``for:`` was over). The open rows
    (pending, firing) are the alert engine's state: it resumes from them after a
    restart. ``alert_events`` keeps each change and its notification.
    """

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    source: Mapped[str] = mapped_column(String(64), doc="the flow that raised it")
    severity: Mapped[str] = mapped_column(String(16), doc="info | warning | critical")
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rule: Mapped[str | None] = mapped_column(String(128), doc="alert rule name")
    subject: Mapped[str] = mapped_column(
        String(512), default="", server_default="",
        doc="what the rule judged: overall, tenant=..., model=..., gpu=..., worker=...",
    )
    state: Mapped[str] = mapped_column(
        String(16), default="firing", server_default="firing",
        doc="pending | firing | resolved | cleared",
    )
    fired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), doc="last evaluation that judged it"
    )
    value: Mapped[float | None] = mapped_column(Double, doc="the metric at the last judgement")
    threshold: Mapped[float | None] = mapped_column(Double)

    __table_args__ = (
        Index("ix_alerts_created_at", "created_at"),
        Index("ix_alerts_state", "state"),
    )


class AlertEvent(Base):
    """One state change of an alert and the notification it owes (an outbox: written
    with the change, delivered after; an undelivered one is retried by the next
    evaluations, so a crash or a dead webhook loses no notification)."""

    __tablename__ = "alert_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    state: Mapped[str] = mapped_column(String(16), doc="the state entered")
    value: Mapped[float | None] = mapped_column(Double)
    message: Mapped[str] = mapped_column(Text)
    notify: Mapped[bool] = mapped_column(Boolean, default=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0)
    delivery: Mapped[list | None] = mapped_column(JSON, doc="per channel: ok, attempts, error")

    __table_args__ = (Index("ix_alert_events_delivered_at", "delivered_at"),)


class CacheReport(Base):
    """One run of the cache optimisation flow: hit ratios per tier against their targets,
    money saved, housekeeping done and TTL advice."""

    __tablename__ = "cache_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lookups: Mapped[int] = mapped_column(Integer)
    hits: Mapped[int] = mapped_column(Integer)
    overall_hit_rate: Mapped[float | None] = mapped_column(Double)
    layers: Mapped[dict] = mapped_column(
        JSON, doc="per tier: lookups, hits, hit_rate, target, meets_target"
    )
    saved_usd: Mapped[float] = mapped_column(Double, default=0.0)
    purged_entries: Mapped[int] = mapped_column(Integer, default=0)
    warmed_entries: Mapped[int] = mapped_column(Integer, default=0)
    ttl_recommendations: Mapped[dict] = mapped_column(JSON, default=dict)

    __table_args__ = (Index("ix_cache_reports_created_at", "created_at"),)


class SemanticEntry(Base):
    """The semantic cache's index, persisted: every replica rebuilds its in-memory index
    from these rows on start and follows new ones, so all replicas answer alike. Holds
    the last user message of opted-in tenants' cached requests (the text the verifier
    compares) and its embedding (re-embedding 100k texts on start would take too long)."""

    __tablename__ = "semantic_entries"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True, doc="exact cache key")
    namespace: Mapped[str] = mapped_column(String(256))
    context_hash: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    embedding: Mapped[bytes] = mapped_column(LargeBinary, doc="float32 little-endian vector")
    embedding_model: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_semantic_entries_created_at", "created_at"),
        Index("ix_semantic_entries_expires_at", "expires_at"),
    )


class TokenReport(Base):
    """One run of the token optimisation flow over a dataset, a prompt-template library or
    recent stored prompts: the reduction each stage earned and the quality kept."""

    __tablename__ = "token_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    source: Mapped[str] = mapped_column(String(512), doc="dataset path, 'templates', 'recent'")
    policy: Mapped[str] = mapped_column(String(64))
    encoding: Mapped[str] = mapped_column(String(64), doc="tokenizer the counts are in")
    samples: Mapped[int] = mapped_column(Integer)
    tokens_before: Mapped[int] = mapped_column(Integer)
    tokens_after: Mapped[int] = mapped_column(Integer)
    reduction: Mapped[float] = mapped_column(Double, doc="1 - after / before")
    quality: Mapped[float | None] = mapped_column(
        Double, doc="answer recall where the samples carry answers, else None"
    )
    stages: Mapped[dict] = mapped_column(JSON, doc="per stage: tokens_saved, share of before")
    ms_per_1k_tokens: Mapped[float | None] = mapped_column(Double)

    __table_args__ = (Index("ix_token_reports_created_at", "created_at"),)


class CacheablePrefix(Base):
    """A static prefix (system prompt, template, document) seen again and again: the
    token optimisation flow marks it cache-eligible. The gateway's prefix warming
    (``services.execution.warming``) reads it when a vLLM worker joins the pool and
    sends the worker the prefixes prefix affinity routes to it, from ``messages`` (rows
    without them, written while prompts were not stored, are not warmed; with per-tenant
    prefix caches, once per tenant in ``tenants``). The token stage sends a marked prefix
    upstream as written under every policy. ``hosted.to_anthropic`` places Anthropic
    breakpoints per request without it (below the provider's minimum length nothing is
    cached or billed as a write, and one reuse within the 5-minute TTL already repays a
    write: 1.25x + 0.1x < 2x)."""

    __tablename__ = "cacheable_prefixes"

    prefix_hash: Mapped[str] = mapped_column(String(64), primary_key=True, doc="sha256 hex")
    kind: Mapped[str] = mapped_column(String(32), doc="system_prompt | template | document")
    tokens: Mapped[int] = mapped_column(Integer)
    occurrences: Mapped[int] = mapped_column(Integer)
    text: Mapped[str | None] = mapped_column(Text, doc="only when prompts may be stored")
    messages: Mapped[list | None] = mapped_column(
        JSON(none_as_null=True),
        doc="the leading messages as requests send them (what prefix_hash hashes), only "
        "when prompts may be stored",
    )
    tenants: Mapped[list | None] = mapped_column(
        JSON(none_as_null=True),
        doc="the tenants that sent it, most frequent first (at most 64): per-tenant prefix "
        "caches are warmed once per tenant; NULL when the samples carried no tenant",
    )
    marked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RoutingLabel(Base):
    """One thing the router can learn from: did this prompt need the strong tier?

    Written by whatever learns it (user feedback, an A/B test's outcome, a reviewer);
    cascade outcomes are read straight from ``request_log``. Holds the prompt's text,
    so only tenants that allow storing prompts produce labels.
    """

    __tablename__ = "routing_labels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    source: Mapped[str] = mapped_column(String(32), doc="feedback | ab_test | review ...")
    request_id: Mapped[str | None] = mapped_column(String(64))
    prompt_text: Mapped[str] = mapped_column(Text)
    needs_strong: Mapped[bool] = mapped_column(Boolean)
    weight: Mapped[float] = mapped_column(Double, default=1.0)

    __table_args__ = (Index("ix_routing_labels_created_at", "created_at"),)


class RequestRating(Base):
    """A user's rating of one answer (``POST /v1/feedback``): 1 = perfect, 0 = useless
    (``good`` is 1, ``bad`` 0). One per request: rating it again replaces the score.
    Experiments compare the arms' mean rating; the router learns from the labels some
    ratings also give (``routing_labels``)."""

    __tablename__ = "request_ratings"

    request_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    score: Mapped[float] = mapped_column(Double)
    rated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RouterVersion(Base):
    """A trained complexity router; the gateway serves the one marked active (the shipped
    model when none is). The model itself is stored here, so every replica loads the
    same bytes."""

    __tablename__ = "router_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    model: Mapped[bytes] = mapped_column(LargeBinary, doc="the .npz file's bytes")
    labels: Mapped[int] = mapped_column(Integer, doc="labelled prompts it was trained on")
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class StoredFile(Base):
    """A file uploaded through ``/v1/files`` or written by a batch (its output and error
    files), kept in the store so every gateway replica and the batch flow see it."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    purpose: Mapped[str] = mapped_column(String(32), doc="batch | batch_output")
    filename: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_files_tenant_created_at", "tenant", "created_at"),)


class Batch(Base):
    """One batch job (OpenAI's batch object) and the bookkeeping of the flow running it:
    ``heartbeat_at`` is refreshed by the running flow, ``attempts`` counts starts, so a
    sweep can restart a crashed run a bounded number of times."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(ForeignKey("files.id"))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="validating")
    output_file_id: Mapped[str | None] = mapped_column(String(64))
    error_file_id: Mapped[str | None] = mapped_column(String(64))
    errors: Mapped[list | None] = mapped_column(JSON, doc="job-level errors (not line errors)")
    batch_metadata: Mapped[dict | None] = mapped_column(JSON)
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    in_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        Index("ix_batches_tenant_created_at", "tenant", "created_at"),
        Index("ix_batches_status", "status"),
    )


class BatchResult(Base):
    """One finished line of a batch (success or error), checkpointed as it finishes: the
    primary key (batch, line) is what makes a resumed run skip it and never write it
    twice."""

    __tablename__ = "batch_results"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True, doc="1-based input line")
    custom_id: Mapped[str | None] = mapped_column(String(512))
    ok: Mapped[bool] = mapped_column(Boolean)
    record: Mapped[str] = mapped_column(Text, doc="the output (or error) JSONL record")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ConfigVersion(Base):
    """A named, immutable set of overrides of the per-request settings (cache, semantic
    threshold, token policy, routing, serving model): what an experiment arm applies."""

    __tablename__ = "config_versions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    overrides: Mapped[dict] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))


class ConfigAudit(Base):
    """Who changed what and when: every config and experiment change, manual or by the
    ``experiments`` flow."""

    __tablename__ = "config_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_config_audit_subject_at", "subject", "at"),)


class Experiment(Base):
    """An A/B test or a canary rollout; gateways serve the ones whose status is
    running, paused or promoted. A canary's ``steps`` are its treatment shares; ``step``
    indexes the current one."""

    __tablename__ = "experiments"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), doc="ab | canary")
    status: Mapped[str] = mapped_column(String(16), doc="draft | running | paused | "
                                        "promoted | rolled_back | aborted | completed")
    unit: Mapped[str] = mapped_column(String(16), doc="tenant | api_key | header")
    tenants: Mapped[list | None] = mapped_column(JSON, doc="tenants in scope; None = all")
    settings: Mapped[list] = mapped_column(JSON, doc="the settings its arms override")
    steps: Mapped[list | None] = mapped_column(JSON)
    step: Mapped[int] = mapped_column(Integer, default=0)
    step_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    step_seconds: Mapped[float] = mapped_column(Double, default=300.0)
    min_samples: Mapped[int] = mapped_column(Integer, default=200)
    guardrails: Mapped[list] = mapped_column(JSON)
    alpha: Mapped[float] = mapped_column(Double, default=0.05)
    p_values: Mapped[dict | None] = mapped_column(JSON, doc="running always-valid p")
    reason: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_experiments_status", "status"),)


class ExperimentArm(Base):
    """An arm: a config version and its share of the units (weights sum to 1)."""

    __tablename__ = "experiment_arms"

    experiment: Mapped[str] = mapped_column(ForeignKey("experiments.name"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, doc="order of the arms' hash ranges")
    config_version: Mapped[str] = mapped_column(ForeignKey("config_versions.name"))
    weight: Mapped[float] = mapped_column(Double)


class ExperimentResult(Base):
    """One analysis of an experiment by the ``experiments`` flow (or on demand):
    per-arm counts, comparisons with effect sizes and confidence sequences, the
    decision taken."""

    __tablename__ = "experiment_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    experiment: Mapped[str] = mapped_column(ForeignKey("experiments.name"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    step: Mapped[int] = mapped_column(Integer)
    decision: Mapped[str] = mapped_column(String(16), doc="hold | advance | promote | rollback")
    reason: Mapped[str] = mapped_column(String(512))
    detail: Mapped[dict] = mapped_column(JSON)

    __table_args__ = (Index("ix_experiment_results_experiment_at", "experiment", "at"),)


class CostRollup(Base):
    """``request_log`` summed per hour x tenant x model x upstream x lever, with the
    saving of every lever already attributed (``services.costs.reports``): reports, the
    dashboard and alerts read these rows, never the raw log. ``lever`` is the path the
    requests took (cache_exact, cache_semantic, batch, routed, direct, cascade_escalated);
    the ``saved_*`` columns of one row sum to ``baseline_usd - cost_usd``."""

    __tablename__ = "cost_rollups"

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True, doc="'' = none recorded")
    upstream: Mapped[str] = mapped_column(String(512), primary_key=True, doc="'' = none")
    lever: Mapped[str] = mapped_column(String(32), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, doc="rows (an escalated attempt is one)")
    errors: Mapped[int] = mapped_column(BigInteger, doc="rows with status >= 400")
    unpriced: Mapped[int] = mapped_column(
        BigInteger, doc="rows with usage but no price (cost_usd NULL): left out of the sums"
    )
    priced: Mapped[int] = mapped_column(BigInteger, doc="rows in the cost and saving sums")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, doc="as billed (after optimisation)")
    prompt_tokens_before: Mapped[int] = mapped_column(BigInteger, doc="as the client sent them")
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[float] = mapped_column(Double, doc="actual, priced rows only")
    baseline_usd: Mapped[float] = mapped_column(Double, doc="baseline of the priced rows")
    saved_cache_exact_usd: Mapped[float] = mapped_column(Double)
    saved_cache_semantic_usd: Mapped[float] = mapped_column(Double)
    saved_token_optimization_usd: Mapped[float] = mapped_column(Double)
    saved_routing_usd: Mapped[float] = mapped_column(Double)
    saved_self_hosting_usd: Mapped[float] = mapped_column(Double)
    saved_batch_usd: Mapped[float] = mapped_column(Double)
    saved_model_choice_usd: Mapped[float] = mapped_column(
        Double, doc="the caller's own choice of a model other than the baseline (no lever)"
    )
    # what the cache page draws (every row, priced or not); 0 on rows written before
    # these columns existed, so adding them resets the watermark (the next run redoes all)
    hits_l1: Mapped[int] = mapped_column(BigInteger, server_default="0")
    hits_l2: Mapped[int] = mapped_column(BigInteger, server_default="0")
    hits_l3: Mapped[int] = mapped_column(BigInteger, server_default="0")
    hits_semantic: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_misses: Mapped[int] = mapped_column(BigInteger, server_default="0")
    measured_tokens_before: Mapped[int] = mapped_column(
        BigInteger, server_default="0",
        doc="prompt tokens before optimisation, rows with both before and after recorded")
    measured_tokens_after: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cascade_escalated: Mapped[int] = mapped_column(
        BigInteger, server_default="0",
        doc="cheap attempts the cascade escalated (a cache hit's among them: lever is the path)")
    cascade_accepted: Mapped[int] = mapped_column(
        BigInteger, server_default="0", doc="cheap attempts the cascade accepted")
    routed: Mapped[int] = mapped_column(
        BigInteger, server_default="0", doc="rows the router chose a model for (not batch)")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_cost_rollups_tenant_hour", "tenant", "hour"),)


class KeyCostRollup(Base):
    """``request_log`` spend per hour x API key, written by the same rollup run and
    transaction as ``cost_rollups`` (rows without a key are left out): what the cost
    reports hold against each key's budget. A revoked key's rows stay."""

    __tablename__ = "key_cost_rollups"

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    requests: Mapped[int] = mapped_column(
        BigInteger, doc="requests made with the key (escalated cascade attempts not counted)")
    errors: Mapped[int] = mapped_column(BigInteger, doc="rows with status >= 400")
    cost_usd: Mapped[float] = mapped_column(
        Double, doc="actual spend, escalated attempts included (as the key's budget counts)")

    __table_args__ = (Index("ix_key_cost_rollups_api_key_id_hour", "api_key_id", "hour"),)


class CostRollupState(Base):
    """The cost rollup's watermark: the newest ``request_log.ingested_at`` it has read."""

    __tablename__ = "cost_rollup_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    watermark: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CostReport(Base):
    """One cost report (daily, weekly, monthly or on demand) for a tenant or overall
    (``tenant`` NULL), kept as the Markdown and CSV it was published as."""

    __tablename__ = "cost_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(16), doc="daily | weekly | monthly | adhoc")
    tenant: Mapped[str | None] = mapped_column(String(128), doc="NULL = all tenants")
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    markdown: Mapped[str] = mapped_column(Text)
    csv: Mapped[str] = mapped_column(Text)
    summary: Mapped[dict] = mapped_column(JSON, doc="the headline figures, for the dashboard")

    __table_args__ = (Index("ix_cost_reports_period_start", "period_start"),)
class ScalingDecision(Base):
    """One autoscaling decision for one model (``demand_forecasting`` flow): the fleet it
    found, what it asked for, what the forecast and the measurements said, and why.
    ``actuated`` records whether the actuator carried it out (error text when not)."""

    __tablename__ = "scaling_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    model: Mapped[str] = mapped_column(String(256))
    current_replicas: Mapped[int] = mapped_column(Integer)
    desired_replicas: Mapped[int] = mapped_column(Integer)
    reactive_replicas: Mapped[int] = mapped_column(Integer)
    predictive_replicas: Mapped[int | None] = mapped_column(Integer)
    forecaster: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    inputs: Mapped[dict] = mapped_column(JSON, default=dict)
    actuated: Mapped[bool] = mapped_column(Boolean, default=False)
    actuator_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_scaling_decisions_model_decided_at", "model", "decided_at"),)


class ForecastScore(Base):
    """A forecaster's backtest error on one model's demand series at one horizon
    (``forecast_backtest`` flow); ``chosen`` marks the one the policy uses."""

    __tablename__ = "forecast_scores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    evaluated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    model: Mapped[str] = mapped_column(String(256))
    series: Mapped[str] = mapped_column(String(64), doc="e.g. tokens_10s")
    forecaster: Mapped[str] = mapped_column(String(64))
    horizon_s: Mapped[int] = mapped_column(Integer)
    wape: Mapped[float | None] = mapped_column(Double)
    smape: Mapped[float | None] = mapped_column(Double)
    coverage: Mapped[float | None] = mapped_column(Double, doc="share inside the 90% interval")
    origins: Mapped[int] = mapped_column(Integer)
    chosen: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (Index("ix_forecast_scores_model_evaluated_at", "model", "evaluated_at"),)


class WorkerLaunch(Base):
    """A worker an actuator started: when it was asked for and when it became healthy
    (or failed). The cold-start estimate is measured from these rows; a launch that never
    became healthy counts against it."""

    __tablename__ = "worker_launches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(256))
    url: Mapped[str] = mapped_column(String(512))
    pid: Mapped[int | None] = mapped_column(Integer)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    healthy_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_worker_launches_model_requested_at", "model", "requested_at"),)
