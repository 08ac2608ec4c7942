"""The life of one alert, as a pure function of what was measured and when.

``inactive -> pending -> firing -> resolved``: a condition that holds starts
*pending*; once it has held for the rule's ``for:`` duration (and holds at that
evaluation) the alert *fires*; a firing alert *resolves* only when the value has come
back past the threshold by the rule's ``hysteresis`` (below 60% fires, at or above 65%
resolves), so a value hovering at the threshold does not flap. A pending alert whose
value comes back past the band is *cleared* (never fired, nobody told). A value in
the band leaves either state as it is.

No data (no traffic, a worker not answering) changes nothing for a firing alert (it
resolves on evidence, not on silence) and clears a pending one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

OpenState = Literal["pending", "firing"]
Change = Literal["pending", "firing", "resolved", "cleared"]


@dataclass(frozen=True)
class Condition:
    below: float | None
    above: float | None
    hysteresis: float = 0.0
    for_s: float = 0.0

    @property
    def threshold(self) -> float:
        return self.below if self.below is not None else self.above  # type: ignore[return-value]

    def breaching(self, value: float) -> bool:
        if self.below is not None:
            return value < self.below
        return value > self.threshold

    def cleared(self, value: float) -> bool:
        if self.below is not None:
            return value >= self.below + self.hysteresis
        return value <= self.threshold - self.hysteresis

    def describe(self) -> str:
        return f"< {self.below:g}" if self.below is not None else f"> {self.above:g}"


@dataclass(frozen=True)
class AlertState:
    """An open alert (pending or firing): what the engine persists between runs."""

    rule: str
    subject: str
    state: OpenState
    since: datetime  # when its condition started to hold
    value: float
    fired_at: datetime | None = None
    alert_id: int | None = None


def step(
    current: AlertState | None, value: float | None, condition: Condition, now: datetime,
    *, rule: str, subject: str,
) -> tuple[AlertState | None, Change | None]:
    """The alert after one evaluation, and the change it made (None = no change)."""
    if current is None:
        if value is None or not condition.breaching(value):
            return None, None
        if condition.for_s <= 0:
            return AlertState(rule, subject, "firing", now, value, fired_at=now), "firing"
        return AlertState(rule, subject, "pending", now, value), "pending"
    if value is None:
        if current.state == "pending":
            return None, "cleared"
        return current, None
    if condition.cleared(value):
        return None, "resolved" if current.state == "firing" else "cleared"
    updated = replace(current, value=value)
    if (current.state == "pending" and condition.breaching(value)
            and (now - current.since).total_seconds() >= condition.for_s):
        return replace(updated, state="firing", fired_at=now), "firing"
    return updated, None
