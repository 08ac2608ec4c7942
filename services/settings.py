"""All configuration in one place.

One pydantic-settings class, read from the environment (prefix ``OPTENGINE_``) and,
optionally, a YAML file named by ``OPTENGINE_CONFIG``; the environment wins over the
file. Nothing else in the code base reads ``os.environ``. The defaults run with no
setup at all: a SQLite file under ``./data``, no Redis, dev mode (no API key needed).
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from services.execution.admission import PriorityClass
from services.execution.scheduling import SchedulingPolicy

_DEFAULT_DATA_DIR = Path("data")


class ModelPrice(BaseModel):
    """A user's price override for one model, in USD per million tokens."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    cache_write_per_mtok: float | None = Field(
        default=None, ge=0,
        description="prompt-cache writes (Anthropic: 1.25x input); default the input price",
    )


class SelfHostedPricing(BaseModel):
    """How a self-hosted (vLLM) model is priced when no per-token price is configured.

    A GPU-hour price is turned into a per-token price at the worker's measured output
    throughput; input tokens are charged at ``input_cost_ratio`` of an output token,
    because prefill is far cheaper per token than decoding.
    """

    gpu_hour_usd: float = Field(default=2.0, ge=0)
    gpu_name: str = Field(
        default="unnamed GPU",
        description="the GPU gpu_hour_usd and default_output_tokens_per_second describe "
        "(shown where a self-hosted price is explained)",
    )
    gpus_per_worker: int = Field(default=1, ge=1)
    default_output_tokens_per_second: float = Field(default=1000.0, gt=0)
    input_cost_ratio: float = Field(default=0.1, ge=0)
    measure_throughput: bool = Field(
        default=True,
        description="price at the throughput the gateway measures; false keeps "
        "default_output_tokens_per_second (a known figure, or a benchmark's fixed price)",
    )


class WebhookChannel(BaseModel):
    """One webhook that notifications (alerts, cost reports) are posted to."""

    url: str = Field(description="http(s) URL the notification is POSTed to")
    format: Literal["slack", "json"] = Field(
        default="json",
        description='slack: {"text": ...} (Slack, Mattermost, Teams-compatible); '
        "json: the whole notification as a JSON object",
    )
    headers: dict[str, str] = Field(default_factory=dict, description="e.g. an auth header")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL {value!r} must start with http:// or https://")
        return value


class SmtpSettings(BaseModel):
    """The SMTP server notifications are mailed through; no host = no email."""

    host: str = ""
    port: int = Field(default=587, gt=0, lt=65536)
    user: str = ""
    password: SecretStr = SecretStr("")
    sender: str = Field(default="optengine@localhost", description="the From address")
    to: list[str] = Field(default_factory=list, description="recipients")
    starttls: bool = Field(default=True, description="upgrade the connection with STARTTLS")
    ca_file: Path | None = Field(
        default=None, description="CA bundle to verify the server (None = the system's)"
    )


class DeliverySettings(BaseModel):
    """Where notifications go and how hard delivery tries (services/delivery).

    A notification is sent to every webhook and, when SMTP is configured, by email.
    Each attempt is bounded by ``timeout_s``; failed attempts are retried with
    exponential backoff, and the whole delivery by ``deadline_s``, so a dead receiver
    costs its caller at most that long.
    """

    webhooks: dict[str, WebhookChannel] = Field(
        default_factory=dict, description="name -> webhook"
    )
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    timeout_s: float = Field(default=5.0, gt=0, description="one attempt")
    retries: int = Field(default=2, ge=0, description="attempts after the first")
    backoff_s: float = Field(default=0.5, ge=0, description="first retry delay (then x2)")
    deadline_s: float = Field(default=15.0, gt=0, description="all attempts of one channel")


AlertMetric = Literal[
    "cache_hit_rate", "error_rate", "latency_p95_ms", "ttft_p95_ms", "cost_per_request_usd",
    "budget_used", "gpu_utilization", "kv_cache_usage", "cost_anomaly", "request_anomaly",
    "scaling_actuator_failures",
]
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_s(value: Any) -> Any:
    """'90s', '5m', '1h' or a number of seconds."""
    if isinstance(value, str) and value and value[-1] in _DURATION_UNITS:
        return float(value[:-1]) * _DURATION_UNITS[value[-1]]
    return value


