"""Heuristic doubts about a cheap model's answer for a FrugalGPT-style cascade.

The cascade's score is the learned judge's P(correct) (``services.routing.judge``) times
this heuristic's doubts (token confidence below ``NEUTRAL_CONFIDENCE``, and the
penalties below): what the judge's training data (answers without logprobs or extra
samples, almost never truncated or refused) could not teach it.
Without a judge, this score is the cascade's score.

The cascade sends a request to the cheap tier first and escalates to the strong tier
when the answer scores below a threshold. The score is in [0, 1] and built from what
the gateway can see without another model:

- confidence: the geometric mean of the answer's token probabilities, when the worker
  returns logprobs (vLLM and OpenAI do); 0.75 when it does not (neither trusted nor
  doubted);
- a truncated answer (``finish_reason == "length"``) is scored down hard: it is
  incomplete whatever its tokens say;
- refusals ("I can't help", "as an AI") and hedging ("I'm not sure", "it might be")
  are scored down, as is an empty answer;
- self-consistency, when configured: the share of extra samples that agree with the
  answer (same normalised text) scales the score.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

NEUTRAL_CONFIDENCE = 0.75
REFUSAL = re.compile(
    r"\b(i\s*(?:can(?:no|')t|am unable to|'m unable to|won't)\s+(?:help|assist|answer|provide"
    r"|do that)|as an ai\b|i'm sorry, but|i apologi[sz]e, but)",
    re.I,
)
HEDGE = re.compile(
    r"\b(i'?m not (?:sure|certain)|i don'?t know|not enough information|it (?:might|may|could)"
    r" be|possibly|i (?:think|believe|guess)|hard to say|unclear)\b",
    re.I,
)


@dataclass(frozen=True)
class AnswerScore:
    score: float
    confidence: float
    reasons: tuple[str, ...]
    judged: float | None = None  # the learned judge's P(correct), when one scored it

    def describe(self) -> str:
        notes = ", ".join(self.reasons) if self.reasons else "no warning signs"
        judge = f"judge {self.judged:.2f}, " if self.judged is not None else ""
        return f"score {self.score:.2f} ({judge}{notes})"


def score_answer(
    answer: str,
    *,
    finish_reason: str | None,
    token_logprobs: Sequence[float] | None = None,
    samples: Sequence[str] = (),
) -> AnswerScore:
    reasons: list[str] = []
    if token_logprobs:
        confidence = math.exp(sum(token_logprobs) / len(token_logprobs))
        reasons.append(f"token confidence {confidence:.2f}")
    else:
        confidence = NEUTRAL_CONFIDENCE
    score = confidence
    if not answer.strip():
        score, reasons = 0.0, [*reasons, "empty answer"]
    if finish_reason == "length":
        score *= 0.2
        reasons.append("truncated")
    if REFUSAL.search(answer):
        score *= 0.3
        reasons.append("refusal")
    elif HEDGE.search(answer):
        score *= 0.6
        reasons.append("hedging")
    if samples:
        agree = sum(_normal(s) == _normal(answer) for s in samples) / len(samples)
        score *= 0.5 + 0.5 * agree
        reasons.append(f"self-consistency {agree:.2f}")
    return AnswerScore(score=max(0.0, min(score, 1.0)), confidence=confidence,
                       reasons=tuple(reasons))


def _normal(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))
