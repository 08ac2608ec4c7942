"""Demand series: requests, prompt tokens and output tokens per time bin.

Two sources give the same event frame (``timestamp`` as UTC datetimes, ``prompt_tokens``,
``output_tokens``): the metrics store's ``request_log`` (one model's served requests) and
trace files (Azure's ``TIMESTAMP,ContextTokens,GeneratedTokens`` CSV; Mooncake-style JSONL
with ``timestamp`` in ms, ``input_length``, ``output_length``). ``demand_series`` bins
them with pandas: every bin between the first and last is present, an empty bin is a 0
(on bursty traffic most 10-s bins are empty, and a missing row is not a missing
observation: nobody asked).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine, select

from models import RequestLog

EVENT_COLUMNS = ["timestamp", "prompt_tokens", "output_tokens"]
SERIES_COLUMNS = ["requests", "prompt_tokens", "output_tokens", "tokens"]


class TraceFormatError(ValueError):
    """The trace file is neither an Azure CSV nor a JSONL trace, or a row is malformed."""


def load_trace(path: Path | str) -> pd.DataFrame:
    """Events of a trace file, sorted by time.

    The format is recognised from the content, not the name: a first line holding
    ``TIMESTAMP`` is Azure's CSV; a first line starting with ``{`` is JSONL (timestamps in
    milliseconds from the trace's start, mapped onto 1970-01-01 UTC so that arithmetic on
    them stays plain).
    """
    path = Path(path)
    with path.open() as handle:
        first = handle.readline().strip()
    if not first:
        raise TraceFormatError(f"{path} is empty")
    if first.startswith("{"):
        return _load_jsonl(path)
    if "TIMESTAMP" in first.split(","):
        return _load_azure_csv(path)
    raise TraceFormatError(
        f"{path}: expected an Azure CSV header TIMESTAMP,ContextTokens,GeneratedTokens "
        f"or JSONL lines with timestamp/input_length/output_length, got {first[:80]!r}"
    )


def _load_azure_csv(path: Path) -> pd.DataFrame:
    raw = pd.read_csv(path)
    missing = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} - set(raw.columns)
    if missing:
        raise TraceFormatError(f"{path}: missing columns {sorted(missing)}")
    try:
        stamps = pd.to_datetime(raw["TIMESTAMP"], utc=True, format="mixed")
    except (ValueError, TypeError) as exc:
        raise TraceFormatError(f"{path}: unreadable TIMESTAMP ({exc})") from exc
    events = pd.DataFrame({
        "timestamp": stamps,
        "prompt_tokens": pd.to_numeric(raw["ContextTokens"], errors="coerce"),
        "output_tokens": pd.to_numeric(raw["GeneratedTokens"], errors="coerce"),
    })
    return _checked(events, path)


def _load_jsonl(path: Path) -> pd.DataFrame:
    rows: list[tuple[float, float, float]] = []
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                rows.append((float(item["timestamp"]), float(item["input_length"]),
                             float(item["output_length"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise TraceFormatError(f"{path}:{number}: {exc!r}") from exc
    frame = pd.DataFrame(rows, columns=["ms", "prompt_tokens", "output_tokens"])
    frame["timestamp"] = pd.to_datetime(frame["ms"], unit="ms", utc=True)
    return _checked(frame[EVENT_COLUMNS], path)


def _checked(events: pd.DataFrame, source: object) -> pd.DataFrame:
    counts = events[["prompt_tokens", "output_tokens"]]
    if counts.isna().any().any() or (counts < 0).any().any():
        raise TraceFormatError(f"{source}: token counts must be non-negative numbers")
    if events.empty:
        raise TraceFormatError(f"{source} holds no requests")
    events = events.astype({"prompt_tokens": "int64", "output_tokens": "int64"})
    return events.sort_values("timestamp", kind="stable").reset_index(drop=True)


def load_store_events(
    engine: Engine, model: str, since: datetime, until: datetime | None = None
) -> pd.DataFrame:
    """One model's served requests from ``request_log`` since ``since`` (cache hits are
    left out: they cost no worker time). Token counts missing on a row count as 0."""
    query = (
        select(RequestLog.created_at, RequestLog.prompt_tokens, RequestLog.completion_tokens)
        .where(RequestLog.model_served == model, RequestLog.created_at >= since,
               RequestLog.cache_layer.is_(None))
        .order_by(RequestLog.created_at)
    )
    if until is not None:
        query = query.where(RequestLog.created_at < until)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    frame = pd.DataFrame(rows, columns=EVENT_COLUMNS)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    for column in ("prompt_tokens", "output_tokens"):
        frame[column] = frame[column].fillna(0).astype("int64")
    return frame


def demand_series(
    events: pd.DataFrame,
    freq: str = "10s",
    *,
    start: datetime | pd.Timestamp | None = None,
    end: datetime | pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Per-bin ``requests``, ``prompt_tokens``, ``output_tokens`` and ``tokens`` (their
    sum, the load a worker serves), bins left-closed and labelled by their start.

    ``start``/``end`` extend the index so that a quiet tail shows as zeros (the store is
    read up to *now*, and the last minutes without requests are data too).
    """
    frame = events.set_index("timestamp")[["prompt_tokens", "output_tokens"]]
    frame = frame.assign(requests=1)
    binned = frame.resample(freq, label="left", closed="left").sum()
    if start is not None or end is not None:
        lo = pd.Timestamp(start).floor(freq) if start is not None else None
        hi = pd.Timestamp(end).floor(freq) if end is not None else None
        if lo is None:
            lo = binned.index[0] if len(binned) else hi
        if hi is None:
            hi = binned.index[-1] if len(binned) else lo
        index = pd.date_range(lo, hi, freq=freq, tz="UTC")
        binned = binned.reindex(index, fill_value=0)
    binned["tokens"] = binned["prompt_tokens"] + binned["output_tokens"]
    return binned[SERIES_COLUMNS].astype("int64")
