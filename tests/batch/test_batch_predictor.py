"""The output-length predictor: trained on request_log history, a fallback without it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pytest

from migrations import upgrade_to_head
from models import RequestLog, create_store_engine
from services.batch import parse_input
from services.batch.predictor import LengthPredictor


@pytest.fixture
def engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade_to_head(url)
    engine = create_store_engine(url)
    yield engine
    engine.dispose()


def lines(*bodies: dict):
    content = b"\n".join(
        orjson.dumps({"custom_id": str(i), "method": "POST", "url": "/v1/completions",
                      "body": {"model": "m", **body}}) for i, body in enumerate(bodies))
    return parse_input(content, endpoint="/v1/completions").lines


def test_fallback_without_history(engine) -> None:
    predictor = LengthPredictor.train(engine, {"m"}, default_tokens=256)
    got = predictor.predict(lines({"prompt": "x", "max_tokens": 40}, {"prompt": "x"}))
    assert got == [40, 256]


def test_learns_lengths_from_history(engine) -> None:
    # history: short prompts got short answers, long prompts long ones (max_tokens 500)
    rows = []
    for i in range(200):
        prompt_tokens = 10 + (i % 20) * 25
        rows.append({"id": f"req-{uuid.uuid4().hex}", "created_at": datetime.now(UTC),
                     "tenant": "t", "endpoint": "completions", "status_code": 200,
                     "model_served": "m", "prompt_tokens": prompt_tokens, "max_tokens": 500,
                     "completion_tokens": prompt_tokens // 2})
    with engine.begin() as conn:
        conn.execute(RequestLog.__table__.insert(), rows)
    predictor = LengthPredictor.train(engine, {"m", "other"})
    assert set(predictor.regressors) == {"m"}
    short, long, exact, other = predictor.predict(
        lines({"prompt": "a" * 40, "max_tokens": 500}, {"prompt": "a" * 1800, "max_tokens": 500},
              {"prompt": "a" * 1800, "max_tokens": 7, "ignore_eos": True},
              {"model": "other", "prompt": "a", "max_tokens": 33}))
    assert short < 40 < 150 < long <= 500
    assert exact == 7
    assert other == 33
