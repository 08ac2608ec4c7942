"""Which of the workers that can take a request gets it.

Request counts are a poor measure of a vLLM worker's load: one 4k-token generation
keeps its batch busy as long as fifty short ones. So the default policy weighs each
in-flight request by its estimated tokens (prompt + expected output), known before
the request is sent. ``power_of_two`` samples two workers and takes the lighter (the
classic answer when many gateway replicas would otherwise all pick the same idle
worker); ``least_outstanding_requests`` counts requests only.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal, Protocol

SchedulingPolicy = Literal[
    "least_outstanding_tokens", "power_of_two", "least_outstanding_requests"
]
SCHEDULING_POLICIES: tuple[SchedulingPolicy, ...] = (
    "least_outstanding_tokens", "power_of_two", "least_outstanding_requests"
)

# Used when a request sets no max_tokens: vLLM then generates up to the context's end,
# but most chat answers are a few hundred tokens.
DEFAULT_EXPECTED_OUTPUT_TOKENS = 256
_CHARS_PER_TOKEN = 4  # English text with a BPE tokenizer; an estimate, not a count


class Schedulable(Protocol):
    outstanding: int
    outstanding_tokens: int
    order: int


def estimate_tokens(
    body: dict[str, Any], *, default_output_tokens: int = DEFAULT_EXPECTED_OUTPUT_TOKENS
) -> int:
    """Estimated prompt tokens plus expected output tokens of an OpenAI request body.

    The prompt is estimated from its characters (token ids are counted as they are);
    the output is ``max_completion_tokens``/``max_tokens`` times ``n``, or a default.
    """
    prompt = _prompt_tokens(body.get("messages", body.get("prompt")))
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    output = limit if isinstance(limit, int) and limit > 0 else default_output_tokens
    choices = body.get("n")
    return prompt + output * (choices if isinstance(choices, int) and choices > 0 else 1)


def _prompt_tokens(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return -(-len(value) // _CHARS_PER_TOKEN)
    if isinstance(value, int):  # a token id of a pre-tokenized prompt
        return 1
    if isinstance(value, dict):  # a chat message or a content part
        return _prompt_tokens(value.get("content", value.get("text")))
    if isinstance(value, list):
        return sum(_prompt_tokens(item) for item in value)
    return 0


def pick_least_loaded(
    candidates: Sequence[Schedulable], policy: SchedulingPolicy, rng: random.Random
) -> Schedulable:
    """The candidate ``policy`` prefers; ties go to the one chosen longest ago."""
    if policy == "least_outstanding_requests":
        return min(candidates, key=lambda w: (w.outstanding, w.order))
    if policy == "power_of_two" and len(candidates) > 2:
        candidates = rng.sample(list(candidates), 2)
    return min(candidates, key=lambda w: (w.outstanding_tokens, w.outstanding, w.order))
