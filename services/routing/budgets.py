"""Spend budgets per tenant or API key: reserve before the upstream call, settle after.

A request reserves its estimated maximum cost (prompt plus the most tokens it may
generate) on every budget that applies to it before it goes upstream, and settles with
its real cost when it ends (a failed call releases its reservation). So concurrent
requests see each other's reservations and together never spend past a limit.

With Redis (``redis_url``) the counters are shared by every gateway replica and each
reservation is one Lua script: check and add in one atomic step. Without Redis they are
in-process (one replica only), atomic because nothing awaits between check and add.
Counters are per period (``total``, ``day``, ``month``; UTC calendar days and months: a
new period starts from zero) and expire after it.

A key's own limit (stored with the key, ``optengine keys create --budget-usd``) is the
``key:<id>`` budget and replaces a ``key:<id>`` entry of the routing config.

Redis gone: a budget that cannot be checked is not spent blind. ``reserve`` (and the
downgrade check) raise ``BudgetUnavailable``, a 503 ``budget_unavailable`` with
Retry-After, so a budgeted tenant's requests wait for Redis while everyone else is served
(Redis calls time out after ``timeout_s``). A settlement Redis refuses is kept in
memory and applied when Redis answers again (until then the counter holds the
reservation, which is never less than the real cost), so no spend is forgotten.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from services.errors import DependencyUnavailable, RateLimited
from services.routing.config import BudgetConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

_RESERVE = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
if spent >= limit or spent + amount > limit then
  return {0, tostring(spent)}
end
local now = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return {1, now}
"""
_PERIOD_TTL_S = {"total": 0, "day": 2 * 86400, "month": 32 * 86400}


class BudgetExceeded(RateLimited):
    default_code = "budget_exceeded"


class BudgetUnavailable(DependencyUnavailable):
    default_code = "budget_unavailable"


_MAX_PENDING_KEYS = 10_000  # settlements waiting for Redis (one float per counter key)


@dataclass(frozen=True)
class Scope:
    name: str  # "tenant:team-a" or "key:42"
    config: BudgetConfig

    def counter(self, now: datetime) -> str:
        period = {"total": "all", "day": now.strftime("%Y-%m-%d"), "month": now.strftime("%Y-%m")}
        return f"optengine:budget:{{{self.name}}}:{period[self.config.period]}"


@dataclass
class Reservation:
    scopes: list[tuple[Scope, str]]  # (scope, counter key)
    amount: float
    settled: bool = False


