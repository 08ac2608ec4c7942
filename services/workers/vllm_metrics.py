"""Reading a vLLM worker's ``/metrics`` (Prometheus text format): the few gauges the
platform acts on, by exact name, over every engine line of a data-parallel worker.

- ``vllm:num_requests_waiting`` / ``vllm:num_requests_running``: the autoscaler's queue
  depth and a draining worker's requests in flight;
- ``vllm:kv_cache_usage_perc`` (0-1): the KV-cache alert;
- ``vllm:cache_config_info{num_gpu_blocks=..., block_size=...}``: how many tokens the KV
  cache holds, for prefix warming.
"""

from __future__ import annotations

import re
from functools import cache

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
CACHE_CONFIG = "vllm:cache_config_info"

_LABEL = re.compile(r'(\w+)="([^"]*)"')


@cache
def _sample(name: str) -> re.Pattern[str]:
    """One sample line of ``name`` (exactly: not a longer name it prefixes), its labels
    and its value."""
    return re.compile(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})?\s+([0-9.eE+-]+|NaN)\b",
                      re.MULTILINE)


def values(metrics_text: str, name: str) -> list[float]:
    """The value of each sample of ``name`` (one per engine), in order; [] when absent."""
    return [float(value) for _, value in _sample(name).findall(metrics_text)]


def labels(metrics_text: str, name: str) -> dict[str, str] | None:
    """The labels of the first sample of ``name`` (info metrics carry their data there);
    None when absent."""
    match = _sample(name).search(metrics_text)
    return None if match is None else dict(_LABEL.findall(match.group(1) or ""))


def total(metrics_text: str, *names: str) -> float | None:
    """The sum of every sample of ``names``; None when none of them is there."""
    found = [v for name in names for v in values(metrics_text, name)]
    return sum(found) if found else None
