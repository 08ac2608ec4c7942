"""Experiment stage: put the request in an arm of each live experiment and apply the
arm's config version to it, before anything reads those settings.

It runs first (before the token policy and the cache lookup). The unit is the tenant,
the API key or the ``X-Experiment-Unit`` header (at most ``experiments_unit_max_chars``;
a request without one is simply not enrolled in that experiment). The overrides become
the headers and fields later stages already read (``X-Token-Optimization``,
``X-Cache-Semantic``, ``Cache-Control: no-store``, ``X-Max-Latency-Ms``, the serving
model, the semantic threshold), so an arm's value wins over the client's. The arms join
the cache namespace, so arms never share cache entries. ``X-Experiment`` and the
request's log row name the arms.

The live experiments are re-read from the store every ``experiments_refresh_s``; when
the store cannot be read the last ones read stay (a replica keeps serving what it was
told until it hears otherwise).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from services.background import cancel_and_wait, now_and_every
from services.errors import InvalidRequest
from services.experiments import UNIT_HEADER, LiveExperiment
from services.gateway.pipeline import Next, Reply, RequestContext
from services.gateway.stages.routing import MAX_LATENCY_HEADER
from services.tokens import HEADER as TOKEN_HEADER

EXPERIMENT_HEADER = "x-experiment"


class ExperimentStage:
    name = "experiments"

    def __init__(self, max_unit_chars: int = 256) -> None:
        self.live: list[LiveExperiment] = []
        self._max_unit_chars = max_unit_chars
        self._refresh: asyncio.Task[None] | None = None

    async def start(self, load: Callable[[], list[LiveExperiment]], refresh_s: float) -> None:
        def refresh() -> None:
            self.live = load()

        self._refresh = await now_and_every(refresh_s, refresh, name="experiments-refresh",
                                            failure="could not read the live experiments")

    async def aclose(self) -> None:
        await cancel_and_wait(self._refresh)

    def unit(self, ctx: RequestContext, experiment: LiveExperiment) -> str | None:
        if experiment.unit == "tenant":
            return ctx.principal.tenant
        if experiment.unit == "api_key":
            return ctx.principal.key_id
        return ctx.request_headers.get(UNIT_HEADER) or None

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply:
        header = ctx.request_headers.get(UNIT_HEADER)
        if header is not None and len(header) > self._max_unit_chars:
            raise InvalidRequest(f"X-Experiment-Unit is longer than {self._max_unit_chars} "
                                 "characters", param=UNIT_HEADER)
        live = self.live
        if not live:
            return await call_next(ctx)
        assigned: list[str] = []
        overrides: dict[str, Any] = {}
        for experiment in live:
            if not experiment.applies_to(ctx.principal.tenant):
                continue
            unit = self.unit(ctx, experiment)
            arm = experiment.arm_for(unit) if unit is not None else None
            if arm is None:
                continue
            assigned.append(f"{experiment.name}={arm.name}")
            overrides.update(arm.overrides)
        if assigned:
            apply(ctx, overrides, ",".join(assigned))
        return await call_next(ctx)


def apply(ctx: RequestContext, overrides: dict[str, Any], arms: str) -> None:
    headers = {k.lower(): v for k, v in ctx.request_headers.items()}
    if "token_optimization" in overrides:
        headers[TOKEN_HEADER.lower()] = overrides["token_optimization"]
    if "cache_semantic" in overrides:
        headers["x-cache-semantic"] = "on" if overrides["cache_semantic"] else "off"
    if overrides.get("cache_enabled") is False:
        headers["cache-control"] = "no-store"
    if "max_latency_ms" in overrides:
        headers[MAX_LATENCY_HEADER] = str(overrides["max_latency_ms"])
    if "model" in overrides:
        ctx.model = overrides["model"]
    ctx.request_headers = headers
    ctx.overrides = overrides
    ctx.experiment_arms = arms
    ctx.response_headers[EXPERIMENT_HEADER] = arms
