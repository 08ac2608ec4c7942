"""Talking to upstream workers: the pooled client, the worker pool, registration."""

from services.execution.client import UpstreamClient
from services.execution.pool import WorkerPool, WorkerState
from services.execution.registry import deregister_worker, register_worker, store_sync

__all__ = [
    "UpstreamClient",
    "WorkerPool",
    "WorkerState",
    "deregister_worker",
    "register_worker",
    "store_sync",
]
