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

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import ApiKey
from services.background import cancel_and_wait, now_and_every
from services.errors import AuthenticationFailed

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
KEY_PREFIX = "oe-"


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    key_id: str | None = None


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
        self._stored = {
            row.key_hash: Principal(tenant=row.tenant, key_id=str(row.id)) for row in rows
        }

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
) -> str:
    """Create a key in the store and return it in clear (the only time it is shown)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with sessions.begin() as session:
        session.add(
            ApiKey(
                key_hash=hash_key(key),
                key_prefix=key[:10],
                tenant=tenant,
                name=name,
                budget_usd=budget_usd,
            )
        )
    return key
