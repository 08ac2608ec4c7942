"""The cascade's learned answer scorer: P(the cheap model's answer is right).

A logistic model over ``answer_features`` (internal consistency, format against the
prompt, length, hedging, logprobs, self-consistency, the router's own score), NumPy only
at inference: no model call, a fraction of a millisecond per answer (docs/benchmarks.md).
Training (``fit_judge``, scikit-learn at training time only) uses answers with known
correctness: RouteLLM's GSM8K dev responses of Mixtral-8x7B and GPT-4, both models'
answers, so the features must hold for two answer styles (Mixtral's calculator
annotations and GPT-4's plain prose arithmetic).

Thresholds per quality target (``auto`` 95%, ``auto:cheap`` 90%, ``auto:quality`` 99% of
the strong model's accuracy) are chosen on out-of-fold scores: the lowest P(correct) at
which the cascade over the dev prompts (cheap first, escalate below the threshold)
still keeps the target, jointly with the router score from which a prompt skips the
cheap call (``router_thresholds``; a cheap call costs a few percent of a strong one, so
that is rarely worth it). The shipped model is ``models/answer-judge-v1.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.routing.answer_features import FEATURE_NAMES, answer_features

SHIPPED_JUDGE = Path(__file__).with_name("models") / "answer-judge-v1.json"


@dataclass(frozen=True)
class Verdict:
    """The judge's reading of one answer: P(correct) and what lowered it."""

    score: float
    reasons: tuple[str, ...]

    def describe(self) -> str:
        notes = ", ".join(self.reasons) if self.reasons else "no warning signs"
        return f"judge {self.score:.2f} ({notes})"


# feature -> the note a verdict gives when it counts against the answer
_NOTES = {
    "any_wrong_calculation": "wrong arithmetic",
    "final_contradicts_last_result": "final answer contradicts its calculation",
    "several_final_answers": "changes its answer",
    "no_final_number": "no number for a numeric question",
    "count_not_whole": "count not a whole number",
    "options_letter_mismatch": "no single option chosen",
    "hedging": "hedging",
    "rounding": "rounds or approximates",
    "refusal": "refusal",
    "truncated": "truncated",
    "empty": "empty answer",
}


@dataclass(frozen=True)
class AnswerJudge:
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    thresholds: dict[float, float]  # quality target -> P(correct) below which to escalate
    # quality target -> router P(strong needed) from which a cascaded route skips the cheap
    # call (infinity: every prompt is judged)
    router_thresholds: dict[float, float] = field(default_factory=dict)
    version: str = "v1"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (len(FEATURE_NAMES),)
        if not (self.mean.shape == self.scale.shape == self.weights.shape == shape):
            raise ValueError(f"answer judge has {self.weights.shape[0]} weights, expected "
                             f"{shape[0]}: it was trained with other features")
        if not self.thresholds:
            raise ValueError("an answer judge needs a threshold for at least one target")

    def p_correct_rows(self, rows: np.ndarray) -> np.ndarray:
        z = ((rows - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))

    def judge(
        self, prompt: str, answer: str, *, finish_reason: str | None = None,
        token_logprobs: Sequence[float] | None = None, samples: Sequence[str] = (),
        router_p_strong: float = 0.5,
    ) -> Verdict:
        row = answer_features(prompt, answer, finish_reason=finish_reason,
                              token_logprobs=token_logprobs, samples=samples,
                              router_p_strong=router_p_strong)
        values = np.asarray(row, dtype=np.float64)
        score = float(self.p_correct_rows(values[None, :])[0])
        reasons = [note for name, note in _NOTES.items()
                   if values[FEATURE_NAMES.index(name)] > 0]
        if token_logprobs:
            reasons.append(f"mean logprob {row[FEATURE_NAMES.index('mean_logprob')] * 5:.2f}")
        if samples:
            reasons.append(f"self-consistency {row[FEATURE_NAMES.index('sample_agreement')]:.2f}")
        return Verdict(score, tuple(reasons))

    def threshold(self, target: float) -> float:
        """The threshold of the nearest calibrated target at or above ``target``."""
        above = [t for t in self.thresholds if t >= target - 1e-9]
        return self.thresholds[min(above) if above else max(self.thresholds)]

    def router_threshold(self, target: float) -> float:
        """With a cascade, the router P(strong needed) from which to go straight to the
        strong tier (infinity when not calibrated: every cheap-eligible prompt is judged)."""
        if not self.router_thresholds:
            return float("inf")
        above = [t for t in self.router_thresholds if t >= target - 1e-9]
        return self.router_thresholds[min(above) if above else max(self.router_thresholds)]

    def to_json(self) -> str:
        return json.dumps({
            "version": self.version, "features": list(FEATURE_NAMES),
            "mean": self.mean.tolist(), "scale": self.scale.tolist(),
            "weights": self.weights.tolist(), "bias": self.bias,
            "thresholds": {f"{t:.2f}": v for t, v in sorted(self.thresholds.items())},
            "router_thresholds": {f"{t:.2f}": (v if v != float("inf") else None)
                                  for t, v in sorted(self.router_thresholds.items())},
            "meta": self.meta,
        }, indent=1)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")

    @classmethod
    def from_json(cls, raw: str) -> AnswerJudge:
        data = json.loads(raw)
        if data.get("features") != list(FEATURE_NAMES):
            raise ValueError("answer judge was trained with other features: retrain it "
                             "(python -m services.routing.train_judge)")
        return cls(
            mean=np.asarray(data["mean"], dtype=np.float64),
            scale=np.asarray(data["scale"], dtype=np.float64),
            weights=np.asarray(data["weights"], dtype=np.float64),
            bias=float(data["bias"]),
            thresholds={float(t): float(v) for t, v in data["thresholds"].items()},
            router_thresholds={float(t): float("inf") if v is None else float(v)
                               for t, v in data.get("router_thresholds", {}).items()},
            version=str(data.get("version", "v1")), meta=dict(data.get("meta", {})),
        )

    @classmethod
    def load(cls, path: Path = SHIPPED_JUDGE) -> AnswerJudge:
        if not path.is_file():
            raise FileNotFoundError(f"answer judge {path} does not exist")
        return cls.from_json(path.read_text())
