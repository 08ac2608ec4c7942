"""One look at an experiment: per-arm data in, comparisons and guardrail verdicts out.

The same function serves the ``experiments`` flow (data read from ``request_log``) and
the simulation benchmark, so what the benchmark measures is what gates canaries.
Guardrails share the family-wise alpha (Bonferroni: ``alpha / len(guardrails)``), so an
experiment with three guardrails still rolls back a harmless config at most ``alpha``
of the time however often it is looked at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from services.experiments.stats import (
    Comparison,
    Guardrail,
    compare_log_means,
    compare_means,
    compare_proportions,
)

# mixing scale per metric: the effect each test is tuned to find fastest
DEFAULT_TAUS = {"latency_ms": 0.05, "ttft_ms": 0.05, "cost_usd": 0.05, "error_rate": 0.01}


@dataclass(frozen=True, slots=True)
class ArmData:
    """What one arm served: latencies, times to first token (streams) and costs of the
    requests that have them, and how many requests failed out of how many."""

    latency_ms: np.ndarray
    cost_usd: np.ndarray
    errors: int
    requests: int
    ttft_ms: np.ndarray = field(default_factory=lambda: np.empty(0))

    @classmethod
    def empty(cls) -> ArmData:
        return cls(np.empty(0), np.empty(0), 0, 0)

    def extend(self, more: ArmData) -> ArmData:
        return ArmData(np.concatenate([self.latency_ms, more.latency_ms]),
                       np.concatenate([self.cost_usd, more.cost_usd]),
                       self.errors + more.errors, self.requests + more.requests,
                       np.concatenate([self.ttft_ms, more.ttft_ms]))

    def percentiles(self) -> dict[str, float | None]:
        """Latency p50/p95/p99 and TTFT p50/p95 in ms (None without data)."""
        out: dict[str, float | None] = {}
        for name, values, qs in (("latency", self.latency_ms, (50, 95, 99)),
                                 ("ttft", self.ttft_ms, (50, 95))):
            for q in qs:
                out[f"{name}_p{q}_ms"] = float(np.percentile(values, q)) if len(values) else None
        return out

    def error_flags(self) -> np.ndarray:
        flags = np.zeros(self.requests)
        flags[: self.errors] = 1
        return flags


@dataclass(frozen=True, slots=True)
class Evaluation:
    comparisons: list[Comparison]
    breached: list[str]
    alpha_per_metric: float
    details: dict[str, str] = field(default_factory=dict)

    def comparison(self, metric: str) -> Comparison | None:
        return next((c for c in self.comparisons if c.metric == metric), None)


def compare(metric: str, control: ArmData, treatment: ArmData, *, alpha: float, tau: float,
            previous_p: float = 1.0) -> Comparison:
    if metric in ("latency_ms", "ttft_ms"):
        c, t = getattr(control, metric), getattr(treatment, metric)
        return compare_log_means(c, t, metric=metric, tau=tau, alpha=alpha,
                                 previous_p=previous_p)
    if metric == "cost_usd":
        return compare_means(control.cost_usd, treatment.cost_usd, metric=metric, tau=tau,
                             alpha=alpha, previous_p=previous_p)
    if metric == "error_rate":
        return compare_proportions(control.errors, control.requests, treatment.errors,
                                   treatment.requests, metric=metric, tau=tau, alpha=alpha,
                                   previous_p=previous_p)
    raise ValueError(f"unknown metric {metric!r}")


def evaluate(control: ArmData, treatment: ArmData, guardrails: Sequence[Guardrail], *,
             alpha: float = 0.05, previous_p: Mapping[str, float] | None = None,
             taus: Mapping[str, float] | None = None) -> Evaluation:
    """Compare the arms on every guardrail metric and list the breached ones."""
    each = alpha / max(1, len(guardrails))
    tau_of = {**DEFAULT_TAUS, **(taus or {})}
    previous = previous_p or {}
    comparisons = []
    breached = []
    for guard in guardrails:
        c = compare(guard.metric, control, treatment, alpha=each, tau=tau_of[guard.metric],
                    previous_p=previous.get(guard.metric, 1.0))
        comparisons.append(c)
        if guard.breached(c):
            breached.append(guard.metric)
    return Evaluation(comparisons, breached, each)
