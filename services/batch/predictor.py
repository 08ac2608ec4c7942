"""Predicting how many tokens each batch line will generate, from the store's history.

The spec's "analyze requests" step: a scikit-learn gradient-boosted regressor per model,
trained on recent ``request_log`` rows that really generated (no cache hit, status 200):
features are the prompt's size, ``max_tokens`` and the endpoint; the target is
``completion_tokens``. A batch line's prompt size is estimated from its characters (4 per
token), so no tokenizer is needed. With too little history for a model the prediction
falls back to ``max_tokens`` (or a default): a pessimistic guess only costs ordering
quality, never correctness. A request with ``ignore_eos`` generates exactly
``max_tokens``, so that is what is predicted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Engine, or_, select

from models import RequestLog
from services.batch.lines import BatchLine
from services.caching import HIT_LAYERS

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
MIN_HISTORY = 50
HISTORY_ROWS = 5000
DEFAULT_OUTPUT_TOKENS = 256


def estimated_prompt_tokens(body: dict[str, Any]) -> int:
    prompt = body.get("messages", body.get("prompt", ""))
    text = prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode()
    return max(1, len(text) // CHARS_PER_TOKEN)


def _features(prompt_tokens: int, max_tokens: int | None, chat: bool) -> list[float]:
    return [float(prompt_tokens), float(max_tokens if max_tokens is not None else -1),
            1.0 if chat else 0.0]


@dataclass
class LengthPredictor:
    """Per-model regressors (models with enough history only) and the fallback."""

    regressors: dict[str, Any] = field(default_factory=dict)  # model -> fitted regressor
    default_tokens: int = DEFAULT_OUTPUT_TOKENS

    @classmethod
    def train(cls, engine: Engine, models: Iterable[str], *, min_history: int = MIN_HISTORY,
              default_tokens: int = DEFAULT_OUTPUT_TOKENS) -> LengthPredictor:
        predictor = cls(default_tokens=default_tokens)
        for model in set(models):
            rows = _history(engine, model)
            if len(rows) < min_history:
                log.info("length predictor: %d rows for %s, using the fallback", len(rows), model)
                continue
            x = np.array([_features(r.prompt_tokens, r.max_tokens, r.endpoint == "chat.completions")
                          for r in rows])
            y = np.array([r.completion_tokens for r in rows], dtype=float)
            # imported only when there is something to fit (~1 s): not by the gateway, not
            # by a batch whose lengths are all known
            from sklearn.ensemble import GradientBoostingRegressor

            regressor = GradientBoostingRegressor(n_estimators=100, max_depth=3, random_state=0)
            predictor.regressors[model] = regressor.fit(x, y)
            log.info("length predictor: trained on %d rows for %s", len(rows), model)
        return predictor

    def predict(self, lines: list[BatchLine]) -> list[int]:
        """Expected completion tokens of each line, in the order given."""
        predictions = [self._ceiling(line) for line in lines]
        by_model: dict[str, list[int]] = {}
        for i, line in enumerate(lines):
            if line.model in self.regressors and not line.body.get("ignore_eos"):
                by_model.setdefault(line.model, []).append(i)
        for model, indexes in by_model.items():
            x = np.array([_features(estimated_prompt_tokens(lines[i].body), _max_tokens(lines[i]),
                                    lines[i].endpoint == "chat.completions") for i in indexes])
            for i, value in zip(indexes, self.regressors[model].predict(x), strict=True):
                predictions[i] = max(1, min(predictions[i], round(float(value))))
        return predictions

    def _ceiling(self, line: BatchLine) -> int:
        limit = _max_tokens(line)
        return max(1, limit) if limit is not None else self.default_tokens


def _max_tokens(line: BatchLine) -> int | None:
    value = line.body.get("max_tokens", line.body.get("max_completion_tokens"))
    return value if isinstance(value, int) else None


def _history(engine: Engine, model: str) -> list[Any]:
    query = (
        select(RequestLog.prompt_tokens, RequestLog.max_tokens, RequestLog.endpoint,
               RequestLog.completion_tokens)
        .where(RequestLog.model_served == model, RequestLog.status_code == 200,
               RequestLog.prompt_tokens.is_not(None), RequestLog.completion_tokens.is_not(None),
               or_(RequestLog.cache_layer.is_(None), RequestLog.cache_layer.not_in(HIT_LAYERS)))
        .order_by(RequestLog.created_at.desc())
        .limit(HISTORY_ROWS)
    )
    with engine.connect() as conn:
        return list(conn.execute(query))


def length_bin(tokens: int) -> int:
    """Power-of-two bin: 1 -> 0, 2 -> 1, 3-4 -> 2, 5-8 -> 3, ..."""
    return max(0, math.ceil(math.log2(max(1, tokens))))
