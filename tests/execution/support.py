"""Putting workers into a pool by hand, as if their last probe had found them healthy."""

from __future__ import annotations

from services.execution import WorkerPool, WorkerState


def add(
    pool: WorkerPool, url: str, *, healthy=True, models=("m",), outstanding=0, tokens=0
) -> WorkerState:
    state = pool.get(url) or pool._new_worker(url, "config")
    state.healthy, state.models = healthy, frozenset(models)
    state.outstanding, state.outstanding_tokens = outstanding, tokens
    return state
