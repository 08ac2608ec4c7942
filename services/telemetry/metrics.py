"""Prometheus figures for the gateway, one registry per app (two apps in one test
process must not collide). Request figures are observed by the telemetry writer from
the same events it stores, so ``/metrics`` and ``request_log`` agree."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.telemetry.events import RequestEvent

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "optengine_requests", "Requests handled", ["endpoint", "model", "status"], registry=r
        )
        self.rejected = Counter(
            "optengine_rejected_requests", "Requests refused before the pipeline ran",
            ["path", "status"], registry=r,
        )
        self.latency = Histogram(
            "optengine_request_latency_seconds", "End-to-end latency", ["endpoint"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "optengine_time_to_first_token_seconds", "Time to first token (streams)",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.overhead = Histogram(
            "optengine_gateway_overhead_seconds", "Time spent in the gateway, not upstream",
            ["endpoint"], buckets=_OVERHEAD_BUCKETS, registry=r,
        )
        self.tokens = Counter(
            "optengine_tokens", "Tokens by kind", ["model", "kind"], registry=r
        )
        self.cost = Counter("optengine_cost_usd", "Cost of served requests", ["model"], registry=r)
        self.baseline_cost = Counter(
            "optengine_baseline_cost_usd", "Cost without optimisation", ["model"], registry=r
        )
        self.queue_depth = Gauge(
            "optengine_telemetry_queue_depth", "Events waiting to be written", registry=r
        )
        self.telemetry_overflow = Counter(
            "optengine_telemetry_overflow", "Events sent straight to the spill file because "
            "the queue was full", registry=r,
        )
        self.telemetry_spilled = Counter(
            "optengine_telemetry_spilled", "Events written to the spill file", registry=r
        )
        self.telemetry_written = Counter(
            "optengine_telemetry_written", "Events written to the store", registry=r
        )
        self.telemetry_quarantined = Counter(
            "optengine_telemetry_quarantined", "Events the store refused for their content, "
            "set aside in telemetry_quarantine", registry=r,
        )
        self.telemetry_writer_restarts = Counter(
            "optengine_telemetry_writer_restarts", "Times the telemetry writer task ended "
            "unexpectedly and was restarted", registry=r,
        )
        self.store_up = Gauge("optengine_store_up", "1 when the metrics store accepts writes",
                              registry=r)
        self.worker_outstanding = Gauge(
            "optengine_worker_outstanding", "Requests in flight per worker", ["worker"],
            registry=r,
        )
        self.worker_outstanding_tokens = Gauge(
            "optengine_worker_outstanding_tokens",
            "Estimated prompt + expected output tokens in flight per worker", ["worker"],
            registry=r,
        )
        self.worker_circuit_open = Gauge(
            "optengine_worker_circuit_open", "1 while the worker's circuit breaker is not "
            "closed (open or half-open)", ["worker"], registry=r,
        )
        self.worker_healthy = Gauge(
            "optengine_worker_healthy", "1 when the worker passed its last probe", ["worker"],
            registry=r,
        )

    def observe(self, event: RequestEvent) -> None:
        model = event.model_served or event.model_requested or "unknown"
        self.requests.labels(event.endpoint, model, str(event.status_code)).inc()
        if event.latency_ms is not None:
            self.latency.labels(event.endpoint).observe(event.latency_ms / 1000)
        if event.gateway_overhead_ms is not None:
            self.overhead.labels(event.endpoint).observe(event.gateway_overhead_ms / 1000)
        if event.ttft_ms is not None:
            self.ttft.labels(model).observe(event.ttft_ms / 1000)
        for kind in ("prompt_tokens", "completion_tokens", "cached_tokens",
                     "cache_write_tokens"):
            value = getattr(event, kind)
            if value:
                self.tokens.labels(model, kind.removesuffix("_tokens")).inc(value)
        if event.cost_usd:
            self.cost.labels(model).inc(event.cost_usd)
        if event.baseline_cost_usd:
            self.baseline_cost.labels(model).inc(event.baseline_cost_usd)
