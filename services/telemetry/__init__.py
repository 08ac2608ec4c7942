"""Request telemetry: events, the batched store writer, Prometheus metrics."""

from services.telemetry.events import RequestEvent
from services.telemetry.metrics import GatewayMetrics
from services.telemetry.pricing import RequestPricer
from services.telemetry.writer import TelemetryWriter

__all__ = ["GatewayMetrics", "RequestEvent", "RequestPricer", "TelemetryWriter"]
