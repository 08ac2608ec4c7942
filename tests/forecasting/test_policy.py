"""The hybrid scaling policy: reactive triggers, predictive sizing, guards, and the fleet
simulation the benchmark runs it in."""

from __future__ import annotations

import numpy as np
import pytest

from services.forecasting import (
    ErrorTracker,
    Forecast,
    HybridPolicy,
    LastValue,
    PolicyConfig,
    ReactiveScaler,
    Signals,
)
from services.forecasting.simulation import (
    hybrid_controller,
    reactive_controller,
    simulate,
    static_controller,
)

CAP = 100.0  # tokens/s per worker


def flat(upper_per_bin: float, steps: int = 36) -> Forecast:
    return Forecast(np.full(steps, upper_per_bin / 2), np.zeros(steps),
                    np.full(steps, upper_per_bin), 0.9)


def test_reactive_follows_the_specs_triggers() -> None:
    scaler = ReactiveScaler(PolicyConfig())
    assert scaler.desired(0, 2, CAP, Signals(demand_tokens_s=400))[0] == 5  # 400/(0.8*100)
    assert scaler.desired(0, 2, CAP, Signals(demand_tokens_s=100, queue_depth=11))[0] == 3
    assert scaler.desired(0, 2, CAP, Signals(demand_tokens_s=100, latency_p95_ms=250))[0] == 3
    assert scaler.desired(0, 2, CAP, Signals(demand_tokens_s=None))[0] == 2
    # under 30 % for less than 5 minutes holds; then scales down to demand at 80 %
    scaler = ReactiveScaler(PolicyConfig())
    assert scaler.desired(0, 4, CAP, Signals(demand_tokens_s=50))[0] == 4
    assert scaler.desired(299, 4, CAP, Signals(demand_tokens_s=50))[0] == 4
    assert scaler.desired(300, 4, CAP, Signals(demand_tokens_s=50))[0] == 1
    # a busy period in between restarts the clock
    scaler = ReactiveScaler(PolicyConfig())
    scaler.desired(0, 4, CAP, Signals(demand_tokens_s=50))
    scaler.desired(200, 4, CAP, Signals(demand_tokens_s=300))
    assert scaler.desired(400, 4, CAP, Signals(demand_tokens_s=50))[0] == 4


def test_predictive_sizes_for_the_forecasts_upper_bound() -> None:
    policy = HybridPolicy("m")
    # upper 3500 tokens per 10-s bin = 350 tok/s = 5 workers at the default margin (each
    # sized at 70 % of its 100 tok/s)
    decision = policy.decide(0, 3, CAP, Signals(demand_tokens_s=50), flat(3500))
    assert decision.predictive == 5 and decision.desired == 5
    assert "forecast upper 350 tok/s needs 5" in decision.reason
    assert decision.inputs["capacity_tokens_s"] == CAP


def test_no_forecast_or_a_bad_one_falls_back_to_reactive() -> None:
    decision = HybridPolicy("m").decide(0, 2, CAP, Signals(demand_tokens_s=50), None)
    assert decision.predictive is None and decision.desired == 2
    assert "no forecast" in decision.reason
    decision = HybridPolicy("m").decide(0, 2, CAP, Signals(demand_tokens_s=50), flat(90_000),
                                        recent_wape=3.0)
    assert decision.predictive is None and decision.desired == 2
    assert "WAPE 3.00" in decision.reason


def test_step_cap_bounds_and_cooldown() -> None:
    config = PolicyConfig(max_replicas=10, max_step_up=2, max_step_down=1, cooldown_down_s=60,
                          stabilisation_s=0)
    policy = HybridPolicy("m", config)
    up = policy.decide(0, 1, CAP, Signals(demand_tokens_s=0), flat(100_000))
    assert up.desired == 3 and "step capped at +2" in up.reason
    assert policy.decide(10, 9, CAP, Signals(), flat(100_000)).desired == 10  # max_replicas
    down = policy.decide(20, 5, CAP, Signals(demand_tokens_s=0), flat(0))
    assert down.desired == 4 and "step capped at -1" in down.reason
    held = policy.decide(50, 4, CAP, Signals(demand_tokens_s=0), flat(0))
    assert held.desired == 4 and "cooldown" in held.reason
    assert policy.decide(81, 4, CAP, Signals(demand_tokens_s=0), flat(0)).desired == 3


def test_stabilisation_keeps_the_highest_recent_target() -> None:
    policy = HybridPolicy("m", PolicyConfig(stabilisation_s=60, cooldown_down_s=0))
    assert policy.decide(0, 1, CAP, Signals(demand_tokens_s=0), flat(2800)).desired == 4
    held = policy.decide(30, 4, CAP, Signals(demand_tokens_s=0), flat(0))
    assert held.desired == 4 and "highest target" in held.reason
    assert policy.decide(61, 4, CAP, Signals(demand_tokens_s=0), flat(0)).desired == 2


def test_scale_to_zero_only_when_enabled_and_its_cost_is_stated() -> None:
    config = PolicyConfig(stabilisation_s=0, cooldown_down_s=0, max_step_down=5)
    assert HybridPolicy("m", config).decide(0, 2, CAP, Signals(demand_tokens_s=0),
                                            flat(0)).desired == 1
    config = PolicyConfig(scale_to_zero=True, min_replicas=0, stabilisation_s=0,
                          cooldown_down_s=0, max_step_down=5)
    zero = HybridPolicy("m", config).decide(0, 2, CAP, Signals(demand_tokens_s=0), flat(0))
    assert zero.desired == 0 and "waits a cold start (~60 s)" in zero.reason


