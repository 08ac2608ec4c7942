"""Reading vLLM's Prometheus text: exact metric names, every engine's line, info labels."""

from __future__ import annotations

from services.workers import vllm_metrics

TEXT = """# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:num_requests_waiting{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 100.0
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="2048"} 1.0
process_cpu_seconds_total 1.5
"""


def test_values_are_every_engines_sample_of_exactly_that_name() -> None:
    assert vllm_metrics.values(TEXT, vllm_metrics.WAITING) == [4.0, 2.0]
    assert vllm_metrics.values(TEXT, "process_cpu_seconds_total") == [1.5]
    assert vllm_metrics.values(TEXT, "vllm:num_requests") == []  # a prefix is not a name


def test_total_sums_the_names_and_says_when_none_is_there() -> None:
    assert vllm_metrics.total(TEXT, vllm_metrics.WAITING) == 6.0
    assert vllm_metrics.total(TEXT, vllm_metrics.RUNNING, vllm_metrics.WAITING) == 9.0
    assert vllm_metrics.total("process_cpu_seconds_total 1.0\n", vllm_metrics.WAITING) is None
    assert vllm_metrics.total("", vllm_metrics.WAITING) is None


def test_labels_of_an_info_metric() -> None:
    assert vllm_metrics.labels(TEXT, vllm_metrics.CACHE_CONFIG) == {
        "block_size": "16", "engine": "0", "num_gpu_blocks": "2048"}
    assert vllm_metrics.labels(TEXT, "vllm:absent_info") is None
    assert vllm_metrics.labels("up 1\n", "up") == {}
