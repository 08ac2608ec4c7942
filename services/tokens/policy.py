"""Token optimisation policies: ``off | lossless | budget=N | ratio=R``.

``off`` sends the request as the client wrote it; ``lossless`` applies only rewrites
that keep every fact; ``budget=N`` (prompt tokens) and ``ratio=R`` (prompt cut to 1/R)
add the lossy stages until the target is met. Set per tenant (settings) and per request
(header ``X-Token-Optimization``, which wins).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from services.errors import InvalidRequest, clipped

HEADER = "x-token-optimization"
Mode = Literal["off", "lossless", "budget", "ratio"]


class InvalidPolicy(InvalidRequest):
    default_code = "invalid_token_optimization"


@dataclass(frozen=True, slots=True)
class Policy:
    mode: Mode
    budget: int | None = None
    ratio: float | None = None

    @property
    def lossy(self) -> bool:
        return self.mode in ("budget", "ratio")

    def target(self, tokens: int) -> int | None:
        """The prompt token target for a prompt of ``tokens``, None when lossless/off."""
        if self.mode == "budget":
            return self.budget
        if self.mode == "ratio":
            assert self.ratio is not None
            return max(1, math.floor(tokens / self.ratio))
        return None

    def __str__(self) -> str:
        if self.mode == "budget":
            return f"budget={self.budget}"
        if self.mode == "ratio":
            return f"ratio={self.ratio:g}"
        return self.mode

    @classmethod
    def parse(cls, value: str, *, param: str = "X-Token-Optimization") -> Policy:
        text = value.strip().lower()
        if text in ("off", "lossless"):
            return cls(text)  # type: ignore[arg-type]
        name, sep, raw = text.partition("=")
        name = name.strip()
        if sep and name == "budget":
            try:
                budget = int(raw)
            except ValueError:
                budget = 0
            if budget < 1:
                raise InvalidPolicy(
                    f"token optimization budget must be a whole number of tokens >= 1, "
                    f"got {clipped(raw.strip())}", param=param)
            return cls("budget", budget=budget)
        if sep and name == "ratio":
            try:
                ratio = float(raw)
            except ValueError:
                ratio = math.nan
            if not (math.isfinite(ratio) and ratio >= 1):
                raise InvalidPolicy(
                    f"token optimization ratio must be a number >= 1 (2 halves the prompt), "
                    f"got {clipped(raw.strip())}", param=param)
            return cls("ratio", ratio=ratio)
        raise InvalidPolicy(
            f"unknown token optimization policy {clipped(value)}: use off, lossless, budget=N "
            f"or ratio=R", param=param)


OFF = Policy("off")
