"""Prompt and output sizes of a request as the serving model will bill them, for budget
reservations (``services.routing.budgets``) that must not be below the real cost.

The prompt count is the serving model's own: tiktoken with OpenAI's chat framing for
OpenAI-family models (the tool and response-format definitions they bill counted as
their JSON), the vLLM worker's ``/tokenize`` (chat template applied) for vLLM models.
When neither can answer (an Anthropic model, no worker reachable) the count is a bound
no byte-level tokenizer exceeds: one token per UTF-8 byte of the serialised prompt plus
``TEMPLATE_ALLOWANCE`` for a chat template, and ``exact`` says so.

The output side is ``generations`` times the most tokens each may have: a chat request
with ``n`` choices, or a completions request with several prompts and ``n``/``best_of``
sequences each, generates that many times ``max_tokens``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from services.tokens.counting import count_request, counter_for_model, encoding_name

# model, endpoint, request -> the serving worker's token count (None: it cannot tell)
WorkerCount = Callable[[str, str, dict[str, Any]], Awaitable[int | None]]
TEMPLATE_ALLOWANCE = 256  # tokens a chat template may add around the messages
_BILLED_DEFINITIONS = ("tools", "functions", "response_format")


@dataclass(frozen=True, slots=True)
class PromptCount:
    tokens: int
    exact: bool


def byte_bound(endpoint: str, request: dict[str, Any]) -> int:
    """At least the prompt tokens of any byte-level BPE tokenizer (each token covers one
    byte or more), with room for a chat template's framing."""
    if endpoint == "chat.completions":
        parts = [request.get(k) for k in ("messages", *_BILLED_DEFINITIONS)]
        return len(orjson.dumps(parts)) + TEMPLATE_ALLOWANCE
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return len(prompt.encode()) + TEMPLATE_ALLOWANCE
    if isinstance(prompt, list):  # token ids count themselves; strings by their bytes
        return sum(len(p.encode()) if isinstance(p, str) else len(p) if isinstance(p, list)
                   else 1 for p in prompt) + TEMPLATE_ALLOWANCE
    return TEMPLATE_ALLOWANCE


def generations(endpoint: str, request: dict[str, Any]) -> int:
    """How many sequences the request generates: its prompts times its choices."""
    choices = max(_positive(request.get("n")), _positive(request.get("best_of")))
    if endpoint == "chat.completions":
        return choices
    prompt = request.get("prompt")
    prompts = 1
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        prompts = len(prompt)  # a batch of strings or of token-id lists
    return prompts * choices


def _positive(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


class PromptCounter:
    """The serving model's prompt tokens of a request (see the module docstring)."""

    def __init__(self, worker_count: WorkerCount | None = None) -> None:
        self._worker_count = worker_count
        self._counters: dict[str, Callable[[str], int] | None] = {}

    async def count(self, model: str, upstream: str, endpoint: str,
                    request: dict[str, Any]) -> PromptCount:
        if encoding_name(model) is not None:
            counter = await self._openai_counter(model)
            if counter is not None:
                return PromptCount(_openai_prompt_tokens(endpoint, request, counter), True)
        if upstream == "vllm" and self._worker_count is not None:
            tokens = await self._worker_count(model, endpoint, request)
            if tokens is not None:
                return PromptCount(tokens, exact=True)
        return PromptCount(byte_bound(endpoint, request), exact=False)

    async def _openai_counter(self, model: str) -> Callable[[str], int] | None:
        """The model's tiktoken counter (None: its vocabulary is not shipped); the
        first use loads a vocabulary (~0.5 s), off the event loop."""
        if model not in self._counters:
            counter, exact = await asyncio.to_thread(counter_for_model, model)
            if len(self._counters) > 1024:  # model names come from clients
                self._counters.clear()
            self._counters[model] = counter if exact else None
        return self._counters[model]


def _openai_prompt_tokens(endpoint: str, request: dict[str, Any],
                          counter: Callable[[str], int]) -> int:
    """OpenAI's count: messages with their framing, each ``name`` (one token more), and
    the tool and response-format definitions it bills as prompt (counted as JSON)."""
    tokens = count_request(endpoint, request, counter)
    if endpoint != "chat.completions":
        return tokens
    for message in request.get("messages") or []:
        if isinstance(message, dict) and message.get("name"):
            tokens += counter(str(message["name"])) + 1
    for key in _BILLED_DEFINITIONS:
        if request.get(key):
            tokens += counter(orjson.dumps(request[key]).decode())
    return tokens
