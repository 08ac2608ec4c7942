"""Train and calibrate the cascade's answer judge (``services.routing.judge``).

Called by ``services.routing.train`` with the data's answers and the router's
leave-family-out scores of their prompts (the score the router gives a prompt of a task
family it never saw, not an in-sample one the judge would learn to over-trust). Every
model's answers train it (label: that answer was right); thresholds come from
out-of-fold scores of the cheap model's answers, folds by prompt (a prompt's answers
stay in one fold), jointly with the router's threshold for sending a prompt straight to
the strong model when a cascade is on (``joint_thresholds``): the cheapest pair that
keeps the quality target. Deterministic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.routing.answer_features import answer_features
from services.routing.judge import AnswerJudge

DEFAULT_C = 1.0
CHEAP_COST = 0.05  # a cheap call's cost relative to a strong one (calibration only)
ROUTER_QUANTILES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class JudgeData:
    """Answers to judge: one row per (prompt, model's answer)."""

    prompts: list[str]
    answers: list[str]
    correct: np.ndarray  # bool per row
    router_p_strong: np.ndarray  # the router's (out-of-family) score of the row's prompt

    def features(self) -> np.ndarray:
        return np.asarray([
            answer_features(p, a, router_p_strong=float(r))
            for p, a, r in zip(self.prompts, self.answers, self.router_p_strong, strict=True)
        ], dtype=np.float64)


def fit(features: np.ndarray, correct: np.ndarray, *, c: float = DEFAULT_C
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean, scale, weights, bias) of a logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression

    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant feature (e.g. no logprobs in training) stays 0
    model = LogisticRegression(C=c, max_iter=5000)
    model.fit((features - mean) / scale, correct)
    return mean, scale, model.coef_[0].astype(np.float64), float(model.intercept_[0])


def prompt_folds(prompts: Sequence[str], folds: int) -> np.ndarray:
    return np.asarray([int(hashlib.sha256(p.encode()).hexdigest(), 16) % folds
                       for p in prompts])


def out_of_fold(features: np.ndarray, correct: np.ndarray, prompts: Sequence[str], *,
                folds: int = 5, c: float = DEFAULT_C) -> np.ndarray:
    """P(correct) of every row from a judge that never saw its prompt."""
    assignment = prompt_folds(prompts, folds)
    scores = np.zeros(len(correct))
    for k in range(folds):
        test = assignment == k
        if not test.any() or test.all():
            continue
        mean, scale, weights, bias = fit(features[~test], correct[~test], c=c)
        z = ((features[test] - mean) / scale) @ weights + bias
        scores[test] = 1.0 / (1.0 + np.exp(-z))
    return scores


def cascade_threshold(scores: np.ndarray, weak_ok: np.ndarray, strong_ok: np.ndarray,
                      target: float, direct: np.ndarray | None = None) -> float:
    """The lowest threshold whose cascade (accept scores >= it; ``direct`` rows go to the
    strong model without one) keeps ``target`` x the strong model's accuracy; 1.01
    (always escalate) when none does."""
    need = target * strong_ok.mean()
    direct = np.zeros(len(scores), bool) if direct is None else direct
    for t in np.unique(np.concatenate([scores[~direct], [1.01]])):
        accepted = (scores >= t) & ~direct
        if np.where(accepted, weak_ok, strong_ok).mean() >= need - 1e-12:
            return float(t)
    return 1.01


def joint_thresholds(scores: np.ndarray, router_p: np.ndarray, weak_ok: np.ndarray,
                     strong_ok: np.ndarray, target: float,
                     cheap_cost: float = CHEAP_COST) -> tuple[float, float]:
    """(router threshold, judge threshold) of the cheapest router + cascade that keeps
    ``target``: prompts at or above the router threshold go straight to the strong model
    (saving the cheap call), the rest are judged. Candidates: quantiles of the router's
    score, and infinity (everything judged)."""
    best: tuple[float, float, float] | None = None
    for r in [*np.quantile(router_p, ROUTER_QUANTILES), float("inf")]:
        direct = router_p >= r
        t = cascade_threshold(scores, weak_ok, strong_ok, target, direct)
        accepted = (scores >= t) & ~direct
        cost = float(np.where(direct, 1.0, cheap_cost + np.where(accepted, 0.0, 1.0)).sum())
        if best is None or cost < best[0]:
            best = (cost, float(r), t)
    assert best is not None
    return best[1], best[2]


def train_judge(
    answers: JudgeData, *, cheap_rows: np.ndarray, weak_ok: np.ndarray,
    strong_ok: np.ndarray, targets: Sequence[float], folds: int = 5, c: float = DEFAULT_C,
) -> tuple[AnswerJudge, np.ndarray]:
    """Fit on every answer; thresholds from the out-of-fold scores of the cheap model's
    answers (``cheap_rows``, aligned with ``weak_ok``/``strong_ok``). Returns (judge,
    out-of-fold scores of all rows)."""
    x = answers.features()
    oof = out_of_fold(x, answers.correct, answers.prompts, folds=folds, c=c)
    cheap = oof[cheap_rows]
    router_p = answers.router_p_strong[cheap_rows]
    joint = {float(t): joint_thresholds(cheap, router_p, weak_ok, strong_ok, t)
             for t in targets}
    mean, scale, weights, bias = fit(x, answers.correct, c=c)
    meta = {"rows": len(answers.correct), "prompts": len(set(answers.prompts)),
            "folds": folds, "C": c, "accuracy": float(answers.correct.mean())}
    return AnswerJudge(mean, scale, weights, bias, {t: j for t, (_, j) in joint.items()},
                       router_thresholds={t: r for t, (r, _) in joint.items()},
                       meta=meta), oof
