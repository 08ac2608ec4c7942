"""The alert engine on a real store with a real webhook receiver and an injected clock."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from models import Alert, AlertEvent
from services.alerts import AlertConfigError, AlertEngine, open_alerts
from services.settings import DeliverySettings, WebhookChannel
from tests.alerts.conftest import add_requests
from tests.support.receivers import webhook_receiver

HIT_RATE_RULE = {"name": "hit-rate", "metric": "cache_hit_rate", "below": 0.6, "for": "10m",
                 "hysteresis": 0.05, "min_requests": 10}


def delivery(url: str, **policy: float) -> DeliverySettings:
    """Generous limits (a busy machine answers slowly); tests of hanging receivers
    pass their own short ones."""
    limits = {"timeout_s": 10.0, "retries": 1, "backoff_s": 0.05, "deadline_s": 30.0}
    return DeliverySettings(webhooks={"ops": WebhookChannel(url=url, format="slack")},
                            **{**limits, **policy})


def engine_for(make_settings, store, clock, url: str, rules: list[dict], *,
               window_minutes: float = 5, **settings):
    if "delivery" not in settings:
        settings["delivery"] = delivery(url)
    config = make_settings(database_url=str(store.url),
                           alerts={"rules": rules, "window_minutes": window_minutes},
                           **settings)
    return AlertEngine(config, store, clock=clock, gpu_reader=dict)


async def test_pending_firing_resolved_with_one_notification_per_change(
        make_settings, store, clock) -> None:
    with webhook_receiver() as receiver:
        engine = engine_for(make_settings, store, clock, f"{receiver.url}/ok", [HIT_RATE_RULE],
                            window_minutes=1)
        add_requests(store, clock.now, 40, hits=10)  # 25% hits
        changes = [c["change"] for c in (await engine.evaluate()).changes]
        for minute in range(1, 31):  # then hovering at 60%: 58%, 62%, 58% ... for 30 min
            clock.advance(minutes=1)
            add_requests(store, clock.now, 50, hits=29 if minute % 2 else 31)
            result = await engine.evaluate()
            changes += [c["change"] for c in result.changes]
        assert changes == ["pending", "firing"]  # fired once (at 58%), never flapped
        clock.advance(minutes=1)
        add_requests(store, clock.now, 50, hits=40)  # 80%: clearly back
        resolved = await engine.evaluate()
        assert [c["change"] for c in resolved.changes] == ["resolved"]
    texts = [body["text"] for body in receiver.posts("/ok")]
    assert len(texts) == 2
    assert texts[0].startswith("*FIRING: hit-rate (overall)*") and "cache_hit_rate" in texts[0]
    assert texts[1].startswith("*RESOLVED: hit-rate (overall)*")
    with store.connect() as conn:
        alert = conn.execute(select(Alert)).one()
        events = conn.execute(select(AlertEvent.state).order_by(AlertEvent.id)).scalars().all()
    assert alert.state == "resolved" and alert.fired_at is not None
    assert events == ["pending", "firing", "resolved"]


async def test_state_survives_a_restart(make_settings, store, clock) -> None:
    with webhook_receiver() as receiver:
        url = f"{receiver.url}/ok"
        add_requests(store, clock.now, 40, hits=0)
        await engine_for(make_settings, store, clock, url, [HIT_RATE_RULE]).evaluate()
        clock.advance(minutes=11)
        add_requests(store, clock.now, 40, hits=0)
        restarted = engine_for(make_settings, store, clock, url, [HIT_RATE_RULE])
        result = await restarted.evaluate()
    assert [c["change"] for c in result.changes] == ["firing"]
    [firing] = open_alerts(store)
    assert firing["rule"] == "hit-rate" and firing["value"] == 0.0
    assert firing["since"] == "2026-12-01T09:30:00+00:00"  # pending began before the restart


async def test_a_dead_webhook_neither_blocks_nor_loses_the_notification(
        make_settings, store, clock) -> None:
    rule = {**HIT_RATE_RULE, "for": 0}
    with webhook_receiver() as receiver:
        add_requests(store, clock.now, 40, hits=0)
        broken = engine_for(make_settings, store, clock, f"{receiver.url}/hang", [rule],
                            delivery=delivery(f"{receiver.url}/hang", timeout_s=0.5,
                                              deadline_s=2.0))
        result = await broken.evaluate()
        assert [c["change"] for c in result.changes] == ["firing"]
        assert result.notified == 0 and result.undelivered == 1
        with store.connect() as conn:
            event = conn.execute(select(AlertEvent)).one()
        assert event.delivered_at is None and event.delivery_attempts == 1
        assert "no answer within" in event.delivery[0]["error"]
        # the receiver is fixed: the next evaluation sends what is owed, once
        clock.advance(minutes=1)
        fixed = engine_for(make_settings, store, clock, f"{receiver.url}/ok", [rule])
        again = await fixed.evaluate()
        assert again.changes == [] and again.notified == 1
        assert (await fixed.evaluate()).notified == 0
    assert len(receiver.posts("/ok")) == 1


async def test_a_500_webhook_is_retried_then_given_up_after_the_set_attempts(
        make_settings, store, clock) -> None:
    rule = {**HIT_RATE_RULE, "for": 0}
    with webhook_receiver() as receiver:
        add_requests(store, clock.now, 40, hits=0)
        config = make_settings(database_url=str(store.url), delivery=delivery(
            f"{receiver.url}/fail"), alerts={"rules": [rule], "delivery_attempts": 2})
        engine = AlertEngine(config, store, clock=clock, gpu_reader=dict)
        results = [await engine.evaluate() for _ in range(3)]
    assert [r.undelivered for r in results] == [1, 1, 0]
    assert len(receiver.posts("/fail")) == 4  # 2 evaluations x (1 try + 1 retry)


async def test_unknown_names_in_a_rule_are_a_clear_error_and_other_rules_still_run(
        make_settings, store, clock) -> None:
    rules = [{**HIT_RATE_RULE, "for": 0},
             {"name": "typo", "metric": "error_rate", "above": 0.01, "tenants": ["acmee"],
              "thresholds": {"model:gpt-5-mini": 0.02}}]
    with webhook_receiver() as receiver:
        engine = engine_for(make_settings, store, clock, f"{receiver.url}/ok", rules,
                            api_keys=["sk-a:acme"])
        with pytest.raises(AlertConfigError, match="'typo' names unknown tenant 'acmee', "
                           "model 'gpt-5-mini'"):
            engine.check()
        add_requests(store, clock.now, 40, hits=0, status=500)
        result = await engine.evaluate()
    assert [c["rule"] for c in result.changes] == ["hit-rate"]
    assert any("acmee" in error for error in result.errors)


async def test_per_tenant_groups_and_thresholds(make_settings, store, clock) -> None:
    rule = {"name": "slow", "metric": "latency_p95_ms", "above": 200, "group_by": "tenant",
            "thresholds": {"tenant:batchy": 5000}, "min_requests": 5}
    add_requests(store, clock.now, 20, tenant="acme", latency_ms=350)
    add_requests(store, clock.now, 20, tenant="batchy", latency_ms=900)
    add_requests(store, clock.now, 20, tenant="quick", latency_ms=40)
    engine = engine_for(make_settings, store, clock, "http://127.0.0.1:9/x", [rule],
                        api_keys=["a:acme", "b:batchy", "c:quick"],
                        delivery=DeliverySettings())
    result = await engine.evaluate()
    assert [(c["subject"], c["change"]) for c in result.changes] == [
        ("tenant=acme", "firing")]
    assert result.notified == 1  # no channel: recorded and logged only


async def test_budget_thresholds_from_the_store(make_settings, store, clock) -> None:
    routing = {"models": [{"name": "gpt-4o-mini", "tier": "balanced", "upstream": "openai",
                           "context_window": 128000}],
               "budgets": {"tenant:acme": {"limit_usd": 1.0, "period": "month"}}}
    rules = [{"name": "budget-80", "metric": "budget_used", "above": 0.8},
             {"name": "budget-100", "metric": "budget_used", "above": 1.0,
              "severity": "critical"}]
    add_requests(store, clock.now, 85, cost_usd=0.01)  # $0.85 of $1
    engine = engine_for(make_settings, store, clock, "http://127.0.0.1:9/x", rules,
                        routing=routing, delivery=DeliverySettings())
    result = await engine.evaluate()
    assert [(c["rule"], c["subject"]) for c in result.changes] == [
        ("budget-80", "budget=tenant:acme")]
    assert result.changes[0]["value"] == pytest.approx(0.85)


async def test_alerts_of_a_rule_removed_from_the_config_are_closed(
        make_settings, store, clock) -> None:
    rule = {**HIT_RATE_RULE, "for": 0}
    add_requests(store, clock.now, 40, hits=0)
    none = DeliverySettings()
    await engine_for(make_settings, store, clock, "", [rule], delivery=none).evaluate()
    assert [a["rule"] for a in open_alerts(store)] == ["hit-rate"]
    other = {"name": "errors", "metric": "error_rate", "above": 0.5}
    result = await engine_for(make_settings, store, clock, "", [other],
                              delivery=none).evaluate()
    assert [(c["rule"], c["change"]) for c in result.changes] == [("hit-rate", "resolved")]
    assert open_alerts(store) == [] and result.notified == 1
    [closed] = open_alerts(store, states=("resolved",))
    assert "no longer configured" in closed["message"]
    assert closed["details"]["context"]["lookups"] == 40  # the last judgement is kept


async def test_the_dashboard_lists_firing_alerts_not_pending_ones(make_settings, store,
                                                                  clock) -> None:
    from dashboards import data

    rules = [{"name": "errors", "metric": "error_rate", "above": 0.01, "min_requests": 5},
             {**HIT_RATE_RULE, "min_requests": 5}]
    add_requests(store, clock.now, 20, status=503)
    await engine_for(make_settings, store, clock, "", rules,
                     delivery=DeliverySettings()).evaluate()
    assert sorted(a["state"] for a in open_alerts(store, states=("firing", "pending"))) == [
        "firing", "pending"]
    shown = data.alerts(store, data.Filters(end=clock.now))
    assert [a["message"].split()[0] for a in shown.firing] == ["error_rate"]