class AlertRuleConfig(BaseModel):
    """One alert rule: a metric, a threshold (``below`` or ``above``), how long it must
    hold (``for``) and how far back it must come to resolve (``hysteresis``).

    ``group_by`` judges request metrics per tenant or per model instead of overall;
    ``thresholds`` overrides the threshold for one tenant or model
    (``{"tenant:acme": 0.4}``); ``tenants``/``models`` limit the rule to those. Budget,
    GPU, KV-cache and anomaly rules have their own subjects (budget scope, GPU, worker,
    tenant/model/lever series). Names are checked against the known tenants and models
    when the alert engine loads (services/alerts).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=128)
    metric: AlertMetric
    below: float | None = None
    above: float | None = None
    for_s: float = Field(default=0.0, ge=0, alias="for",
                         description="how long the condition must hold before firing")
    hysteresis: float = Field(
        default=0.0, ge=0,
        description="a firing alert resolves only once the value is this far past the "
        "threshold, so a value hovering at it does not flap",
    )
    severity: Literal["info", "warning", "critical"] = "warning"
    group_by: Literal["overall", "tenant", "model"] = "overall"
    tenants: list[str] = Field(default_factory=list, description="only these (empty = all)")
    models: list[str] = Field(default_factory=list, description="only these (empty = all)")
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="'tenant:NAME' or 'model:NAME' -> threshold"
    )
    min_requests: int = Field(default=20, ge=1,
                              description="request metrics: fewer requests = no judgement")

    @field_validator("for_s", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _duration_s(value)

    @model_validator(mode="after")
    def _one_direction(self) -> AlertRuleConfig:
        if (self.below is None) == (self.above is None):
            raise ValueError(f"alert rule {self.name!r}: give exactly one of below/above")
        for key in self.thresholds:
            kind, _, name = key.partition(":")
            if kind not in {"tenant", "model"} or not name:
                raise ValueError(f"alert rule {self.name!r}: threshold key {key!r} must be "
                                 "'tenant:NAME' or 'model:NAME'")
        return self


def _default_alert_rules() -> list[AlertRuleConfig]:
    """The spec's rules: cache hit rate < 60%, latency p95 > 200 ms, error rate > 1%,
    GPU utilisation < 85% (only where GPUs exist), budgets at 80% and 100%, and
    anomalies in hourly cost and requests; any failed scaling actuation. Cost per request
    needs a target: add it."""
    return [AlertRuleConfig.model_validate(raw) for raw in (
        {"name": "cache-hit-rate-low", "metric": "cache_hit_rate", "below": 0.60,
         "for": "10m", "hysteresis": 0.05},
        {"name": "latency-p95-high", "metric": "latency_p95_ms", "above": 200,
         "for": "5m", "hysteresis": 20},
        {"name": "error-rate-high", "metric": "error_rate", "above": 0.01, "for": "5m",
         "hysteresis": 0.005, "severity": "critical"},
        {"name": "gpu-utilization-low", "metric": "gpu_utilization", "below": 0.85,
         "for": "15m", "hysteresis": 0.05, "severity": "info"},
        {"name": "budget-80", "metric": "budget_used", "above": 0.8, "hysteresis": 0.05},
        {"name": "budget-100", "metric": "budget_used", "above": 1.0, "hysteresis": 0.05,
         "severity": "critical"},
        {"name": "cost-anomaly", "metric": "cost_anomaly", "above": 8.0, "group_by": "model"},
        {"name": "request-anomaly", "metric": "request_anomaly", "above": 8.0,
         "group_by": "model"},
        {"name": "scaling-actuator-failed", "metric": "scaling_actuator_failures",
         "above": 0, "severity": "critical"},
    )]


class AlertSettings(BaseModel):
    """The alert engine (services/alerts, flow ``alerting``)."""

    enabled: bool = True
    rules: list[AlertRuleConfig] = Field(default_factory=_default_alert_rules)
    window_minutes: float = Field(
        default=5.0, gt=0, description="request metrics judge this many recent minutes"
    )
    anomaly_history_days: int = Field(
        default=28, ge=2, description="hourly history the anomaly detector learns from"
    )
    notify_pending: bool = Field(
        default=False, description="also notify when a rule starts pending (else: firing "
        "and resolved only)",
    )
    delivery_attempts: int = Field(
        default=5, ge=1,
        description="evaluations that retry an undelivered notification before giving up",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> AlertSettings:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"alert rule names must be unique: {duplicates}")
        return self


class YamlConfigSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by ``OPTENGINE_CONFIG`` (or passed as ``_config_file``)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path is not None:
            if not path.is_file():
                raise FileNotFoundError(f"config file {path} does not exist")
            loaded = yaml.safe_load(path.read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"config file {path} must hold a mapping at the top level")
            self._data = loaded

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._data.items() if k in self.settings_cls.model_fields}


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPTENGINE_", extra="ignore")

    env: Literal["dev", "test", "prod"] = Field(
        default="dev", description="prod refuses dev-only conveniences (no auth, default keys)"
    )
    config: Path | None = Field(default=None, description="optional YAML config file")
    data_dir: Path = Field(default=_DEFAULT_DATA_DIR, description="local state: SQLite, spills")

    # metrics store
    database_url: str = Field(default="", description="SQLAlchemy URL; empty = SQLite in data_dir")

    # L2 cache and shared counters (later issues); empty = disabled
    redis_url: str = ""

    # gateway
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="static keys 'key' or 'key:tenant' for dev and benchmarks",
    )
    require_auth: bool | None = Field(
        default=None, description="None = required when any key exists or env is prod"
    )
    api_key_refresh_s: float = Field(
        default=10.0, gt=0, description="how often each gateway re-reads the stored API keys: "
        "a new, updated or revoked key takes effect within this many seconds",
    )
    admin_api_key: str = Field(
        default="", description="Bearer key of the admin API; empty = open in dev, off otherwise"
    )
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    # request limits and what operations endpoints show (README "Limits and protection")
    max_header_bytes: int = Field(
        default=32 * 1024, gt=0, description="all request headers together; larger is a 431"
    )
    ops_details_public: bool | None = Field(
        default=None, description="/metrics and /readyz details without the admin key; "
        "None = public unless env is prod"
    )
    rate_limit_rps: float = Field(default=0.0, ge=0, description="per API key; 0 = no limit")
    rate_limit_burst: float = Field(default=20.0, ge=1, description="requests at once")
    rate_limit_tenants: dict[str, dict[str, float]] = Field(
        default_factory=dict, description='tenant -> {"rps": R, "burst": B} for its keys'
    )
    rate_limit_redis_timeout_s: float = Field(default=0.1, gt=0)
    auto_migrate: bool = Field(default=True, description="upgrade the store schema on start")

    # upstream workers
    workers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="OpenAI-compatible base URLs, models discovered"
    )
    upstream_connect_timeout_s: float = 5.0
    upstream_read_timeout_s: float = 300.0
    upstream_max_connections: int = Field(
        default=512, ge=0,
        description="connections open to one upstream at once (0 = no limit); a request "
                    "waits up to upstream_connect_timeout_s for one, then gets a 503",
    )
    upstream_keepalive_s: float = Field(
        default=4.0, gt=0,
        description="drop idle upstream connections after this; below vLLM's (uvicorn's) 5 s",
    )
    health_interval_s: float = 5.0
    health_failures_to_eject: int = Field(
        default=3, ge=1, description="failed probes in a row before a worker is ejected"
    )
    retry_on_connect_error: int = Field(
        default=1, ge=0,
        description="retries on another worker after a connect error or a 502/503 answer",
    )
    scheduling_policy: SchedulingPolicy = Field(
        default="least_outstanding_tokens",
        description="least_outstanding_tokens | power_of_two | least_outstanding_requests",
    )
    expected_output_tokens: int = Field(
        default=256, gt=0, description="output tokens assumed for a request without max_tokens"
    )
    breaker_failure_threshold: int = Field(
        default=3, ge=1, description="failed requests in a row that open a worker's circuit"
    )
    breaker_reset_s: float = Field(
        default=10.0, gt=0, description="open circuit: seconds until one probe request may pass"
    )
    max_in_flight_per_worker: int = Field(
        default=64, ge=0,
        description="requests one worker takes at once (its batch; vLLM's own limit, "
                    "--max-num-seqs, is 128 on CPU and more on GPUs); more wait; 0 = no cap",
    )
    admission_queue_timeout_s: float = Field(
        default=30.0, gt=0,
        description="longest wait for a worker slot before 503 overloaded with Retry-After",
    )
    worker_pools: dict[str, list[str]] = Field(
        default_factory=dict,
        description="named groups of worker URLs an experiment arm can send its requests "
        "to (config override worker_pool), e.g. a pool per vLLM version: "
        "{vllm-0-32: [http://w1:8000]}",
    )
    tenant_priorities: dict[str, PriorityClass] = Field(
        default_factory=dict,
        description="tenant -> high | normal | low (default normal); X-Priority may only lower",
    )
    shutdown_grace_s: float = Field(
        default=20.0, gt=0,
        description="on SIGTERM, how long requests in flight may finish; past it they are "
        "cancelled and recorded (503 gateway_shutdown) before the services close",
    )
    worker_drain_timeout_s: float = Field(
        default=60.0, gt=0,
        description="how long draining a worker waits for its requests in flight",
    )
    prefix_affinity_load_factor: float = Field(
        default=1.25, ge=0,
        description="route shared prefixes to one worker up to this x mean load; 0 = off",
    )
    prefix_cache_per_tenant: bool = Field(
        default=False,
        description="salt vLLM's prefix cache per tenant (vLLM cache_salt), so no tenant "
        "can time another's cached prompts; prefix warming is then off",
    )
    prefix_cache_salt_key: SecretStr = Field(
        default=SecretStr(""),
        description="secret the per-tenant salts derive from; the same on every replica "
        "(empty: a random key per process, so replicas do not share a tenant's prefixes)",
    )
    prefix_warm_enabled: bool = Field(
        default=True,
        description="fill a joining vLLM worker's prefix cache with the cacheable_prefixes "
        "affinity routes to it",
    )
    prefix_warm_max_prefixes: int = Field(default=32, ge=1,
                                          description="most prefixes warmed per joining worker")
    prefix_warm_max_tokens: int = Field(
        default=32_768, ge=1, description="most prefix tokens warmed per joining worker"
    )
    prefix_warm_max_kv_share: float = Field(
        default=0.5, gt=0, le=1,
        description="most of a joining vLLM worker's KV cache (from its /metrics) that "
        "warming may fill, so live traffic keeps room",
    )

    # batch inference (/v1/files, /v1/batches, the parallel_execution flow)
    batch_max_file_bytes: int = Field(default=200 * 1024 * 1024, gt=0,
                                      description="largest /v1/files upload (413 above)")
    batch_per_worker_in_flight: int = Field(
        default=64, gt=0, description="batch lines kept in flight per healthy worker"
    )
    batch_stale_after_s: float = Field(
        default=60.0, gt=0, description="a run silent this long is restarted by the sweep"
    )
    batch_max_attempts: int = Field(default=3, ge=1, description="runs per batch before failing")
    batch_sweep_interval_s: float = Field(default=30.0, gt=0)

    # costs
    price_overrides: dict[str, ModelPrice] = Field(default_factory=dict)
    self_hosted: SelfHostedPricing = Field(default_factory=SelfHostedPricing)
    baseline_model: str = Field(
        default="gpt-4o-mini",
        description="hosted model a request would have gone to without this platform",
    )

    # cost rollups and reports (services/costs/reports, flow cost_management)
    cost_rollup_overlap_s: float = Field(
        default=600.0, ge=0,
        description="each rollup re-reads rows ingested this long before its watermark, so "
        "a writer transaction that committed late is not missed",
    )
    cost_investment_one_off_usd: float = Field(default=0.0, ge=0,
                                               description="one-off investment, for ROI")
    cost_investment_monthly_usd: float = Field(
        default=0.0, ge=0, description="running cost per month (GPU hours...), for ROI"
    )
    cost_monthly_budget_usd: float | None = Field(
        default=None, gt=0, description="all tenants' monthly budget in reports (tenants' "
        "own: routing.budgets)",
    )
    cost_report_top_models: int = Field(default=5, ge=1)
    cost_report_delivery: bool = Field(
        default=True,
        description="send each daily/weekly/monthly all-tenants report (Markdown, CSV "
        "attached) to the delivery channels (webhooks, email) when any is configured",
    )

    # model routing (services/routing/config.py: tiers, models, budgets, cascade); empty = off
    routing: dict[str, Any] = Field(default_factory=dict, description="routing config (YAML)")
    router_refresh_s: float = Field(
        default=60.0, gt=0,
        description="how often the gateway re-reads the active router version",
    )
    budget_redis_timeout_s: float = Field(
        default=1.0, gt=0, description="longest wait for the budgets' Redis before a 503"
    )
    budget_unavailable_retry_after_s: int = Field(
        default=5, ge=1, description="Retry-After of a 503 budget_unavailable (Redis down)"
    )
    openai_api_key: SecretStr = SecretStr("")
    openai_base_url: str = "https://api.openai.com"
    anthropic_api_key: SecretStr = SecretStr("")
    anthropic_base_url: str = "https://api.anthropic.com"

    # response cache (exact tiers)
    cache_enabled: bool = True
    cache_l1_max_bytes: int = Field(default=1 << 30, gt=0)
    cache_l1_ttl_s: float = Field(default=300.0, gt=0)
    cache_max_entry_bytes: int = Field(default=1 << 20, gt=0, description="per-entry cap")
    cache_l2_ttl_s: float = Field(default=3600.0, gt=0)
    cache_redis_timeout_s: float = Field(default=0.1, gt=0)
    cache_l3_enabled: bool = True
    cache_l3_ttl_s: float = Field(default=86400.0, gt=0)
    cache_l3_max_bytes: int = Field(default=100 * 1024**3, gt=0)
    cache_l3_refresh_s: float = Field(
        default=2.0, gt=0,
        description="how often L3 reads other replicas' new entries and writes hit counts",
    )
    cache_shared_namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="X-Cache-Namespace values shared across tenants"
    )
    cache_semantic_enabled: bool = Field(
        default=True, description="load the semantic cache (used per tenant or request)"
    )
    cache_semantic_tenants: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="tenants opted in to semantic hits ('*' = all)"
    )
    cache_semantic_min_probability: float | None = Field(
        default=None, ge=0, le=1,
        description="verifier acceptance threshold; None = the one calibrated for precision",
    )
    cache_semantic_tenant_min_probability: dict[str, Annotated[float, Field(ge=0, le=1)]] = (
        Field(default_factory=dict,
              description="per-tenant verifier threshold, e.g. {support-bot: 0.5}; other "
              "tenants use cache_semantic_min_probability")
    )
    cache_close_timeout_s: float = Field(
        default=10.0, gt=0,
        description="how long shutdown waits for response-cache writes still queued for "
        "the shared tiers (Redis, persistent); past it they are logged and dropped",
    )
    cache_semantic_close_timeout_s: float = Field(
        default=10.0, gt=0,
        description="how long shutdown waits for the semantic-index writes still queued; "
        "past it they are logged and dropped",
    )
    cache_semantic_verifier: Literal["cross-encoder", "cross-encoder-static", "features"] = Field(
        default="features",
        description="what accepts a semantic candidate: the feature model over the cosine "
        "(calibrated for precision 0.95), the shipped cross-encoder (reads both "
        "questions; two-stage lookup; calibrated for labelled-hit precision 0.95), or the "
        "same cross-encoder combined with the static cosine (no MiniLM pass; its "
        "calibration does not reach 0.95, see docs/benchmarks.md)",
    )
    embedding_encoder: Literal["onnx-int8", "onnx-fp32", "numpy"] = Field(
        default="onnx-int8",
        description="all-MiniLM-L6-v2 runtime (services.embeddings.ENCODER_KINDS): ONNX "
        "Runtime with int8 or fp32 weights, or the NumPy reference",
    )

    # token optimisation (policies: off | lossless | budget=N | ratio=R)
    token_optimization_enabled: bool = Field(
        default=True, description="run the token stages (the default policy decides)"
    )
    token_optimization_default: str = Field(
        default="off", description="policy of tenants not listed below (header wins)"
    )
    token_optimization_tenants: dict[str, str] = Field(
        default_factory=dict, description="per-tenant policy, e.g. {team-a: lossless}"
    )
    token_optimization_embeddings: bool = Field(
        default=False,
        description="add MiniLM scores to BM25 in lossy stages (~2 s per 1k tokens on CPU)",
    )
    token_count_with_worker: bool = Field(
        default=True, description="record vLLM models' counts from the worker's /tokenize"
    )
    token_keep_marked_prefixes: bool = Field(
        default=True,
        description="send leading system messages that cacheable_prefixes marks as "
        "written, under every policy (the upstream caches them)",
    )
    cacheable_prefix_retention_days: float = Field(
        default=7.0, gt=0,
        description="cacheable_prefixes rows the token_optimization flow has not marked "
        "again for this long are dropped",
    )
    token_marked_prefixes_refresh_s: float = Field(
        default=60.0, gt=0, description="how often the gateway re-reads cacheable_prefixes"
    )

    # experiments and canary rollouts (services/experiments)
    experiments_enabled: bool = Field(
        default=True, description="run the experiment stage (assigns requests to arms)"
    )
    experiments_refresh_s: float = Field(
        default=2.0, gt=0,
        description="how often replicas re-read live experiments (a rollback's reach)",
    )
    experiments_unit_max_chars: int = Field(
        default=256, gt=0, description="longest X-Experiment-Unit header accepted (else 400)"
    )

    # notification delivery (alerts, cost reports): webhooks and SMTP
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)

    # alert engine (services/alerts, flow alerting)
    alerts: AlertSettings = Field(default_factory=AlertSettings)

    # telemetry
    telemetry_queue_size: int = Field(default=10_000, gt=0)
    telemetry_batch_size: int = Field(default=500, gt=0)
    telemetry_spill_replay_interval_s: float = Field(default=5.0, gt=0)
    store_prompts: bool = Field(default=False, description="store raw prompts (off: hashes only)")

    # dashboard (`optengine dashboard`: Streamlit, read-only on the store)
    dashboard_database_url: str = Field(
        default="", description="store URL the dashboard reads, ideally as a read-only "
        "role; empty = database_url (opened read-only either way)",
    )
    dashboard_password: SecretStr = Field(
        default=SecretStr(""), description="password of the dashboard; empty = the admin "
        "API key; neither = open in dev, off when auth is required",
    )
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = Field(default=8501, gt=0, lt=65536)
    dashboard_cache_ttl_s: float = Field(
        default=60.0, gt=0, description="how long a page reuses a query's result"
    )
    dashboard_sample_rows: int = Field(
        default=20_000, gt=0,
        description="newest rows percentiles and per-stage token savings are computed from",
    )

    # Prefect server (deployments, API-triggered flows, batches); empty = none configured
    prefect_api_url: str = Field(
        default="", validation_alias=AliasChoices("OPTENGINE_PREFECT_API_URL", "PREFECT_API_URL"),
        description="Prefect API, e.g. http://127.0.0.1:4200/api (PREFECT_API_URL works too)",
    )
    prefect_timeout_s: float = Field(default=10.0, gt=0, description="per Prefect API call")

    # vLLM workers started by `optengine worker`
    vllm_python: Path = Field(default=Path(".venv-vllm/bin/python"))
    vllm_startup_timeout_s: float = 300.0
    vllm_cpu_kvcache_gib: int = 2
    vllm_speculative_config: dict[str, Any] | None = Field(
        default=None,
        description="vLLM --speculative-config as JSON, e.g. "
        '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}',
    )
    vllm_extra_args: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="more vLLM arguments, shell-quoted in one string; they override ours",
    )

    # demand forecasting and autoscaling (services/forecasting, flow demand_forecasting)
    scaling_enabled: bool = Field(
        default=False, description="act on scaling decisions (off: decide and record only)")
    scaling_interval_s: float = Field(
        default=60.0, gt=0, description="window of measured demand; the flow runs every minute")
    scaling_actuator: Literal["none", "local", "kubernetes"] = "none"
    scaling_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="models to scale (comma-separated)")
    scaling_model_dirs: dict[str, Path] = Field(
        default_factory=dict, description="local actuator: model name -> folder vLLM serves")
    scaling_min_replicas: int = Field(default=1, ge=0)
    scaling_max_replicas: int = Field(default=4, ge=1)
    scaling_scale_to_zero: bool = Field(
        default=False, description="allow 0 workers; the next request waits a cold start")
    scaling_worker_capacity_tokens_s: float = Field(
        default=1000.0, gt=0,
        description="tokens/s one worker serves at the SLO until the store has measured it")
    scaling_latency_slo_ms: float = Field(default=200.0, gt=0)
    scaling_cold_start_s: float = Field(
        default=60.0, gt=0, description="until measured from the workers this actuator started")
    # unset: services.forecasting.PolicyConfig's defaults (0.7 and 300 s, chosen in
    # bench/autoscale_sim.py; docs/benchmarks.md, Autoscaling)
    scaling_safety_utilisation: float | None = Field(
        default=None, gt=0, le=1,
        description="predictive part: the forecast's 95% bound is served at this share of "
        "one worker's capacity (lower: more headroom, more replica-seconds)")
    scaling_stabilisation_s: float | None = Field(
        default=None, ge=0,
        description="scale down only to the highest target of this many seconds")
    scaling_burst_half_life_s: float | None = Field(
        default=None, gt=0,
        description="burst memory: size for the largest recent 10-s bin, its weight halving "
        "every this many seconds (unset: off)")
    scaling_k8s_namespace: str = "default"
    scaling_k8s_deployments: dict[str, str] = Field(
        default_factory=dict, description="kubernetes actuator: model name -> Deployment")

    @field_validator(
        "api_keys", "workers", "cache_shared_namespaces", "cache_semantic_tenants",
        "scaling_models", mode="before"
    )
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("vllm_speculative_config", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("vllm_extra_args", mode="before")
    @classmethod
    def _shell_words(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @field_validator("workers")
    @classmethod
    def _normalise_worker_urls(cls, value: list[str]) -> list[str]:
        urls = []
        for url in value:
            url = url.rstrip("/")
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"worker URL {url!r} must start with http:// or https://")
            urls.append(url.removesuffix("/v1"))
        return urls

    @field_validator("worker_pools", mode="before")
    @classmethod
    def _normalise_pools(cls, value: Any) -> Any:
        value = json.loads(value) if isinstance(value, str) else value
        if not isinstance(value, dict):
            return value
        return {name: cls._normalise_worker_urls(_split_csv(urls))
                for name, urls in value.items()}

    @model_validator(mode="after")
    def _defaults_and_guards(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'optengine.db').as_posix()}"
        elif self.database_url.startswith("postgres://"):
            self.database_url = "postgresql+psycopg://" + self.database_url[len("postgres://") :]
        elif self.database_url.startswith("postgresql://"):
            self.database_url = "postgresql+psycopg://" + self.database_url[len("postgresql://") :]
        if self.env == "prod":
            if self.auth_required is False:
                raise ValueError("require_auth=false is refused in prod")
            weak = [k for k in self.api_keys if k.split(":", 1)[0] in {"sk-dev", "changeme"}]
            if weak:
                raise ValueError("default dev API keys are refused in prod")
        return self

    @property
    def auth_required(self) -> bool:
        if self.require_auth is not None:
            return self.require_auth
        return bool(self.api_keys) or self.env == "prod"

    @property
    def ops_details_shown(self) -> bool:
        """Whether /metrics and /readyz details are public (else: admin key only)."""
        if self.ops_details_public is not None:
            return self.ops_details_public
        return self.env != "prod"

    @property
    def spill_path(self) -> Path:
        return self.data_dir / "telemetry-spill.jsonl"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_path = os.environ.get("OPTENGINE_CONFIG")
        yaml_source = YamlConfigSource(settings_cls, Path(config_path) if config_path else None)
        return init_settings, env_settings, yaml_source, file_secret_settings


def load_settings(**overrides: Any) -> Settings:
    """Build settings from env + YAML, with explicit overrides on top (tests, CLI flags)."""
    return Settings(**overrides)


settings = load_settings()
