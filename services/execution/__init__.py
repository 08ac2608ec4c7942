"""Talking to upstream workers: the pooled client, the worker pool with its scheduling
and admission control, registration, prefix warming of joining workers."""

from services.execution.admission import (
    DEFAULT_PRIORITY,
    PRIORITY_CLASSES,
    AdmissionMetrics,
    PriorityClass,
    request_priority,
)
from services.execution.client import UpstreamClient, parse_stream_event
from services.execution.pool import Lease, WorkerPool, WorkerState
from services.execution.registry import deregister_worker, register_worker, store_sync
from services.execution.scheduling import SCHEDULING_POLICIES, SchedulingPolicy, estimate_tokens
from services.execution.warming import PrefixWarmer, load_warm_prefixes

__all__ = [
    "DEFAULT_PRIORITY",
    "PRIORITY_CLASSES",
    "SCHEDULING_POLICIES",
    "AdmissionMetrics",
    "Lease",
    "PrefixWarmer",
    "PriorityClass",
    "SchedulingPolicy",
    "UpstreamClient",
    "parse_stream_event",
    "WorkerPool",
    "WorkerState",
    "deregister_worker",
    "estimate_tokens",
    "load_warm_prefixes",
    "register_worker",
    "request_priority",
    "store_sync",
]
