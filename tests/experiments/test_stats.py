"""The sequential statistics: validity under peeking, power, intervals, SRM, sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.experiments.analysis import ArmData, evaluate, guardrail
from services.experiments.stats import (
    Guardrail,
    compare_log_means,
    compare_means,
    compare_proportions,
    confidence_sequence,
    msprt,
    sample_ratio_mismatch,
    sample_size_means,
    sample_size_proportions,
    welch_p,
)


def _latencies(rng: np.random.Generator, n: int, factor: float = 1.0) -> np.ndarray:
    # heavy-tailed: log-normal body times a Pareto tail, like LLM latencies
    return rng.lognormal(np.log(200), 0.6, n) * (1 + rng.pareto(2.5, n)) * factor


def test_peeking_a_a_keeps_its_alpha_where_a_fixed_horizon_test_does_not() -> None:
    rng = np.random.default_rng(1)
    ours = naive = 0
    runs, looks, per_look = 200, 20, 50
    for _ in range(runs):
        c = np.empty(0)
        t = np.empty(0)
        p = 1.0
        ours_hit = naive_hit = False
        for _ in range(looks):
            c = np.concatenate([c, _latencies(rng, per_look)])
            t = np.concatenate([t, _latencies(rng, per_look)])
            p = compare_log_means(c, t, previous_p=p).p_value
            ours_hit |= p < 0.05
            naive_hit |= welch_p(c, t) < 0.05
        ours += ours_hit
        naive += naive_hit
    assert ours / runs <= 0.06
    assert naive / runs > ours / runs
    assert naive / runs > 0.08


def test_a_real_latency_regression_is_found_and_measured() -> None:
    rng = np.random.default_rng(2)
    c, t = _latencies(rng, 4000), _latencies(rng, 4000, factor=1.2)
    result = compare_log_means(c, t, tau=0.05, alpha=0.05)
    assert result.p_value < 0.01
    assert result.ci_low < 0.2 < result.ci_high
    assert result.ci_low > 0
    assert Guardrail("latency_ms").breached(result)
    assert not Guardrail("latency_ms", tolerance=0.5).breached(result)
    assert result.standardized > 0


def test_too_few_samples_decide_nothing() -> None:
    result = compare_log_means([100.0] * 10, [1000.0] * 10)
    assert result.p_value == 1.0 and math.isinf(result.ci_high)
    assert not Guardrail("latency_ms").breached(result)


def test_proportions_with_no_errors_and_with_more_errors() -> None:
    none = compare_proportions(0, 500, 0, 500)
    assert none.p_value == 1.0 and none.effect == 0
    worse = compare_proportions(5, 2000, 80, 2000)
    assert worse.effect > 0.03 and worse.ci_low > 0 and worse.p_value < 0.001
    assert Guardrail("error_rate").breached(worse)


def test_cost_mean_is_winsorised_on_the_pooled_sample() -> None:
    rng = np.random.default_rng(3)
    c = rng.lognormal(0, 1, 3000)
    t = c.copy()
    t[0] = 1e9  # one absurd outlier must not decide the comparison
    result = compare_means(c, t)
    assert abs(result.effect) < 0.02
    assert result.p_value > 0.05


def _costs(rng: np.random.Generator, n: int, factor: float = 1.0
           ) -> tuple[np.ndarray, np.ndarray]:
    """Costs driven by the prompt's size (the covariate, which no arm changes) plus
    noise from the answer's length."""
    tokens_in = rng.lognormal(np.log(1500), 0.8, n)
    cost = (tokens_in * 0.15e-6 + rng.lognormal(np.log(40), 1.0, n) * 0.6e-6) * factor
    return cost, tokens_in


def test_cuped_narrows_the_interval_and_keeps_the_estimate() -> None:
    rng = np.random.default_rng(6)
    (c, xc), (t, xt) = _costs(rng, 3000), _costs(rng, 3000, factor=1.05)
    plain = compare_means(c, t)
    adjusted = compare_means(c, t, covariates=(xc, xt))
    assert adjusted.ci_low < 0.05 < adjusted.ci_high
    assert adjusted.ci_high - adjusted.ci_low < (plain.ci_high - plain.ci_low) / 2
    assert adjusted.p_value < plain.p_value
    # a covariate unknown for some rows (NaN) leaves those rows unadjusted, no error
    xc[:100] = np.nan
    assert compare_means(c, t, covariates=(xc, xt)).ci_low > -0.05
    with pytest.raises(ValueError, match="one value per sample"):
        compare_means(c, t, covariates=(xc[:10], xt))