def test_hold_never_changes_the_fleet() -> None:
    decision = HybridPolicy("m").hold(0, 3, "store unreadable")
    assert decision.desired == decision.current == 3 and decision.reason.startswith("hold")


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError):
        PolicyConfig(min_replicas=5, max_replicas=2)
    with pytest.raises(ValueError):
        PolicyConfig(target_utilisation=0)
    with pytest.raises(ValueError):
        HybridPolicy("m").decide(0, 1, 0.0, Signals())


def test_error_tracker() -> None:
    tracker = ErrorTracker(window=10)
    for key in range(4):
        tracker.predicted(key, 10)
        tracker.observed(key, 20)
    assert tracker.wape() is None  # too few scored bins yet
    tracker.predicted(4, 10)
    tracker.observed(4, 20)
    tracker.observed(99, 5)  # never forecast: not scored
    assert tracker.wape() == pytest.approx(0.5)


def test_simulation_counts_cold_starts_backlog_and_violations() -> None:
    tokens = np.zeros(200)
    tokens[100:110] = 300.0  # a burst of 3 workers' worth for 10 s
    requests = (tokens > 0).astype(float)
    # 3 workers: never a backlog
    enough = simulate(tokens, requests, static_controller(3), capacity_tokens_s=CAP,
                      period_s=30, initial=3)
    assert enough.violation_seconds == 0 and enough.replica_seconds == 600
    # 1 worker: the backlog grows 200/s and violates (> 2 s of 100 tok/s) until drained
    short = simulate(tokens, requests, static_controller(1), capacity_tokens_s=CAP,
                     period_s=30, initial=1)
    assert short.violation_seconds > 10
    assert short.violations[0] == 101
    # asking for 3 at t=0 from 0: paid from t=0, ready only at t=60
    cold = simulate(np.full(90, 100.0), np.ones(90), static_controller(3),
                    capacity_tokens_s=CAP, period_s=30, initial=0)
    assert cold.replica_seconds == 270 and cold.violations[0] == 0
    # at t=60 the backlog is 6,000 tokens and drains at 300 - 100 tok/s to under 600
    assert cold.violation_seconds == cold.violations[-1] + 1 and 80 < cold.violations[-1] < 90


def test_reactive_baseline_scales_up_on_demand_and_down_after_five_minutes() -> None:
    tokens = np.concatenate([np.full(120, 400.0), np.zeros(600)])
    run = simulate(tokens, np.ones(len(tokens)), reactive_controller(PolicyConfig(), CAP, 30),
                   capacity_tokens_s=CAP, period_s=30, initial=1)
    assert max(run.replicas) == 5  # 400 / (0.8 * 100)
    assert run.replicas[-1] == 1
    assert run.replicas[120 + 299] == 5  # still held under 5 minutes after the load stopped


def test_burst_memory_sizes_for_the_last_burst_and_decays() -> None:
    config = PolicyConfig(burst_half_life_s=60, predictive_utilisation=1.0,
                          stabilisation_s=0, cooldown_down_s=0, max_step_down=16)
    burst = 5000.0  # tokens in one 10-s bin = 500 tok/s = 5 workers at 100 tok/s
    quiet = Signals(demand_tokens_s=0)
    just_now = HybridPolicy("m", config).decide(0, 1, CAP, quiet, flat(0),
                                                recent=np.array([0, 0, burst]))
    assert just_now.desired == 5 and "burst memory" in just_now.reason
    assert just_now.inputs["burst_peak_tokens_s"] == 500
    # one half-life later (6 bins of 10 s) it weighs half: 250 tok/s, 3 workers; two: 2
    for age_bins, workers in ((6, 3), (12, 2)):
        recent = np.concatenate([[burst], np.zeros(age_bins)])
        assert HybridPolicy("m", config).decide(0, 5, CAP, quiet, flat(0),
                                                recent=recent).desired == workers
    # off by default: the same history changes nothing
    off = HybridPolicy("m", PolicyConfig(predictive_utilisation=1.0)).decide(
        0, 1, CAP, quiet, flat(0), recent=np.array([0, 0, burst]))
    assert off.desired == 1 and "burst" not in off.reason


def test_forecast_guard_falls_back_to_reactive_with_burst_memory_on() -> None:
    config = PolicyConfig(burst_half_life_s=600)
    decision = HybridPolicy("m", config).decide(
        0, 2, CAP, Signals(demand_tokens_s=50), flat(90_000), recent_wape=3.0,
        recent=np.zeros(30))
    assert decision.predictive is None and decision.desired == 2
    assert "WAPE 3.00" in decision.reason and "reactive only" in decision.reason


def test_new_knobs_refuse_bad_values() -> None:
    for bad in ({"burst_half_life_s": 0}, {"burst_half_life_s": -1},
                {"predictive_utilisation": 0}, {"predictive_utilisation": 1.5}):
        with pytest.raises(ValueError):
            PolicyConfig(**bad)


def test_simulated_hybrid_feeds_the_recent_bins() -> None:
    # a sustained overload: 1 worker, 300 tok/s for 3 minutes
    tokens = np.concatenate([np.zeros(60), np.full(180, 300.0), np.zeros(60)])
    config = PolicyConfig(burst_half_life_s=600, max_replicas=8)
    log: list = []
    simulate(tokens, (tokens > 0).astype(float),
             hybrid_controller("m", config, LastValue(), CAP, 30, decisions=log),
             capacity_tokens_s=CAP, period_s=30, initial=1)
    assert any("burst_peak_tokens_s" in d.inputs for d in log)
