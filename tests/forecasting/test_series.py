"""Trace loaders (Azure CSV, JSONL) and binned demand series with empty bins as zeros."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from models import RequestLog, session_factory
from services.forecasting import TraceFormatError, demand_series, load_store_events, load_trace

# the first rows of the Azure code trace (Azure/AzurePublicDataset, CC-BY-4.0), shifted
AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:17:03.9799600,4808,10
2023-11-16 18:17:04.0319600,3180,8
2023-11-16 18:17:31.0781490,110,27
"""


def test_azure_csv_and_jsonl_give_the_same_series(tmp_path) -> None:
    csv = tmp_path / "azure.csv"
    csv.write_text(AZURE)
    jsonl = tmp_path / "trace.jsonl"
    jsonl.write_text('{"timestamp": 3980, "input_length": 4808, "output_length": 10}\n'
                     '{"timestamp": 4032, "input_length": 3180, "output_length": 8, '
                     '"hash_ids": [1, 2]}\n\n'
                     '{"timestamp": 31078, "input_length": 110, "output_length": 27}\n')
    for path in (csv, jsonl):
        events = load_trace(path)
        assert list(events["prompt_tokens"]) == [4808, 3180, 110]
        series = demand_series(events, "10s")
        # bins 0-10 s, 10-20 s (empty: a zero, not a gap), 20-30 s (empty), 30-40 s
        assert list(series["requests"]) == [2, 0, 0, 1]
        assert series["tokens"].sum() == 4808 + 10 + 3180 + 8 + 110 + 27
        assert (series["tokens"] == series["prompt_tokens"] + series["output_tokens"]).all()
    minute = demand_series(load_trace(csv), "1min")
    assert list(minute["requests"]) == [3]


def test_empty_bins_between_events_are_zero(tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 1, "output_length": 1}\n'
                    '{"timestamp": 60000, "input_length": 2, "output_length": 2}\n')
    series = demand_series(load_trace(path), "10s")
    assert len(series) == 7 and list(series["tokens"]) == [2, 0, 0, 0, 0, 0, 4]


@pytest.mark.parametrize("content", [
    "", "a,b,c\n1,2,3\n", "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03,4\n",
    "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,-4,2\n",
    '{"timestamp": 0, "input_length": 3}\n',
    '{"timestamp": 0, "input_length": 3, "output_length": 1}\nnot json\n',
])
def test_bad_traces_are_refused_clearly(tmp_path, content: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(TraceFormatError):
        load_trace(path)


def test_store_events_are_one_models_served_requests(store) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    sessions = session_factory(store)

    def row(model: str, seconds_ago: int, cache: str | None = None, prompt: int | None = 5):
        return RequestLog(id=str(uuid.uuid4()), created_at=now - timedelta(seconds=seconds_ago),
                          tenant="t", endpoint="chat", model_served=model, status_code=200,
                          prompt_tokens=prompt, completion_tokens=3, cache_layer=cache)

    with sessions.begin() as session:
        session.add_all([row("a", 50), row("a", 5, prompt=None), row("b", 20),
                         row("a", 30, cache="l1"), row("a", 4000)])
    events = load_store_events(store, "a", now - timedelta(hours=1), now + timedelta(seconds=1))
    assert list(events["prompt_tokens"]) == [5, 0] and list(events["output_tokens"]) == [3, 3]
    series = demand_series(events, "10s", end=now)
    assert series["requests"].sum() == 2 and series.index[-1] == now.replace(
        second=now.second - now.second % 10)
