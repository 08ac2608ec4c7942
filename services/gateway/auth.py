"""API keys: who is calling, and for which tenant.

Keys are never stored in clear: the store keeps their sha256, and the gateway keeps an
in-memory map hash -> principal, refreshed from the store in the background every
``api_key_refresh_s`` (10 s by default). So a request costs one dict lookup, never a
database round trip; a new, updated or revoked key takes effect within one refresh
interval on every replica (at once on the replica whose admin API changed it). While the
store cannot be read the gateway keeps the keys it last read, and says so in its log.

A revoked key stays in the store (``request_log`` rows keep pointing at it, reports still
name it) and is refused with a 401 saying it was revoked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import ApiKey
from services.background import cancel_and_wait, now_and_every
from services.errors import AuthenticationFailed, Conflict, InvalidRequest, NotFound
from services.routing.config import BudgetConfig
from services.routing.keys import key_budget

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
        self._revoked: frozenset[str] = frozenset()
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
        if digest in self._revoked:
            raise AuthenticationFailed(
                "This API key has been revoked; ask your platform team for a new key"
            )
        if self.required:
            raise AuthenticationFailed("Incorrect API key provided")
        return ANONYMOUS

    # --- store-backed keys ----------------------------------------------------------

    def load_from_store(self) -> None:
        if self._sessions is None:
            return
        with self._sessions() as session:
            rows = session.scalars(select(ApiKey)).all()
        stored = {}
        revoked = frozenset(row.key_hash for row in rows if row.revoked_at is not None)
        for row in rows:
            if row.revoked_at is not None:
                continue
            try:
                budget = (None if row.budget_usd is None
                          else key_budget(row.budget_usd, row.budget_period))
            except ValueError as exc:  # written before limits were checked: not spent blind
                log.error("API key %s is refused until its budget is fixed: %s", row.id, exc)
                continue
            stored[row.key_hash] = Principal(tenant=row.tenant, key_id=str(row.id), budget=budget)
        self._stored, self._revoked = stored, revoked

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


def get_api_key(session: Session, key_id: int) -> ApiKey:
    """The stored key ``key_id``; ``NotFound`` (404) naming the ids that exist."""
    row = session.get(ApiKey, key_id)
    if row is None:
        known = session.scalars(select(ApiKey.id).order_by(ApiKey.id)).all()
        listed = ", ".join(map(str, known[:20])) + (" ..." if len(known) > 20 else "")
        raise NotFound(f"no API key with id {key_id} (ids in the store: {listed or 'none'}; "
                       "see 'optengine keys list')", param="key_id", code="key_not_found")
    return row


def update_api_key(
    sessions: sessionmaker[Session],
    key_id: int,
    *,
    name: str | None = None,
    budget_usd: float | None = None,
    budget_period: str | None = None,
    unlimited: bool = False,
) -> ApiKey:
    """Change a key's label or its limit; what is not given stays as it was (a new
    ``budget_period`` alone keeps the limit in USD, an empty ``name`` clears the label,
    ``unlimited`` drops the limit). Every gateway enforces the change within one key
    refresh. ``NotFound`` for an unknown key, ``Conflict`` for a revoked one,
    ``InvalidRequest`` for nothing to change or a bad limit (``InvalidKeyBudget``)."""
    if unlimited and (budget_usd is not None or budget_period is not None):
        raise InvalidRequest("give either a budget or unlimited, not both", param="unlimited")
    if name is None and budget_usd is None and budget_period is None and not unlimited:
        raise InvalidRequest("nothing to update: give a name, a budget (USD and/or period) "
                             "or unlimited")
    with sessions.begin() as session:
        row = get_api_key(session, key_id)
        if row.revoked_at is not None:
            raise Conflict(f"API key {key_id} was revoked at {row.revoked_at:%Y-%m-%d %H:%M} "
                           "UTC and cannot be changed; create a new key",
                           param="key_id", code="key_revoked")
        if unlimited:
            row.budget_usd, row.budget_period = None, "month"
        elif budget_usd is not None or budget_period is not None:
            limit = budget_usd if budget_usd is not None else row.budget_usd
            budget = key_budget(limit, budget_period or (row.budget_period if limit else None))
            assert budget is not None
            row.budget_usd, row.budget_period = budget.limit_usd, budget.period
        if name is not None:
            row.name = name.strip() or None
    return row


def revoke_api_key(sessions: sessionmaker[Session], key_id: int,
                   *, now: datetime | None = None) -> tuple[ApiKey, bool]:
    """Revoke a key: every gateway refuses it within one key refresh. The row stays (its
    requests keep their key id in ``request_log``). Returns the key and whether this call
    revoked it (False: it already was, and keeps its first revocation time)."""
    with sessions.begin() as session:
        row = get_api_key(session, key_id)
        if row.revoked_at is not None:
            return row, False
        row.revoked_at = now or datetime.now(UTC)
    return row, True
