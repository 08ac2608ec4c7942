"""API keys' own spending limits as budgets: checked once here, read from the store by
the gateway (enforcement), the budget alerts and the cost reports.

A key's limit is ``budget_usd`` per ``budget_period`` (``optengine keys create`` or
``keys update``) and is the ``key:<id>`` budget of ``services.routing.budgets``. A revoked
key has no budget left to watch: it is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy import Engine, select

from models import ApiKey
from services.errors import InvalidRequest
from services.routing.config import BudgetConfig

log = logging.getLogger(__name__)


class InvalidKeyBudget(InvalidRequest, ValueError):
    """A key limit that is not a positive number of USD per day, month or total (a 400
    on the admin API, a usage error on the command line)."""


@dataclass(frozen=True, slots=True)
class KeyBudget:
    """A key that is not revoked and has a limit."""

    key_id: str
    tenant: str
    name: str | None
    config: BudgetConfig

    @property
    def scope(self) -> str:
        return f"key:{self.key_id}"

    @property
    def label(self) -> str:
        return f"key {self.key_id}{f' ({self.name})' if self.name else ''} of {self.tenant}"


def key_budget(budget_usd: float | None, budget_period: str | None = None
               ) -> BudgetConfig | None:
    """A key's spending limit: ``budget_usd`` per ``budget_period`` (``day``, ``month``,
    the default, or ``total``), None for no limit. ``InvalidKeyBudget`` (a ``ValueError``)
    for a limit that is not a positive number, an unknown period, or a period without a
    limit."""
    if budget_usd is None:
        if budget_period is not None:
            raise InvalidKeyBudget("a budget period needs a budget: give the limit in USD too",
                                   param="budget_period")
        return None
    try:
        return BudgetConfig(limit_usd=budget_usd, period=budget_period or "month")
    except ValidationError as exc:
        errors = exc.errors()
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        param = "budget_period" if errors[0]["loc"] == ("period",) else "budget_usd"
        raise InvalidKeyBudget(f"invalid key budget: {problems}", param=param) from None


def describe_budget(budget_usd: float | None, period: str) -> str:
    """``$5/month``, ``$20 total`` or ``unlimited``."""
    if budget_usd is None:
        return "unlimited"
    if period == "total":
        return f"${budget_usd:g} total"
    return f"${budget_usd:g}/{period}"


def key_budgets(engine: Engine) -> list[KeyBudget]:
    """The limits of every key not revoked, oldest key first. A stored limit
    ``key_budget`` refuses (written before limits were checked) is logged and left out:
    the gateway refuses such a key, so it spends nothing."""
    query = (select(ApiKey.id, ApiKey.tenant, ApiKey.name, ApiKey.budget_usd,
                    ApiKey.budget_period)
             .where(ApiKey.revoked_at.is_(None), ApiKey.budget_usd.is_not(None))
             .order_by(ApiKey.id))
    found = []
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    for row in rows:
        try:
            config = key_budget(row.budget_usd, row.budget_period)
        except InvalidKeyBudget as exc:
            log.error("API key %s has an invalid budget and is refused: %s", row.id, exc)
            continue
        assert config is not None
        found.append(KeyBudget(str(row.id), row.tenant, row.name, config))
    return found
