"""Sequential statistics for experiments: tests that stay valid when looked at often.

People (and the ``experiments`` flow, every minute) look at a running experiment again
and again. A fixed-horizon test read at every look rejects a true null far more often
than its alpha says (``bench/experiments_sim.py`` measures it). These tests use the
mixture sequential probability ratio test (mSPRT, Johari et al., "Always valid
inference", 2017) in its asymptotic two-sample form: the difference of two arm
estimates ``d`` with standard error ``s`` and a normal mixing prior ``N(0, tau^2)`` give
the likelihood ratio

    L = sqrt(s^2 / (s^2 + tau^2)) * exp(tau^2 d^2 / (2 s^2 (s^2 + tau^2)))

and ``min(1, 1/L)`` (kept as a running minimum across looks by the caller) is an
always-valid p-value; ``{d : L < 1/alpha}`` is a confidence sequence, valid at every
look at once. ``tau`` is the size of effect the test is tuned to find fastest.

Metrics and scales:
- latency is compared on the log scale: LLM latencies are heavy-tailed and multiplicative
  (a slower config stretches every request by a factor), so the mean of log latency
  (the geometric mean) converges fast where the raw mean is dominated by a few stalls;
  the effect is reported as a relative change ``exp(d) - 1``.
- cost per request (and tokens per request) is compared on its mean (the bill is the mean
  times the volume), made robust by winsorising both arms at a quantile of the *pooled*
  samples (the same cap for both arms, so an A/A test stays an A/A test) and reported
  relative to control. With a covariate, the means are CUPED-adjusted (Deng et al.,
  "Improving the sensitivity of online controlled experiments by utilizing
  pre-experiment data", WSDM 2013): ``y - theta (x - mean x)`` with ``theta`` the pooled
  regression slope of ``y`` on ``x``. The covariate must not depend on the arm: the
  prompt's tokens as the client sent it (before any token policy) explain most of what a
  request costs, and no config changes them. The adjusted difference estimates the same
  effect with the variance ``x`` explains taken out.
- error rate and other proportions: difference of proportions, absolute points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import special
from scipy import stats as sps

MIN_SAMPLES_PER_ARM = 30  # below this the normal approximation is not trusted: p = 1


@dataclass(frozen=True, slots=True)
class Comparison:
    """Treatment against control for one metric.

    ``effect`` is relative (``+0.10`` = 10% higher) for ``scale`` "log" and "mean", and
    in absolute points for "proportion"; ``ci_low``/``ci_high`` bound it (a confidence
    sequence for the sequential tests). ``p_value`` is the always-valid p-value of this
    look (``min`` with the previous look's when given).
    """

    metric: str
    scale: str
    n_control: int
    n_treatment: int
    control: float
    treatment: float
    effect: float
    ci_low: float
    ci_high: float
    p_value: float
    standardized: float  # Cohen's d (means) or Cohen's h (proportions)

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def msprt(diff: float, var: float, tau: float) -> float:
    """The mixture likelihood ratio of ``diff`` (variance ``var``) against 0."""
    if var <= 0 or tau <= 0:
        return 1.0 if diff == 0 else math.inf
    t2 = tau * tau
    exponent = t2 * diff * diff / (2 * var * (var + t2))
    if exponent > 700:
        return math.inf
    return math.sqrt(var / (var + t2)) * math.exp(exponent)


def always_valid_p(diff: float, var: float, tau: float, previous: float = 1.0) -> float:
    ratio = msprt(diff, var, tau)
    return min(previous, 1.0 if ratio <= 1 else 1.0 / ratio)


def confidence_sequence(diff: float, var: float, tau: float, alpha: float
                        ) -> tuple[float, float]:
    """Bounds on the true difference valid at every look (the mSPRT's acceptance set)."""
    if var <= 0:
        return diff, diff
    t2 = tau * tau
    half = math.sqrt(var * (var + t2) / t2 * (2 * math.log(1 / alpha) + math.log((var + t2) / var)))
    return diff - half, diff + half


def _arrays(control: Sequence[float], treatment: Sequence[float]
            ) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(control, dtype=float)
    t = np.asarray(treatment, dtype=float)
    return c[np.isfinite(c)], t[np.isfinite(t)]


def _no_test(metric: str, scale: str, c: np.ndarray, t: np.ndarray, cv: float, tv: float
             ) -> Comparison:
    return Comparison(metric, scale, len(c), len(t), cv, tv, math.nan, -math.inf, math.inf,
                      1.0, math.nan)


def compare_log_means(control: Sequence[float], treatment: Sequence[float], *,
                      metric: str = "latency_ms", tau: float = 0.05, alpha: float = 0.05,
                      previous_p: float = 1.0) -> Comparison:
    """Geometric means of a positive, heavy-tailed metric (latency, TTFT)."""
    c, t = _arrays(control, treatment)
    c, t = np.log(np.maximum(c[c > 0], 1e-9)), np.log(np.maximum(t[t > 0], 1e-9))
    cv = float(np.exp(c.mean())) if len(c) else math.nan
    tv = float(np.exp(t.mean())) if len(t) else math.nan
    if min(len(c), len(t)) < MIN_SAMPLES_PER_ARM:
        return _no_test(metric, "log", c, t, cv, tv)
    vc, vt = c.var(ddof=1), t.var(ddof=1)
    diff = float(t.mean() - c.mean())
    var = vc / len(c) + vt / len(t)
    low, high = confidence_sequence(diff, var, tau, alpha)
    pooled_sd = math.sqrt((vc + vt) / 2) or math.inf
    return Comparison(metric, "log", len(c), len(t), cv, tv, math.expm1(diff),
                      math.expm1(low), math.expm1(high),
                      always_valid_p(diff, var, tau, previous_p), diff / pooled_sd)


def cuped(c: np.ndarray, t: np.ndarray, xc: np.ndarray, xt: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Both arms' values with the part the covariate explains taken out (one pooled
    slope, centred on the pooled covariate mean, so the arms' means move together and
    their difference keeps its expectation). A missing covariate (NaN) is the pooled
    mean: that row is left as it is."""
    x = np.concatenate([xc, xt])
    known = np.isfinite(x)
    if known.sum() < 2:
        return c, t
    centre = float(x[known].mean())
    x = np.where(known, x, centre) - centre
    y = np.concatenate([c, t])
    spread = float(x @ x)
    if spread <= 0:
        return c, t
    theta = float(x @ (y - y.mean())) / spread
    adjusted = y - theta * x
    return adjusted[: len(c)], adjusted[len(c):]


def compare_means(control: Sequence[float], treatment: Sequence[float], *,
                  metric: str = "cost_usd", tau: float = 0.05, alpha: float = 0.05,
                  winsorize: float = 0.99, previous_p: float = 1.0,
                  covariates: tuple[Sequence[float], Sequence[float]] | None = None,
                  ) -> Comparison:
    """Means of a skewed metric (cost or tokens per request), winsorised at the pooled
    ``winsorize`` quantile; ``tau`` and the effect are relative to the control mean.
    ``covariates``: one value per sample of each arm (aligned, NaN where unknown), for
    CUPED; samples that are not finite are dropped with their covariate."""
    raw_c, raw_t = np.asarray(control, dtype=float), np.asarray(treatment, dtype=float)
    keep_c, keep_t = np.isfinite(raw_c), np.isfinite(raw_t)
    c, t = raw_c[keep_c], raw_t[keep_t]
    if min(len(c), len(t)) < MIN_SAMPLES_PER_ARM:
        return _no_test(metric, "mean", c, t, float(c.mean()) if len(c) else math.nan,
                        float(t.mean()) if len(t) else math.nan)
    if winsorize < 1:
        cap = float(np.quantile(np.concatenate([c, t]), winsorize))
        c, t = np.minimum(c, cap), np.minimum(t, cap)
    mc, mt = float(c.mean()), float(t.mean())
    if covariates is not None:
        xc, xt = (np.asarray(x, dtype=float) for x in covariates)
        if xc.shape != raw_c.shape or xt.shape != raw_t.shape:
            raise ValueError(f"{metric}: covariates must have one value per sample")
        c, t = cuped(c, t, xc[keep_c], xt[keep_t])
    vc, vt = c.var(ddof=1), t.var(ddof=1)
    diff = float(t.mean() - c.mean())
    var = vc / len(c) + vt / len(t)
    scale = abs(mc) or 1.0
    low, high = confidence_sequence(diff, var, tau * scale, alpha)
    pooled_sd = math.sqrt((vc + vt) / 2) or math.inf
    return Comparison(metric, "mean", len(c), len(t), mc, mt, diff / scale, low / scale,
                      high / scale, always_valid_p(diff, var, tau * scale, previous_p),
                      diff / pooled_sd)


def compare_proportions(control_hits: float, control_n: int, treatment_hits: float,
                        treatment_n: int, *, metric: str = "error_rate", tau: float = 0.02,
                        alpha: float = 0.05, previous_p: float = 1.0) -> Comparison:
    """Two proportions (error rate), or two means of scores in [0, 1] (ratings, a judge's
    P(right)) given as sums: a score's variance is at most ``p (1 - p)`` for its mean
    ``p``, so the binomial variance keeps the test valid (conservative). The effect is
    in absolute points."""
    if min(control_n, treatment_n) < MIN_SAMPLES_PER_ARM:
        pc = control_hits / control_n if control_n else math.nan
        pt = treatment_hits / treatment_n if treatment_n else math.nan
        return Comparison(metric, "proportion", control_n, treatment_n, pc, pt, math.nan,
                          -math.inf, math.inf, 1.0, math.nan)
    pc, pt = control_hits / control_n, treatment_hits / treatment_n
    # a smoothed pooled rate keeps the variance positive when neither arm saw an error
    pooled = (control_hits + treatment_hits + 1) / (control_n + treatment_n + 2)
    var = pooled * (1 - pooled) * (1 / control_n + 1 / treatment_n)
    diff = pt - pc
    low, high = confidence_sequence(diff, var, tau, alpha)
    h = 2 * math.asin(math.sqrt(pt)) - 2 * math.asin(math.sqrt(pc))
    return Comparison(metric, "proportion", control_n, treatment_n, pc, pt, diff, low, high,
                      always_valid_p(diff, var, tau, previous_p), h)


def welch_p(control: Sequence[float], treatment: Sequence[float]) -> float:
    """The fixed-horizon Welch t-test p-value: valid read once, not at every look.
    (Computed directly: ``scipy.stats.ttest_ind`` gives the same value at 50x the cost,
    which the simulation benchmark pays 150,000 times.)"""
    c, t = _arrays(control, treatment)
    if min(len(c), len(t)) < 2:
        return 1.0
    vc, vt = c.var(ddof=1) / len(c), t.var(ddof=1) / len(t)
    se2 = vc + vt
    if se2 <= 0:
        return 1.0 if c.mean() == t.mean() else 0.0
    stat = (t.mean() - c.mean()) / math.sqrt(se2)
    dof = se2 * se2 / (vc * vc / (len(c) - 1) + vt * vt / (len(t) - 1))
    return float(2 * special.stdtr(dof, -abs(stat)))


def sample_ratio_mismatch(counts: Mapping[str, int], weights: Mapping[str, float]) -> float:
    """Chi-square p-value of the arms' unit counts against their weights. A tiny p (the
    usual threshold is 0.001) means assignment or logging is broken and no effect
    estimate can be trusted."""
    arms = [a for a in weights if weights[a] > 0]
    observed = np.array([counts.get(a, 0) for a in arms], dtype=float)
    total = observed.sum()
    if len(arms) < 2 or total == 0:
        return 1.0
    expected = np.array([weights[a] for a in arms], dtype=float)
    expected = expected / expected.sum() * total
    return float(sps.chisquare(observed, expected).pvalue)


def sample_size_means(sd: float, mde: float, *, alpha: float = 0.05, power: float = 0.8
                      ) -> int:
    """Per-arm samples for a fixed-horizon two-sided test to find a difference ``mde``
    of means with standard deviation ``sd`` (on the scale tested: log for latency)."""
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    return math.ceil(2 * (z * sd / mde) ** 2)


def sample_size_proportions(base: float, mde: float, *, alpha: float = 0.05,
                            power: float = 0.8) -> int:
    """Per-arm samples to find a rise of ``mde`` points over a base rate ``base``."""
    z_a, z_b = sps.norm.ppf(1 - alpha / 2), sps.norm.ppf(power)
    p1, p2 = base, base + mde
    pbar = (p1 + p2) / 2
    num = (z_a * math.sqrt(2 * pbar * (1 - pbar))
           + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2
    return math.ceil(num / mde ** 2)


@dataclass(frozen=True, slots=True)
class Guardrail:
    """A metric that must not get worse: breached when the confidence sequence shows
    the treatment worse than control by more than ``tolerance`` (relative for latency
    and cost, points for error rate) at every plausible value, i.e. ``ci_low >
    tolerance`` for a metric where higher is worse."""

    metric: str
    tolerance: float = 0.0
    higher_is_worse: bool = True

    def breached(self, comparison: Comparison) -> bool:
        if self.higher_is_worse:
            return comparison.ci_low > self.tolerance
        return comparison.ci_high < -self.tolerance


DEFAULT_GUARDRAILS = (
    Guardrail("latency_ms", 0.0),
    Guardrail("error_rate", 0.0),
    Guardrail("cost_usd", 0.0),
)
