"""Managing stored API keys while gateways run: ``optengine keys update`` changes what
every gateway enforces, ``keys revoke`` makes every gateway refuse the key (401 in the
OpenAI error format) within the key refresh and keeps its history; the admin API does
the same over HTTP, at once on the replica that served the call. On SQLite and on
PostgreSQL."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from models import ApiKey, RequestLog, create_store_engine, session_factory
from services.cli import app
from services.gateway.auth import create_api_key, hash_key
from tests.routing.conftest import MOST, post_with_key
from tests.support.gateway import wait_for

REFRESH_S = 0.3


def _keys(*args: str):
    return CliRunner().invoke(app, ["keys", *args])


def _id(url: str, key: str) -> int:
    engine = create_store_engine(url)
    try:
        with session_factory(engine)() as session:
            return session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key)))
    finally:
        engine.dispose()


def _words(output: str) -> str:
    return " ".join(output.replace("│", " ").split())  # unwrap typer's error box


def test_a_revoked_key_is_refused_by_every_running_gateway_and_keeps_its_history(
    keyed_gateway, start_gateway, each_store_url: str
) -> None:
    gateway, keys = keyed_gateway({"leaked": None, "other": None},
                                  database_url=each_store_url, api_key_refresh_s=REFRESH_S)
    second = start_gateway(gateway.settings)  # another replica on the same store
    for replica in (gateway, second):
        assert post_with_key(replica, keys["leaked"]).status_code == 200
    key_id = _id(each_store_url, keys["leaked"])

    revoked = _keys("revoke", str(key_id))
    assert revoked.exit_code == 0, revoked.output
    assert revoked.output.startswith(f"{key_id}\t") and "revoked" in revoked.output
    for replica in (gateway, second):
        assert wait_for(lambda r=replica: post_with_key(r, keys["leaked"]).status_code == 401,
                        timeout_s=20)
        refused = post_with_key(replica, keys["leaked"])
        assert refused.json() == {"error": {
            "message": "This API key has been revoked; ask your platform team for a new key",
            "type": "authentication_error", "param": None, "code": "invalid_api_key"}}
        assert post_with_key(replica, keys["other"]).status_code == 200
    assert post_with_key(gateway, "oe-never-issued").json()["error"]["message"] == (
        "Incorrect API key provided")

    gateway.flush_telemetry()
    second.flush_telemetry()
    engine = create_store_engine(each_store_url)
    try:
        with session_factory(engine)() as session:
            row = session.get(ApiKey, key_id)
            served = session.scalars(select(RequestLog.status_code).where(
                RequestLog.api_key_id == str(key_id))).all()
    finally:
        engine.dispose()
    assert row is not None and row.revoked_at is not None  # kept, not deleted
    # its requests (two before the revocation, maybe more before the refresh) keep their id
    assert len(served) >= 2 and set(served) == {200}
    again = _keys("revoke", str(key_id))
    assert again.exit_code == 0 and again.output.startswith(f"key {key_id} was already revoked")
    listed = _keys("list")
    assert f"revoked {row.revoked_at:%Y-%m-%d}" in listed.output


def test_keys_update_changes_what_the_gateway_enforces(keyed_gateway, each_store_url) -> None:
    gateway, keys = keyed_gateway({"ci": (MOST * 1.5, "month")}, database_url=each_store_url,
                                  api_key_refresh_s=REFRESH_S)
    key_id = str(_id(each_store_url, keys["ci"]))
    assert [post_with_key(gateway, keys["ci"]).status_code for _ in range(2)] == [200, 429]

    raised = _keys("update", key_id, "--budget-usd", str(MOST * 3.5), "--name", "ci-nightly")
    assert raised.exit_code == 0, raised.output
    assert raised.output.split("\t")[3:] == ["ci-nightly", f"${MOST * 3.5:g}/month\n"]
    assert wait_for(lambda: post_with_key(gateway, keys["ci"]).status_code == 200, timeout_s=20)

    lowered = _keys("update", key_id, "--budget-usd", str(MOST * 0.5))  # period kept
    assert lowered.exit_code == 0, lowered.output
    new_limit = f"of ${MOST * 0.5:g} per month"
    # until the refresh the old limit answers (a 200, or a 429 naming $MOST x 3.5)
    assert wait_for(lambda: new_limit in post_with_key(gateway, keys["ci"]).text, timeout_s=20)
    error = post_with_key(gateway, keys["ci"]).json()["error"]
    assert error["code"] == "budget_exceeded"
    assert f"budget exceeded for key:{key_id}" in error["message"]
    assert new_limit in error["message"]

    assert _keys("update", key_id, "--unlimited").exit_code == 0
    assert wait_for(lambda: post_with_key(gateway, keys["ci"]).status_code == 200, timeout_s=20)


@pytest.mark.parametrize(("args", "message"), [
    (["update", "999", "--budget-usd", "5"], "no API key with id 999"),
    (["revoke", "999"], "no API key with id 999"),
    (["update", "{capped}", "--budget-usd", "-3"], "greater than 0"),
    (["update", "{capped}", "--budget-usd", "0"], "greater than 0"),
    (["update", "{capped}", "--budget-period", "week"], "'total', 'day' or 'month'"),
    (["update", "{free}", "--budget-period", "day"], "needs a budget"),
    (["update", "{capped}", "--budget-usd", "5", "--unlimited"], "not both"),
    (["update", "{capped}"], "nothing to update"),
    (["update", "{revoked}", "--budget-usd", "5"], "was revoked"),
    (["update", "abc", "--budget-usd", "5"], "should be a valid integer"),
    (["revoke", "99999999999"], "less than or equal to 2147483647"),
    (["update", "{capped}", "--budget-usd", "inf"], "finite number"),
])
def test_keys_update_and_revoke_refuse_bad_input_and_change_nothing(
    each_store_url, args, message
) -> None:
    engine = create_store_engine(each_store_url)
    sessions = session_factory(engine)
    ids = {name: str(_id(each_store_url, create_api_key(
        sessions, tenant="team-a", name=name, budget_usd=budget)))
        for name, budget in (("capped", 5.0), ("free", None), ("revoked", 5.0))}
    engine.dispose()
    assert _keys("revoke", ids["revoked"]).exit_code == 0
    before = _keys("list").output

    result = _keys(*(a.format(**ids) for a in args))
    assert result.exit_code == 2, result.output
    assert message in _words(result.output), result.output
    assert _keys("list").output == before


def test_the_admin_api_lists_creates_updates_and_revokes_keys(keyed_gateway) -> None:
    admin = {"authorization": "Bearer admin-test-key"}
    gateway, keys = keyed_gateway({"svc": (1.0, "month")}, api_key_refresh_s=3600,
                                  admin_api_key="admin-test-key")
    base = f"{gateway.url}/admin/keys"
    assert httpx.get(base).status_code == 401
    [listed] = httpx.get(base, headers=admin).json()
    assert (listed["tenant"], listed["name"], listed["budget"], listed["revoked_at"]) == (
        "team-a", "svc", "$1/month", None)
    key_id = listed["id"]

    bad = [httpx.patch(f"{base}/{key_id}", headers=admin, json=body)
           for body in ({"budget_usd": -1}, {"budget_period": "week"}, {"budget": 5}, {})]
    assert [r.status_code for r in bad] == [400, 400, 400, 400]
    assert [r.json()["error"]["param"] for r in bad[:3]] == [
        "budget_usd", "budget_period", "budget"]
    assert "greater than 0" in bad[0].json()["error"]["message"]
    assert "nothing to update" in bad[3].json()["error"]["message"]
    missing = httpx.patch(f"{base}/999", headers=admin, json={"budget_usd": 2})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "key_not_found"
    huge = httpx.post(f"{base}/{2**63}/revoke", headers=admin)
    assert huge.status_code == 400 and huge.json()["error"]["param"] == "path.key_id"

    updated = httpx.patch(f"{base}/{key_id}", headers=admin,
                          json={"name": "svc-2", "budget_usd": 2, "budget_period": "day"})
    assert updated.status_code == 200
    assert (updated.json()["name"], updated.json()["budget"]) == ("svc-2", "$2/day")

    created = httpx.post(base, headers=admin, json={"tenant": "team-b", "budget_usd": 3})
    assert created.status_code == 201 and created.json()["budget"] == "$3/month"
    # this replica reloads its keys at once (the refresh is an hour away)
    assert post_with_key(gateway, created.json()["key"]).status_code == 200

    assert post_with_key(gateway, keys["svc"]).status_code == 200
    revoked = httpx.post(f"{base}/{key_id}/revoke", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_now"] is True
    assert post_with_key(gateway, keys["svc"]).status_code == 401
    again = httpx.post(f"{base}/{key_id}/revoke", headers=admin).json()
    assert again["revoked_now"] is False and again["revoked_at"] == revoked.json()["revoked_at"]
    assert httpx.patch(f"{base}/{key_id}", headers=admin,
                       json={"budget_usd": 5}).status_code == 409