class BudgetLedger:
    def __init__(self, budgets: dict[str, BudgetConfig], *, redis_url: str = "",
                 timeout_s: float = 1.0, retry_after_s: int = 5,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._budgets = budgets
        self.clock = clock  # picks the period's counter
        self._local: dict[str, float] = {}
        self._pending: dict[str, float] = {}  # settlements Redis refused, per counter key
        self._retry_after_s = retry_after_s
        self._redis = None
        self._script = None
        if redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.from_url(
                redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )
            self._script = self._redis.register_script(_RESERVE)

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    def scopes(self, tenant: str, key_id: str | None,
               key_budget: BudgetConfig | None = None) -> list[Scope]:
        """The budgets of a request: its tenant's (or ``tenant:*``) and its key's
        (``key_budget``, the key's stored limit, else the ``key:<id>`` entry)."""
        found = []
        config = self._budgets.get(f"tenant:{tenant}") or self._budgets.get("tenant:*")
        if config is not None:
            found.append(Scope(f"tenant:{tenant}", config))
        if key_id:
            config = key_budget or self._budgets.get(f"key:{key_id}")
            if config is not None:
                found.append(Scope(f"key:{key_id}", config))
        return found

    async def fraction_spent(self, scopes: Sequence[Scope]) -> float:
        """The highest spent/limit of ``scopes`` (reservations in flight included)."""
        now = self.clock()
        highest = 0.0
        for scope in scopes:
            highest = max(highest, await self._spent(scope.counter(now)) / scope.config.limit_usd)
        return highest

    def downgrade_at(self, scopes: Sequence[Scope]) -> float | None:
        levels = [s.config.downgrade_at for s in scopes if s.config.downgrade_at is not None]
        return min(levels) if levels else None

    async def reserve(self, scopes: Sequence[Scope], amount: float) -> Reservation:
        """Reserve ``amount`` USD on every scope, or none: raise ``BudgetExceeded``."""
        now = self.clock()
        taken: list[tuple[Scope, str]] = []
        for scope in scopes:
            key = scope.counter(now)
            ok, spent = await self._try_add(key, amount, scope)
            if not ok:
                await self._release(taken, amount)
                raise BudgetExceeded(
                    f"budget exceeded for {scope.name}: ${spent:.6f} of ${scope.config.limit_usd:g}"
                    f" per {scope.config.period} spent or reserved, and this request may cost up "
                    f"to ${amount:.6f}; lower max_tokens, pick a cheaper model or wait for the "
                    "next period",
                )
            taken.append((scope, key))
        return Reservation(taken, amount)

    async def settle(self, reservation: Reservation, cost: float | None) -> None:
        """Replace the reserved amount with the real ``cost`` (None: nothing was spent)."""
        if reservation.settled:
            return
        reservation.settled = True
        delta = (cost or 0.0) - reservation.amount
        for _, key in reservation.scopes:
            await self._add_or_keep(key, delta)

    @property
    def pending_settlements(self) -> int:
        """Counters with a settlement waiting for Redis to come back."""
        return len(self._pending)

    async def _release(self, taken: list[tuple[Scope, str]], amount: float) -> None:
        for _, key in taken:
            await self._add_or_keep(key, -amount)

    async def _add_or_keep(self, key: str, delta: float) -> None:
        """Add ``delta``; when Redis refuses, keep it for the next call that reaches it
        (settlements run after the answer: they must never fail it)."""
        try:
            await self._add(key, delta)
        except BudgetUnavailable:
            if key in self._pending or len(self._pending) < _MAX_PENDING_KEYS:
                self._pending[key] = self._pending.get(key, 0.0) + delta
            else:  # the counter keeps its reservation: more than spent, never less
                log.warning("dropping a budget settlement of %s for %s: too many pending",
                            delta, key)

    async def _flush_pending(self) -> None:
        while self._pending:
            key, delta = next(iter(self._pending.items()))
            await self._redis_call(self._redis.incrbyfloat(key, delta))  # type: ignore[union-attr]
            if self._pending.get(key) == delta:
                del self._pending[key]
            else:  # settled again meanwhile: keep the rest
                self._pending[key] -= delta

    async def _redis_call(self, call: Awaitable[T]) -> T:
        import redis.exceptions

        try:
            return await call
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                OSError) as exc:
            raise BudgetUnavailable(
                "budgets cannot be checked right now (their store is unreachable); "
                "retry shortly", retry_after_s=self._retry_after_s,
            ) from exc

    # --- storage ----------------------------------------------------------------------

    async def _spent(self, key: str) -> float:
        if self._redis is None:
            return self._local.get(key, 0.0)
        if self._pending:
            await self._flush_pending()
        value = await self._redis_call(self._redis.get(key))
        return float(value) if value is not None else 0.0

    async def _try_add(self, key: str, amount: float, scope: Scope) -> tuple[bool, float]:
        limit = scope.config.limit_usd
        if self._redis is None:
            spent = self._local.get(key, 0.0)
            if spent >= limit or spent + amount > limit:  # a spent budget refuses even $0
                return False, spent
            self._local[key] = spent + amount
            return True, spent + amount
        assert self._script is not None
        if self._pending:
            await self._flush_pending()
        ok, spent = await self._redis_call(self._script(
            keys=[key], args=[repr(amount), repr(limit), _PERIOD_TTL_S[scope.config.period]]
        ))
        return bool(int(ok)), float(spent)

    async def _add(self, key: str, delta: float) -> None:
        if delta == 0:
            return
        if self._redis is None:
            self._local[key] = self._local.get(key, 0.0) + delta
        else:
            await self._redis_call(self._redis.incrbyfloat(key, delta))
