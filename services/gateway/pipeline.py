"""The request path as an ordered list of stages.

A stage is a small object with one async method, ``__call__(ctx, call_next)``: it may
read or change the request context, answer on its own (a cache hit), or call the rest
of the pipeline and look at or wrap the reply on the way back (store it in a cache,
count its tokens). The last stage answers without ``call_next``: it dispatches to a
worker. Later capabilities (auth and budget, cache, routing, token optimisation) slot
in as stages without touching the routes:

    auth+budget -> normalize -> cache lookup -> routing -> token optimization -> dispatch

Routing only decides: it sets ``model`` and ``upstream`` (the worker pool or a hosted
API) and calls the rest of the pipeline once per attempt (fallback, cascade), so every
attempt is optimised for its model and sent by the one last stage, dispatch.
A stage that rewrites what goes upstream (token optimisation) sets ``upstream_request``;
``request_dict`` stays the request as the client sent it (cache keys, prompt hashes).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from services.gateway.auth import Principal
from services.protocol import ChatCompletionRequest, CompletionRequest, Usage

Endpoint = Literal["chat.completions", "completions"]


@dataclass(slots=True)
class Reply:
    """What the pipeline answers: a whole JSON body, or a stream of chunk payloads.

    ``chunks`` yields the JSON of each SSE event (without the ``data:`` framing or the
    final ``[DONE]``, which the route adds), so stages can inspect or replay them.
    """

    body: bytes | None = None
    chunks: AsyncIterator[bytes] | None = None
    status_code: int = 200


@dataclass(slots=True)
class RequestContext:
    request_id: str
    endpoint: Endpoint
    request: ChatCompletionRequest | CompletionRequest
    principal: Principal
    model_requested: str
    model: str = ""  # the model that will serve; routing may change it
    upstream: str = "vllm"  # who serves it: the worker pool, or "openai" / "anthropic"
    received_at: float = field(default_factory=time.perf_counter)
    received_wall: datetime = field(default_factory=lambda: datetime.now(UTC))
    request_headers: Mapping[str, str] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)
    # filled in as the request moves through the stages
    worker: str | None = None
    cache_layer: str | None = None
    cache_age_s: float | None = None
    route_reason: str | None = None
    cascade_score: float | None = None  # the cascade judge's score of the cheap answer
    cascade_decision: str | None = None  # accepted | escalated | kept_late | cheap_failed
    prompt_tokens_before_optimization: int | None = None
    prompt_tokens_after_optimization: int | None = None
    token_policy: Any = None  # services.tokens.Policy, set by the token policy stage
    token_stages: dict[str, int] | None = None  # tokens saved per optimisation stage
    upstream_request: dict[str, Any] | None = None  # what to send when it differs
    max_tokens_cap: int | None = None  # sent as max_tokens when the request has none
    upstream_started_at: float | None = None
    upstream_finished_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    usage: Usage | None = None
    status_code: int = 200
    error_type: str | None = None
    # set by the experiment stage: "experiment=arm,..." and the arms' overrides
    experiment_arms: str | None = None
    overrides: dict[str, Any] | None = None
    _request_dict: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.model:
            self.model = self.model_requested

    @property
    def stream(self) -> bool:
        return bool(self.request.stream)

    @property
    def request_dict(self) -> dict[str, Any]:
        """The request as the client set it (unset defaults left out), computed once;
        stages that change the request must call ``request_changed()``."""
        if self._request_dict is None:
            self._request_dict = self.request.model_dump(exclude_unset=True)
        return self._request_dict

    def request_changed(self) -> None:
        self._request_dict = None

    @property
    def sent_request(self) -> dict[str, Any]:
        """The request the upstream gets: the rewritten one if a stage rewrote it, else
        the client's (before the per-send changes of ``upstream_body``)."""
        return self.upstream_request if self.upstream_request is not None else self.request_dict

    def upstream_body(self) -> dict[str, Any]:
        """What to send upstream: ``sent_request`` for the serving model; streams always
        ask for usage (every request is counted exactly; the usage chunk is dropped again
        when the client did not ask)."""
        body = dict(self.sent_request)
        body["model"] = self.model
        if self.max_tokens_cap is not None and not (
            body.get("max_tokens") or body.get("max_completion_tokens")
        ):  # a budget reserved this many: the upstream must not generate more
            body["max_tokens"] = self.max_tokens_cap
        if self.stream:
            options = body.get("stream_options") or {}
            body["stream_options"] = {**options, "include_usage": True}
        return body


Next = Callable[[RequestContext], Awaitable[Reply]]


class Stage(Protocol):
    name: str

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply: ...


class Pipeline:
    def __init__(self, stages: Sequence[Stage]) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least its final dispatch stage")
        self.stages = tuple(stages)
        self._entry = self._build()

    def _build(self) -> Next:
        async def end(ctx: RequestContext) -> Reply:
            raise RuntimeError(f"the last stage ({self.stages[-1].name}) called call_next")

        call: Next = end
        for stage in reversed(self.stages):
            call = _bind(stage, call)
        return call

    async def __call__(self, ctx: RequestContext) -> Reply:
        return await self._entry(ctx)

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]


def _bind(stage: Stage, call_next: Next) -> Next:
    async def call(ctx: RequestContext) -> Reply:
        return await stage(ctx, call_next)

    return call
