"""The scaling decision: how many workers one model should have, and why.

Two parts, the larger wins:

- **reactive** (``ReactiveScaler``), the spec's triggers, KEDA/HPA-like: the fleet is
  sized so that measured demand sits at ``target_utilisation`` of its capacity; queue
  depth > 10 or latency p95 > 200 ms adds a worker; it scales down only after
  utilisation stayed under 30 % for 5 minutes. Used alone it is the baseline the
  benchmark compares against.
- **predictive**: the upper bound of the demand forecast over the next cold start plus
  lead time, divided by what one worker serves at the target utilisation.
- **burst memory** (``burst_half_life_s``, off by default): the largest recent 10-s bin,
  its weight halving every half-life, sized like the forecast's bound. Bursts that cannot
  be timed may still come in clusters; this term keeps the fleet sized for the last one
  while the cluster may last, and lets it go as the burst ages.

Guards: min/max replicas; scale to zero only when enabled (the next request then waits a
whole cold start, stated in every such decision); at most ``max_step_up`` /
``max_step_down`` workers per decision; cooldowns between scale-downs; the predictive part
is ignored when the forecaster's recent WAPE exceeds ``max_forecast_wape`` (its
forecasts are not to be trusted then) and when there is no forecast at all (a model
with no history starts reactive). ``hold`` is the decision for a store that cannot be
read: keep the fleet, never shrink it for want of data.

Every decision is a ``Decision`` with its inputs and a human-readable reason; the flow
stores it and the simulator (``bench/autoscale_sim.py``) runs this same code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from services.forecasting.forecasters import Forecast


@dataclass(frozen=True)
class PolicyConfig:
    min_replicas: int = 1
    max_replicas: int = 16
    scale_to_zero: bool = False
    target_utilisation: float = 0.8
    # predictive sizing: the forecast's upper bound over one worker's capacity at this
    # utilisation, and scale-downs only to the highest target of the last
    # ``stabilisation_s`` (HPA's stabilisation: on bursty traffic the quiet bins between
    # bursts are not a reason to let workers go). Both were chosen on the first half of
    # the Azure code trace and judged on the second (bench/autoscale_sim.py --tune-on
    # first; docs/benchmarks.md, Autoscaling)
    predictive_utilisation: float = 0.7
    scale_down_utilisation: float = 0.3
    scale_down_after_s: float = 300.0
    queue_depth_up: float = 10.0
    latency_p95_up_ms: float = 200.0
    max_step_up: int = 4
    max_step_down: int = 2
    cooldown_down_s: float = 60.0
    stabilisation_s: float = 300.0
    max_forecast_wape: float = 1.5
    cold_start_s: float = 60.0
    lead_s: float = 300.0
    burst_half_life_s: float | None = None

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if not 0 < self.target_utilisation <= 1:
            raise ValueError("target_utilisation must be in (0, 1]")
        if self.max_step_up < 1 or self.max_step_down < 1:
            raise ValueError("step caps must be >= 1")
        if not 0 < self.predictive_utilisation <= 1:
            raise ValueError("predictive_utilisation must be in (0, 1]")
        if self.burst_half_life_s is not None and self.burst_half_life_s <= 0:
            raise ValueError("burst_half_life_s must be positive (or None: off)")

    @property
    def floor(self) -> int:
        """The fewest workers a decision may ask for."""
        return 0 if self.scale_to_zero else max(1, self.min_replicas)


@dataclass(frozen=True)
class Signals:
    """What was measured over the last period; None where nothing could be measured."""

    demand_tokens_s: float | None = None
    queue_depth: float | None = None
    latency_p95_ms: float | None = None


@dataclass
class Decision:
    model: str
    at: float
    current: int
    desired: int
    reactive: int
    predictive: int | None
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _clip(value: int, config: PolicyConfig) -> int:
    return max(config.floor, min(config.max_replicas, value))


class ReactiveScaler:
    """KEDA/HPA-like scaling on measured demand, queue depth and latency (one per model).

    ``capacity_tokens_s`` is what one worker serves at the latency SLO; the fleet is
    sized for demand at ``target_utilisation`` of that. State: since when utilisation has
    been under the scale-down threshold. After each call, ``need`` holds what the
    measurements alone ask for, without the scale-down hold (the hybrid policy uses it
    when a trusted forecast speaks for the future instead of the 5-minute hold).
    """

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.low_since: float | None = None
        self.need = 0

    def desired(self, now: float, current: int, capacity_tokens_s: float,
                signals: Signals) -> tuple[int, str]:
        config = self.config
        reasons: list[str] = []
        if signals.demand_tokens_s is None:
            self.low_since = None
            self.need = current
            return current, "no demand measured: hold"
        demand = signals.demand_tokens_s
        sized = math.ceil(demand / (capacity_tokens_s * config.target_utilisation) - 1e-9)
        utilisation = demand / (capacity_tokens_s * current) if current else math.inf
        want, self.need = current, sized
        if sized > current:
            want, reasons = sized, [f"utilisation {utilisation:.0%} > "
                                    f"{config.target_utilisation:.0%} target"]
        queue_hot = signals.queue_depth is not None and signals.queue_depth > config.queue_depth_up
        latency_hot = (signals.latency_p95_ms is not None
                       and signals.latency_p95_ms > config.latency_p95_up_ms)
        if queue_hot or latency_hot:
            want = max(want, current + 1)
            self.need = max(sized, current + 1)
            reasons.append(f"queue depth {signals.queue_depth:.0f} > {config.queue_depth_up:.0f}"
                           if queue_hot else
                           f"latency p95 {signals.latency_p95_ms:.0f} ms > "
                           f"{config.latency_p95_up_ms:.0f} ms")
        if utilisation < config.scale_down_utilisation and not (queue_hot or latency_hot):
            self.low_since = now if self.low_since is None else self.low_since
            if now - self.low_since >= config.scale_down_after_s and sized < current:
                want = sized
                reasons.append(f"utilisation {utilisation:.0%} under "
                               f"{config.scale_down_utilisation:.0%} for "
                               f"{now - self.low_since:.0f} s")
                self.low_since = now
        else:
            self.low_since = None
        return want, "; ".join(reasons) or f"utilisation {utilisation:.0%}: hold"


class HybridPolicy:
    """The predictive-plus-reactive decision for one model (keeps the cooldown and the
    reactive state between calls, so one instance per model, called every period)."""

    def __init__(self, model: str, config: PolicyConfig | None = None) -> None:
        self.model = model
        self.config = config or PolicyConfig()
        self.reactive = ReactiveScaler(self.config)
        self.last_down_at: float | None = None
        self.targets: list[tuple[float, int]] = []

    def predictive_replicas(self, forecast: Forecast, bin_s: float,
                            capacity_tokens_s: float) -> tuple[int, float]:
        """Workers needed for the forecast's upper bound over the next cold start plus
        lead time, and that bound (tokens/s)."""
        steps = max(1, math.ceil((self.config.cold_start_s + self.config.lead_s) / bin_s))
        peak = float(np.max(forecast.upper[:steps])) / bin_s
        return self._sized(peak, capacity_tokens_s), peak

    def _sized(self, tokens_s: float, capacity_tokens_s: float) -> int:
        return math.ceil(tokens_s / (capacity_tokens_s * self.config.predictive_utilisation)
                         - 1e-9)

    def burst_replicas(self, recent: np.ndarray, bin_s: float,
                       capacity_tokens_s: float) -> tuple[int, float]:
        """Workers for the largest recent bin, its weight halving every
        ``burst_half_life_s`` (the newest bin, last in ``recent``, has age 0), and that
        decayed peak (tokens/s)."""
        half_life = self.config.burst_half_life_s
        if half_life is None or len(recent) == 0:
            return 0, 0.0
        age_s = np.arange(len(recent) - 1, -1, -1) * bin_s
        peak = float(np.max(np.asarray(recent, float) * 0.5 ** (age_s / half_life))) / bin_s
        return self._sized(peak, capacity_tokens_s), peak

    def decide(
        self,
        now: float,
        current: int,
        capacity_tokens_s: float,
        signals: Signals,
        forecast: Forecast | None = None,
        *,
        bin_s: float = 10.0,
        forecaster: str | None = None,
        recent_wape: float | None = None,
        recent: np.ndarray | None = None,
    ) -> Decision:
        """``recent``: the last bins of demand (tokens per ``bin_s``, oldest first), for
        the burst memory; the forecast guard does not switch that term off (it reads
        measurements, not the forecast)."""
        config = self.config
        if capacity_tokens_s <= 0:
            raise ValueError("capacity_tokens_s must be positive")
        reactive, reactive_reason = self.reactive.desired(now, current, capacity_tokens_s,
                                                          signals)
        inputs: dict[str, Any] = {
            "capacity_tokens_s": round(capacity_tokens_s, 3),
            "demand_tokens_s": signals.demand_tokens_s,
            "queue_depth": signals.queue_depth,
            "latency_p95_ms": signals.latency_p95_ms,
            "forecaster": forecaster,
            "recent_wape": None if recent_wape is None else round(recent_wape, 4),
        }
        predictive: int | None = None
        if forecast is None:
            why = "no forecast (no history yet): reactive only"
        elif recent_wape is not None and recent_wape > config.max_forecast_wape:
            why = (f"forecast error WAPE {recent_wape:.2f} > {config.max_forecast_wape:.2f}: "
                   "reactive only")
        else:
            predictive, peak = self.predictive_replicas(forecast, bin_s, capacity_tokens_s)
            inputs["forecast_upper_tokens_s"] = round(peak, 3)
            inputs["forecast_level"] = forecast.level
            why = f"forecast upper {peak:.0f} tok/s needs {predictive}"
        if predictive is None:
            target = reactive
            reason = f"{why}; reactive {reactive} ({reactive_reason})"
        else:
            # a trusted forecast replaces the reactive 5-minute hold; what the
            # measurements need right now (demand at target, queue, latency) still wins
            target = max(predictive, self.reactive.need)
            reason = f"{why}; measured need {self.reactive.need} ({reactive_reason})"
        burst, burst_peak = (0, 0.0) if recent is None else \
            self.burst_replicas(recent, bin_s, capacity_tokens_s)
        if burst > target:
            target = burst
            inputs["burst_peak_tokens_s"] = round(burst_peak, 3)
            reason += (f"; burst memory: decayed peak {burst_peak:.0f} tok/s needs {burst}")
        self.targets = [(at, t) for at, t in self.targets if now - at < config.stabilisation_s]
        self.targets.append((now, target))
        stable = max(t for _, t in self.targets)
        if min(stable, current) > target:
            target = min(stable, current)
            reason += (f"; held at {target}, the highest target of the last "
                       f"{config.stabilisation_s:.0f} s")
        desired = _clip(target, config)
        if desired > target:
            reason += f"; raised to the floor of {config.floor}"
        elif desired < target:
            reason += f"; capped at max_replicas {config.max_replicas}"
        if desired > current + config.max_step_up:
            desired = current + config.max_step_up
            reason += f"; step capped at +{config.max_step_up}"
        elif desired < current:
            if self.last_down_at is not None and now - self.last_down_at < config.cooldown_down_s:
                desired = current
                reason += f"; scale-down cooldown ({config.cooldown_down_s:.0f} s)"
            elif desired < current - config.max_step_down:
                desired = current - config.max_step_down
                reason += f"; step capped at -{config.max_step_down}"
        if desired < current:
            self.last_down_at = now
        if desired == 0:
            reason += (f"; scaled to zero: the next request waits a cold start "
                       f"(~{config.cold_start_s:.0f} s)")
        return Decision(self.model, now, current, desired, reactive, predictive, reason, inputs)

    def hold(self, now: float, current: int, why: str) -> Decision:
        """Keep the fleet as it is (store unreadable, or anything else that leaves the
        decision without data): never scale down, least of all to zero, for want of data."""
        return Decision(self.model, now, current, current, current, None,
                        f"hold: {why}", {})


class ErrorTracker:
    """The forecaster's recent error, as WAPE of its point forecasts of the next bin
    against what then arrived (the policy's runaway guard reads it)."""

    def __init__(self, window: int = 30) -> None:
        self.window = window
        self.pending: dict[Any, float] = {}
        self.pairs: list[tuple[float, float]] = []

    def predicted(self, bin_key: Any, value: float) -> None:
        self.pending[bin_key] = value

    def observed(self, bin_key: Any, actual: float) -> None:
        if bin_key in self.pending:
            self.pairs.append((actual, self.pending.pop(bin_key)))
            del self.pairs[:-self.window]

    def wape(self) -> float | None:
        """None until a few bins were scored, or when nothing arrived in the window."""
        if len(self.pairs) < 5:
            return None
        actual = sum(a for a, _ in self.pairs)
        if actual <= 0:
            return None
        return sum(abs(a - p) for a, p in self.pairs) / actual
