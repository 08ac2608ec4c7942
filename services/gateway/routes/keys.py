"""Admin API for API keys: list, create, update, revoke (``optengine keys`` over HTTP).

The store is the one place keys live; this replica reloads its keys at once after a
change, the others within ``api_key_refresh_s``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from models import ApiKey
from services.gateway.auth import (
    create_api_key,
    hash_key,
    list_api_keys,
    revoke_api_key,
    update_api_key,
)
from services.gateway.deps import ServicesDep
from services.gateway.routes.admin import require_admin
from services.routing.keys import describe_budget

router = APIRouter(prefix="/admin/keys", dependencies=[Depends(require_admin)])

Period = Literal["day", "month", "total"]
KeyId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the key's id (GET /admin/keys)")]


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(min_length=1, max_length=128)
    name: str | None = Field(default=None, max_length=128)
    budget_usd: float | None = Field(default=None, description="limit per budget_period")
    budget_period: Period | None = None


class KeyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=128, description="'' clears the label")
    budget_usd: float | None = None
    budget_period: Period | None = None
    unlimited: bool = Field(default=False, description="drop the spending limit")


def _summary(row: ApiKey) -> dict[str, Any]:
    return {"id": row.id, "prefix": row.key_prefix, "tenant": row.tenant, "name": row.name,
            "budget_usd": row.budget_usd,
            "budget_period": row.budget_period if row.budget_usd is not None else None,
            "budget": describe_budget(row.budget_usd, row.budget_period),
            "created_at": _utc(row.created_at), "revoked_at": _utc(row.revoked_at)}


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time the store keeps is UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@router.get("")
async def list_keys(services: ServicesDep) -> list[dict[str, Any]]:
    """Every stored key, revoked ones included, oldest first (never the key itself)."""
    return [_summary(row) for row in await asyncio.to_thread(list_api_keys, services.sessions)]


@router.post("", status_code=201)
async def create_key(body: KeyIn, services: ServicesDep) -> dict[str, Any]:
    """A new key, shown in clear this once (``key``); stored only as a hash."""
    key = await asyncio.to_thread(create_api_key, services.sessions, **body.model_dump())
    await asyncio.to_thread(services.keyring.load_from_store)
    rows = await asyncio.to_thread(list_api_keys, services.sessions)
    return {"key": key, **_summary(next(r for r in rows if r.key_hash == hash_key(key)))}


@router.patch("/{key_id}")
async def update_key(key_id: KeyId, body: KeyUpdate, services: ServicesDep) -> dict[str, Any]:
    row = await asyncio.to_thread(update_api_key, services.sessions, key_id,
                                  **body.model_dump())
    await asyncio.to_thread(services.keyring.load_from_store)
    return _summary(row)


@router.post("/{key_id}/revoke")
async def revoke_key(key_id: KeyId, services: ServicesDep) -> dict[str, Any]:
    """Refuse the key from now on (this replica at once, the others within
    ``api_key_refresh_s``); its history stays."""
    row, revoked = await asyncio.to_thread(revoke_api_key, services.sessions, key_id)
    await asyncio.to_thread(services.keyring.load_from_store)
    return {**_summary(row), "revoked_now": revoked}
