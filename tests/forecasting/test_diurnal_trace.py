"""The synthetic diurnal trace of bench/diurnal_trace.py: the source's requests, thinned
by a day's profile, reproducible from its seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.diurnal_trace import diurnal


def source(seconds: int) -> pd.DataFrame:
    """One request a second, each with its own token counts."""
    return pd.DataFrame({
        "timestamp": pd.to_datetime(np.arange(seconds), unit="s", utc=True),
        "prompt_tokens": np.arange(seconds) + 100, "output_tokens": np.arange(seconds) % 7})


def test_the_rate_follows_the_day_and_the_requests_are_the_sources() -> None:
    events = source(3600)
    trace = diurnal(events, hours=2, night=0.1, block_s=300, seed=1)
    assert trace["offset_s"].between(0, 7200, inclusive="left").all()
    minutes = np.bincount((trace["offset_s"] // 600).astype(int), minlength=12)
    assert minutes[0] < 0.25 * 600 and minutes[-1] < 0.25 * 600  # night: ~10-20% kept
    assert minutes[5] > 0.85 * 600 and minutes[6] > 0.85 * 600  # noon: nearly all
    pairs = set(zip(events["prompt_tokens"], events["output_tokens"], strict=True))
    assert set(zip(trace["prompt_tokens"], trace["output_tokens"], strict=True)) <= pairs
    again = diurnal(events, hours=2, night=0.1, block_s=300, seed=1)
    pd.testing.assert_frame_equal(trace, again)
    assert not trace.equals(diurnal(events, hours=2, night=0.1, block_s=300, seed=2))


@pytest.mark.parametrize(("seconds", "kwargs", "message"), [
    (3600, {"night": 1.5}, "night"),
    (3600, {"hours": 0}, "positive"),
    (200, {}, "shorter than one 300-s block"),
])
def test_bad_arguments_are_refused(seconds: int, kwargs: dict, message: str) -> None:
    arguments = {"hours": 2, "night": 0.1, "block_s": 300, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        diurnal(source(seconds), **arguments)
