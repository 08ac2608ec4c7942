"""API keys: who is calling, and for which tenant.

Keys are never stored in clear: the store keeps their sha256, and the gateway keeps an
in-memory map hash -> principal, refreshed from the store in the background. So a
request costs one dict lookup, never a database round trip; a new or revoked key takes
effect within one refresh interval on every replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import ApiKey
from services.background import cancel_and_wait, now_and_every
from services.errors import AuthenticationFailed
from services.routing.config import BudgetConfig

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
KEY_PREFIX = "oe-"


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    key_id: str | None = None
    budget: BudgetConfig | None = None  # the key's own spending limit


ANONYMOUS = Principal(tenant=DEFAULT_TENANT)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_static_keys(entries: list[str]) -> dict[str, Principal]:
    """``key`` or ``key:tenant`` entries from settings, as hash -> principal."""
    keys: dict[str, Principal] = {}
    for entry in entries:
        key, _, tenant = entry.partition(":")
        digest = hash_key(key)
        keys[digest] = Principal(tenant=tenant or DEFAULT_TENANT, key_id=f"static:{digest[:12]}")
    return keys


class KeyRing:
    def __init__(
        self,
        static_keys: list[str],
        *,
        required: bool,
        sessions: sessionmaker[Session] | None = None,
        refresh_interval_s: float = 10.0,
    ) -> None:
        self.required = required
        self._static = parse_static_keys(static_keys)
        self._stored: dict[str, Principal] = {}
        self._sessions = sessions
        self._refresh_interval_s = refresh_interval_s
        self._task: asyncio.Task[None] | None = None

    def authenticate(self, authorization: str | None) -> Principal:
        token = _bearer_token(authorization)
        if token is None:
            if self.required:
                raise AuthenticationFailed(
                    "Missing API key: send it as 'Authorization: Bearer <key>'"
                )
            return ANONYMOUS
        digest = hash_key(token)
        principal = self._static.get(digest) or self._stored.get(digest)
        if principal is not None:
            return principal
        if self.required:
            raise AuthenticationFailed("Incorrect API key provided")
        return ANONYMOUS

    # --- store-backed keys ----------------------------------------------------------

    def load_from_store(self) -> None:
        if self._sessions is None:
            return
        with self._sessions() as session:
            rows = session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None))).all()
        stored = {}
        for row in rows:
            try:
                budget = (None if row.budget_usd is None
                          else key_budget(row.budget_usd, row.budget_period))
            except ValueError as exc:  # written before limits were checked: not spent blind
                log.error("API key %s is refused until its budget is fixed: %s", row.id, exc)
                continue
            stored[row.key_hash] = Principal(tenant=row.tenant, key_id=str(row.id), budget=budget)
        self._stored = stored

    async def start(self) -> None:
        if self._sessions is None:
            return
        self._task = await now_and_every(
            self._refresh_interval_s, self.load_from_store, name="api-key-refresh",
            failure="could not load API keys from the store; keeping the previous keys",
        )

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("Authorization header must be 'Bearer <key>'")
    return token.strip()


def key_budget(budget_usd: float | None, budget_period: str | None = None
               ) -> BudgetConfig | None:
    """A key's spending limit: ``budget_usd`` per ``budget_period`` (``day``, ``month``,
    the default, or ``total``), None for no limit. ``ValueError`` for a limit that is not
    a positive number, an unknown period, or a period without a limit."""
    if budget_usd is None:
        if budget_period is not None:
            raise ValueError("a budget period needs a budget: give the limit in USD too")
        return None
    try:
        return BudgetConfig(limit_usd=budget_usd, period=budget_period or "month")
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in exc.errors())
        raise ValueError(f"invalid key budget: {problems}") from None


def create_api_key(
    sessions: sessionmaker[Session],
    *,
    tenant: str,
    name: str | None = None,
    budget_usd: float | None = None,
    budget_period: str | None = None,
) -> str:
    """Create a key in the store and return it in clear (the only time it is shown);
    its budget as ``key_budget`` checks it."""
    budget = key_budget(budget_usd, budget_period)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with sessions.begin() as session:
        session.add(
            ApiKey(
                key_hash=hash_key(key),
                key_prefix=key[:10],
                tenant=tenant,
                name=name,
                budget_usd=budget.limit_usd if budget else None,
                budget_period=budget.period if budget else "month",
            )
        )
    return key


def list_api_keys(sessions: sessionmaker[Session]) -> list[ApiKey]:
    """Every key in the store, oldest first (revoked ones included)."""
    with sessions() as session:
        return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def describe_budget(row: ApiKey) -> str:
    """``$5/month``, ``$20 total`` or ``unlimited``."""
    if row.budget_usd is None:
        return "unlimited"
    if row.budget_period == "total":
        return f"${row.budget_usd:g} total"
    return f"${row.budget_usd:g}/{row.budget_period}"
