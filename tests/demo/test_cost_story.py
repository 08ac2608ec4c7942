"""The demo's cost story: levers that add up, the throughput the self-hosted price came
from, and the same tokens on the GPU the settings describe."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.demo.cost_story import cost_story
from tests.support.cost_rows import PRICES, T0, WORKER, insert, row, usage


def test_story_explains_the_self_hosted_price(store, make_settings) -> None:
    settings = make_settings(price_overrides=PRICES,
                             baseline_model="base",
                             self_hosted={"gpu_hour_usd": 2.0, "gpu_name": "L4-like",
                                          "default_output_tokens_per_second": 1000})
    per_output = 2.0 / 3600 / 100  # priced at 100 output tokens/s
    cost = 1000 * per_output * 0.1 + 100 * per_output
    at = T0 + timedelta(seconds=5)
    insert(store, [row(at, model_served="tiny", worker=WORKER, cost_usd=cost,
                       **usage(1000, 1000, 100)),
                   row(at, cache_layer="L1", model_served="tiny", cost_usd=0.0,
                       **usage(1000, 1000, 100))])
    story = cost_story(store, settings, T0, T0 + timedelta(minutes=1))
    levers = dict(story.lever_rows())
    assert levers["sum of levers"] == levers["baseline - actual"]
    assert levers["response cache (exact)"] == "$0.001200"
    assert story.summary.saved_by_lever["self_hosting"] == pytest.approx(0.0012 - cost)
    [run] = story.self_hosted
    assert run.effective_tokens_per_s == pytest.approx(100)
    assert run.gpu_cost_usd == pytest.approx(cost / 10)
    text = " ".join(story.assumptions())
    assert "100 output tokens/s" in text and "L4-like" in text
    assert {name for name, _, _ in story.roi_rows()} >= {"payback", "ROI 36 months"}
