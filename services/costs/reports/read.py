"""The read API over ``cost_rollups``: what reports, the dashboard and alerts call.

Periods are half-open ``[since, until)`` in whole UTC hours (a rollup row is an hour) and
must be timezone-aware: a naive date is ambiguous and refused with ``NaiveDatetime``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, cast, func, select
from sqlalchemy.orm import Session

from models import CostRollup
from services.costs.reports.attribution import LEVERS
from services.errors import InvalidRequest

ESCALATED = "cascade_escalated"
_SUMMED = (
    "requests", "errors", "unpriced", "priced", "prompt_tokens", "prompt_tokens_before",
    "completion_tokens", "cached_tokens", "cost_usd", "baseline_usd",
    *(f"saved_{lever}_usd" for lever in LEVERS),
)


class NaiveDatetime(InvalidRequest):
    """A period bound without a timezone: 09:00 where? Refused rather than guessed."""

    def __init__(self, name: str, value: datetime) -> None:
        super().__init__(
            f"{name} {value.isoformat()} has no timezone; give one, e.g. "
            f"{value.isoformat()}+00:00 or {value.date().isoformat()}T00:00Z",
            param=name,
        )


def check_period(since: datetime, until: datetime) -> None:
    """Raise ``NaiveDatetime`` or ``InvalidRequest`` for a period that cannot be read."""
    for name, value in (("since", since), ("until", until)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise NaiveDatetime(name, value)
    if until <= since:
        raise InvalidRequest(f"until ({until.isoformat()}) must be after since "
                             f"({since.isoformat()})", param="until")


@dataclass
class ModelCost:
    model: str
    requests: int = 0
    cost_usd: float = 0.0
    baseline_usd: float = 0.0


@dataclass
class CostSummary:
    """Totals of one period (and tenant, or all): the figures every report starts from."""

    since: datetime
    until: datetime
    tenant: str | None
    requests: int = 0
    attempts: int = 0
    errors: int = 0
    unpriced: int = 0
    prompt_tokens: int = 0
    prompt_tokens_before: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    baseline_usd: float = 0.0
    saved_by_lever: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LEVERS, 0.0))
    models: dict[str, ModelCost] = field(default_factory=dict)
    unpriced_models: dict[str, int] = field(default_factory=dict)
    requests_by_lever: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def has_data(self) -> bool:
        return self.requests > 0 or self.attempts > 0

    @property
    def saved_usd(self) -> float:
        return self.baseline_usd - self.cost_usd

    @property
    def attribution_gap_usd(self) -> float:
        """|sum of the levers - (baseline - actual)|: 0 up to float rounding."""
        return abs(sum(self.saved_by_lever.values()) - self.saved_usd)

    @property
    def cost_per_1k_requests(self) -> float | None:
        return self.cost_usd / self.requests * 1000 if self.requests else None

    def top_models(self, n: int = 5) -> list[ModelCost]:
        return sorted(self.models.values(), key=lambda m: (-m.cost_usd, -m.requests))[:n]

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(), "until": self.until.isoformat(),
            "tenant": self.tenant, "requests": self.requests, "attempts": self.attempts,
            "errors": self.errors, "unpriced": self.unpriced,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd, "baseline_usd": self.baseline_usd,
            "saved_usd": self.saved_usd, "saved_by_lever": dict(self.saved_by_lever),
            "cost_per_1k_requests": self.cost_per_1k_requests,
        }


def rollup_rows(engine: Engine, since: datetime, until: datetime,
                tenant: str | None = None) -> list[CostRollup]:
    """The ``cost_rollups`` rows of ``[since, until)``, one tenant or all, oldest first."""
    check_period(since, until)
    query = select(CostRollup).where(CostRollup.hour >= since, CostRollup.hour < until)
    if tenant is not None:
        query = query.where(CostRollup.tenant == tenant)
    with Session(engine) as session:
        return list(session.scalars(query.order_by(CostRollup.hour)))


def summarize(engine: Engine, since: datetime, until: datetime,
              tenant: str | None = None) -> CostSummary:
    """Totals, savings by lever and per-model costs of ``[since, until)``.

    Summed by the store (grouped by lever and model), so a month of hourly rows costs one
    small result set, not one object per row."""
    check_period(since, until)
    t = CostRollup.__table__
    sums = [cast(func.sum(t.c[name]), t.c[name].type).label(name) for name in _SUMMED]
    query = (select(t.c.lever, t.c.model, *sums)
             .where(t.c.hour >= since, t.c.hour < until).group_by(t.c.lever, t.c.model))
    if tenant is not None:
        query = query.where(t.c.tenant == tenant)
    summary = CostSummary(since=since, until=until, tenant=tenant)
    with engine.connect() as conn:
        for row in conn.execute(query).mappings():
            add(summary, CostRollup(**row))
    return summary


def tenants(engine: Engine, since: datetime, until: datetime) -> list[str]:
    """Tenants with traffic in ``[since, until)``."""
    check_period(since, until)
    query = (select(CostRollup.tenant).where(CostRollup.hour >= since, CostRollup.hour < until)
             .distinct().order_by(CostRollup.tenant))
    with engine.connect() as conn:
        return list(conn.scalars(query))


def add(summary: CostSummary, row: CostRollup) -> None:
    """Fold one rollup row into a summary (attempts are not requests)."""
    if row.lever == ESCALATED:
        summary.attempts += row.requests
    else:
        summary.requests += row.requests
        summary.requests_by_lever[row.lever] += row.requests
    summary.errors += row.errors
    summary.unpriced += row.unpriced
    summary.prompt_tokens += row.prompt_tokens
    summary.prompt_tokens_before += row.prompt_tokens_before
    summary.completion_tokens += row.completion_tokens
    summary.cost_usd += row.cost_usd
    summary.baseline_usd += row.baseline_usd
    for lever in LEVERS:
        summary.saved_by_lever[lever] += getattr(row, f"saved_{lever}_usd")
    if row.unpriced:
        summary.unpriced_models[row.model] = summary.unpriced_models.get(row.model, 0) + \
            row.unpriced
    model = summary.models.setdefault(row.model or "(none)", ModelCost(row.model or "(none)"))
    if row.lever != ESCALATED:
        model.requests += row.requests
    model.cost_usd += row.cost_usd
    model.baseline_usd += row.baseline_usd