def test_cuped_a_a_keeps_its_alpha_under_peeking() -> None:
    rng = np.random.default_rng(7)
    runs, looks, per_look = 200, 15, 60
    hits = 0
    for _ in range(runs):
        c, xc, t, xt = (np.empty(0) for _ in range(4))
        p = 1.0
        for _ in range(looks):
            (nc, nxc), (nt, nxt) = _costs(rng, per_look), _costs(rng, per_look)
            c, xc = np.concatenate([c, nc]), np.concatenate([xc, nxc])
            t, xt = np.concatenate([t, nt]), np.concatenate([xt, nxt])
            p = compare_means(c, t, covariates=(xc, xt), previous_p=p).p_value
        hits += p < 0.05
    assert hits / runs <= 0.06


def test_quality_guardrails_breach_on_a_drop_not_on_a_rise() -> None:
    base = ArmData.empty()
    worse = ArmData(np.empty(0), np.empty(0), 0, 0, rating_sum=300, ratings=600)
    better = ArmData(np.empty(0), np.empty(0), 0, 0, rating_sum=540, ratings=600)
    control = ArmData(np.empty(0), np.empty(0), 0, 0, rating_sum=480, ratings=600)
    guard = guardrail("rating")
    assert evaluate(control, worse, [guard]).breached == ["rating"]
    assert evaluate(control, better, [guard]).breached == []
    assert evaluate(base, worse, [guard]).comparisons[0].p_value == 1.0  # no data
    escalating = ArmData(np.empty(0), np.empty(0), 0, 0, escalations=150, cascaded=500)
    calm = ArmData(np.empty(0), np.empty(0), 0, 0, escalations=50, cascaded=500)
    assert evaluate(calm, escalating, [guardrail("escalation_rate")]).breached == [
        "escalation_rate"]
    judged = ArmData(np.empty(0), np.empty(0), 0, 0, judge_scores=np.full(400, 0.9))
    doubtful = ArmData(np.empty(0), np.empty(0), 0, 0, judge_scores=np.full(400, 0.6))
    assert evaluate(judged, doubtful, [guardrail("judge_score")]).breached == ["judge_score"]
    with pytest.raises(ValueError, match="unknown metric"):
        guardrail("happiness")


def test_arm_data_keeps_per_request_arrays_aligned() -> None:
    with pytest.raises(ValueError, match="aligned"):
        ArmData(np.ones(3), np.ones(2), 0, 3, tokens_in=np.ones(3))
    joined = ArmData(np.ones(2), np.ones(2), 1, 3, ratings=2, rating_sum=1.5).extend(
        ArmData(np.ones(1), np.ones(1), 0, 1, ratings=1, rating_sum=1.0))
    assert (len(joined.latency_ms), joined.errors, joined.requests) == (3, 1, 4)
    assert joined.summary()["mean_rating"] == pytest.approx(2.5 / 3)


def test_confidence_sequence_is_the_msprt_acceptance_region() -> None:
    low, high = confidence_sequence(0.1, 0.001, 0.05, 0.05)
    assert math.isclose(msprt(high - 0.1, 0.001, 0.05), 1 / 0.05, rel_tol=1e-6)
    assert low < 0.1 < high


def test_sample_ratio_mismatch() -> None:
    assert sample_ratio_mismatch({"a": 5000, "b": 5040}, {"a": 0.5, "b": 0.5}) > 0.1
    assert sample_ratio_mismatch({"a": 5600, "b": 4400}, {"a": 0.5, "b": 0.5}) < 1e-6
    assert sample_ratio_mismatch({"a": 950, "b": 50}, {"a": 0.95, "b": 0.05}) > 0.1
    assert sample_ratio_mismatch({}, {"a": 1.0}) == 1.0


def test_minimum_sample_sizes_match_the_textbook() -> None:
    # 50% -> 60%, two-sided 5%, power 80%: about 385-390 per arm
    assert 380 <= sample_size_proportions(0.5, 0.1) <= 395
    # a difference of half a standard deviation: 2 * (2.8 / 0.5)^2 = 63
    assert 62 <= sample_size_means(1.0, 0.5) <= 64
    assert sample_size_proportions(0.01, 0.02) < sample_size_proportions(0.01, 0.01)


def test_evaluate_splits_alpha_over_guardrails_and_lists_breaches() -> None:
    rng = np.random.default_rng(4)
    control = ArmData(_latencies(rng, 3000), rng.lognormal(0, 1, 3000), 30, 3000)
    slow = ArmData(_latencies(rng, 3000, factor=1.3), rng.lognormal(0, 1, 3000), 30, 3000)
    guards = [Guardrail("latency_ms"), Guardrail("error_rate"), Guardrail("cost_usd")]
    result = evaluate(control, slow, guards, alpha=0.06)
    assert math.isclose(result.alpha_per_metric, 0.02)
    assert result.breached == ["latency_ms"]
    assert result.comparison("error_rate").effect == 0


def test_welch_matches_scipy() -> None:
    from scipy import stats as sps

    rng = np.random.default_rng(5)
    c, t = _latencies(rng, 300), _latencies(rng, 200, factor=1.1)
    assert math.isclose(welch_p(c, t), sps.ttest_ind(c, t, equal_var=False).pvalue,
                        rel_tol=1e-9)
