"""One look at an experiment: per-arm data in, comparisons and guardrail verdicts out.

The same function serves the ``experiments`` flow (data read from ``request_log``) and
the simulation benchmark, so what the benchmark measures is what gates canaries.
Guardrails share the family-wise alpha (Bonferroni: ``alpha / len(guardrails)``), so an
experiment with three guardrails still rolls back a harmless config at most ``alpha``
of the time however often it is looked at.

Metrics (``METRICS``): latency and TTFT (geometric means); cost, prompt tokens and
completion tokens per answered request (means, CUPED-adjusted by the prompt's tokens as
the client sent it); error rate (5xx); and three quality signals: users' ratings
(``POST /v1/feedback``, mean score), the cascade's escalation rate (escalated out of
the requests its judge scored) and the judge's mean P(the cheap answer is right). For
ratings and the judge's score higher is better: their guardrails breach on a drop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from services.experiments.stats import (
    Comparison,
    Guardrail,
    compare_log_means,
    compare_means,
    compare_proportions,
)

# mixing scale per metric: the effect each test is tuned to find fastest (relative for
# latency, cost and tokens; points for rates and scores)
DEFAULT_TAUS = {
    "latency_ms": 0.05, "ttft_ms": 0.05, "cost_usd": 0.05, "prompt_tokens": 0.05,
    "completion_tokens": 0.05, "error_rate": 0.01, "escalation_rate": 0.02, "rating": 0.05,
    "judge_score": 0.05,
}
METRICS = tuple(DEFAULT_TAUS)
HIGHER_IS_BETTER = frozenset({"rating", "judge_score"})
_PER_REQUEST = ("cost_usd", "prompt_tokens", "completion_tokens")  # CUPED by tokens_in


def guardrail(metric: str, tolerance: float = 0.0) -> Guardrail:
    """The guardrail of a metric, in the direction that is worse for it."""
    if metric not in DEFAULT_TAUS:
        raise ValueError(f"unknown metric {metric!r}: one of {METRICS}")
    return Guardrail(metric, tolerance, higher_is_worse=metric not in HIGHER_IS_BETTER)


def _empty() -> np.ndarray:
    return np.empty(0)


@dataclass(frozen=True, slots=True)
class ArmData:
    """What one arm served. Per answered request (NaN where a row lacks the value):
    latency, cost, TTFT (streams), prompt tokens sent upstream, completion tokens, and
    ``tokens_in``, the prompt's tokens as the client sent it (the CUPED covariate: no
    config changes it). Then counts: failed (5xx) out of all requests, the sum and
    number of ratings, cascade escalations out of cascade-judged requests, and the
    judge's scores."""

    latency_ms: np.ndarray
    cost_usd: np.ndarray
    errors: int
    requests: int
    ttft_ms: np.ndarray = field(default_factory=_empty)
    prompt_tokens: np.ndarray = field(default_factory=_empty)
    completion_tokens: np.ndarray = field(default_factory=_empty)
    tokens_in: np.ndarray = field(default_factory=_empty)
    rating_sum: float = 0.0
    ratings: int = 0
    escalations: int = 0
    cascaded: int = 0
    judge_scores: np.ndarray = field(default_factory=_empty)

    def __post_init__(self) -> None:
        if len(self.tokens_in):
            for name in _PER_REQUEST:
                if len(getattr(self, name)) not in (0, len(self.tokens_in)):
                    raise ValueError(f"{name} and tokens_in must be aligned per request")

    @classmethod
    def empty(cls) -> ArmData:
        return cls(_empty(), _empty(), 0, 0)

    def extend(self, more: ArmData) -> ArmData:
        return ArmData(**{
            f.name: (np.concatenate([getattr(self, f.name), getattr(more, f.name)])
                     if isinstance(getattr(self, f.name), np.ndarray)
                     else getattr(self, f.name) + getattr(more, f.name))
            for f in fields(self)})

    def summary(self) -> dict[str, float | None]:
        """Latency p50/p95/p99 and TTFT p50/p95 in ms, mean tokens per answered request,
        mean rating, escalation rate and mean judge score (None without data)."""
        out: dict[str, float | None] = {}
        for name, values, qs in (("latency", self.latency_ms, (50, 95, 99)),
                                 ("ttft", self.ttft_ms, (50, 95))):
            known = values[np.isfinite(values)]
            for q in qs:
                out[f"{name}_p{q}_ms"] = float(np.percentile(known, q)) if len(known) else None
        for key, values in (("mean_prompt_tokens", self.prompt_tokens),
                            ("mean_completion_tokens", self.completion_tokens),
                            ("mean_judge_score", self.judge_scores)):
            known = values[np.isfinite(values)]
            out[key] = float(known.mean()) if len(known) else None
        out["mean_rating"] = self.rating_sum / self.ratings if self.ratings else None
        out["escalation_rate"] = self.escalations / self.cascaded if self.cascaded else None
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


def _covariates(metric: str, control: ArmData, treatment: ArmData
                ) -> tuple[np.ndarray, np.ndarray] | None:
    arms = (control, treatment)
    if all(len(a.tokens_in) and len(a.tokens_in) == len(getattr(a, metric)) for a in arms):
        return control.tokens_in, treatment.tokens_in
    return None


def compare(metric: str, control: ArmData, treatment: ArmData, *, alpha: float, tau: float,
            previous_p: float = 1.0) -> Comparison:
    common = {"metric": metric, "tau": tau, "alpha": alpha, "previous_p": previous_p}
    if metric in ("latency_ms", "ttft_ms"):
        return compare_log_means(getattr(control, metric), getattr(treatment, metric),
                                 **common)
    if metric in _PER_REQUEST:
        return compare_means(getattr(control, metric), getattr(treatment, metric),
                             covariates=_covariates(metric, control, treatment), **common)
    counts = {
        "error_rate": lambda a: (a.errors, a.requests),
        "escalation_rate": lambda a: (a.escalations, a.cascaded),
        "rating": lambda a: (a.rating_sum, a.ratings),
        "judge_score": lambda a: (float(np.nansum(a.judge_scores)),
                                  int(np.isfinite(a.judge_scores).sum())),
    }
    if metric in counts:
        return compare_proportions(*counts[metric](control), *counts[metric](treatment),
                                   **common)
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
