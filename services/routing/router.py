"""The complexity router at inference: NumPy only, weights loaded once.

A logistic model over ``features.featurize`` gives the probability that the strong tier
is needed (the weak one would fail). Routing is cost-aware: what a strong call buys is
that probability, what it costs grows with the prompt's tokens, so requests are ranked
by probability per unit of cost (``priority``; the greedy order of a knapsack), which on
MMLU saves 55% at 95% quality where ranking by probability alone saves 31% (see
docs/benchmarks.md). That ranking holds where the prompt dominates the cost, as with
MMLU's one-token answers; for requests with long answers (the output dominates and is
alike for every prompt) the router ranks by probability alone. Each ranking has its own
thresholds per quality target, calibrated on
held-out subjects (``services.routing.train``) so that routing at them keeps the target
fraction of the strong model's accuracy. ``auto`` uses the default target;
``auto:cheap`` and ``auto:quality`` use lower and higher ones.

The shipped model is ``models/complexity-router-v1.npz`` in this package; retrained
versions (the ``model_routing`` flow) are the same format in the store's router folder.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.routing.features import N_FEATURES, featurize

SHIPPED_MODEL = Path(__file__).with_name("models") / "complexity-router-v1.npz"
DEFAULT_TARGET = 0.95
REFERENCE_TOKENS = 100  # priority is probability per cost of a 100-token prompt
OUTPUT_PAD_TOKENS = 3.0  # a one-token answer costs ~3 input tokens at GPT-4 prices


def relative_cost(prompt_chars: int, pad_tokens: float = OUTPUT_PAD_TOKENS) -> float:
    """Cost of a strong call on a prompt of ``prompt_chars`` vs a reference prompt."""
    return (max(1, prompt_chars // 4) + pad_tokens) / (REFERENCE_TOKENS + pad_tokens)


@dataclass(frozen=True)
class RouterDecision:
    strong: bool
    p_strong: float
    priority: float
    threshold: float


@dataclass(frozen=True)
class ComplexityRouter:
    weights: np.ndarray  # float32, one per feature
    bias: float
    thresholds: dict[float, float]  # quality target -> probability threshold
    cost_thresholds: dict[float, float]  # quality target -> priority threshold
    version: str = "v1"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weights.shape != (N_FEATURES,):
            raise ValueError(
                f"router weights have shape {self.weights.shape}, expected ({N_FEATURES},): "
                "the model was trained with other features"
            )
        if not self.thresholds or set(self.thresholds) != set(self.cost_thresholds):
            raise ValueError("a router needs thresholds for the same quality targets per ranking")

    def p_strong(self, text: str) -> float:
        """Probability that the weak tier fails on ``text`` (so the strong one is needed)."""
        columns, values = featurize(text)
        z = float(self.weights[columns] @ values) + self.bias
        return 1.0 / (1.0 + math.exp(-max(min(z, 40.0), -40.0)))

    def priority(self, text: str) -> tuple[float, float]:
        """(P(strong needed), that probability per unit of relative cost)."""
        p = self.p_strong(text)
        return p, p / relative_cost(len(text), float(self.meta.get("pad_tokens", 3.0)))

    def threshold(self, target: float = DEFAULT_TARGET, *, cost_aware: bool = True) -> float:
        """The calibrated threshold of the nearest quality target at or above ``target``."""
        table = self.cost_thresholds if cost_aware else self.thresholds
        above = [t for t in table if t >= target - 1e-9]
        return table[min(above) if above else max(table)]

    def decide(
        self, text: str, target: float = DEFAULT_TARGET, *, cost_aware: bool = True
    ) -> RouterDecision:
        p, priority = self.priority(text)
        threshold = self.threshold(target, cost_aware=cost_aware)
        value = priority if cost_aware else p
        return RouterDecision(
            strong=value >= threshold, p_strong=p, priority=priority, threshold=threshold
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_bytes())

    def to_bytes(self) -> bytes:
        targets = sorted(self.thresholds)
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            weights=self.weights.astype(np.float32),
            bias=np.float64(self.bias),
            targets=np.asarray(targets, dtype=np.float64),
            thresholds=np.asarray([self.thresholds[t] for t in targets], dtype=np.float64),
            cost_thresholds=np.asarray([self.cost_thresholds[t] for t in targets],
                                       dtype=np.float64),
            meta=np.frombuffer(
                json.dumps({"version": self.version, **self.meta}).encode(), dtype=np.uint8
            ),
        )
        return buffer.getvalue()

    @classmethod
    def load(cls, path: Path = SHIPPED_MODEL) -> ComplexityRouter:
        if not path.is_file():
            raise FileNotFoundError(f"router model {path} does not exist")
        return cls.from_bytes(path.read_bytes())

    @classmethod
    def from_bytes(cls, raw: bytes) -> ComplexityRouter:
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            targets = list(map(float, data["targets"]))
            return cls(
                weights=np.ascontiguousarray(data["weights"], dtype=np.float32),
                bias=float(data["bias"]),
                thresholds=dict(zip(targets, map(float, data["thresholds"]), strict=True)),
                cost_thresholds=dict(zip(targets, map(float, data["cost_thresholds"]),
                                         strict=True)),
                version=str(meta.pop("version", "v1")),
                meta=meta,
            )
