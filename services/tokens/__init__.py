"""Token counting and prompt compression (lossless rewrites, query-aware extraction),
used by the gateway's token optimisation stage, the benchmarks and the
``token_optimization`` flow."""

from services.tokens.counting import (
    DEFAULT_ENCODING,
    count_request,
    counter_for_model,
    encoding_name,
    text_counter,
)
from services.tokens.extractive import compress
from services.tokens.optimizer import Optimized, StageSaving, TokenOptimizer
from services.tokens.policy import HEADER, OFF, InvalidPolicy, Policy
from services.tokens.prompt import PromptCount, PromptCounter, WorkerCount, generations
from services.tokens.worker import worker_count

__all__ = [
    "DEFAULT_ENCODING",
    "HEADER",
    "OFF",
    "InvalidPolicy",
    "Optimized",
    "Policy",
    "PromptCount",
    "PromptCounter",
    "StageSaving",
    "TokenOptimizer",
    "WorkerCount",
    "compress",
    "count_request",
    "counter_for_model",
    "encoding_name",
    "generations",
    "text_counter",
    "worker_count",
]
