"""Retraining the router from the store's labels (cascade outcomes, recorded labels),
versioning, and the model_routing flow under Prefect's test harness."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy import insert, select

from flows.model_routing import model_routing
from models import RequestLog
from models.tables import RouterVersion
from services.routing import ComplexityRouter
from services.routing.retrain import (
    ACCEPTED,
    ESCALATED,
    collect_labels,
    load_active_router,
    record_label,
    retrain,
)

# a tenant's own traffic: questions about invoices are hard for its cheap model, greetings
# are not; the shipped router has never seen either
HARD = "Reconcile invoice {i} against ledger entry {j} and explain the variance"
EASY = "Say hello to customer {i} and wish them a nice day {j}"


def cascade_row(text: str, reason: str) -> dict:
    return {
        "id": f"req-{uuid.uuid4().hex}", "created_at": datetime.now(UTC), "tenant": "t",
        "endpoint": "chat.completions", "status_code": 200, "route_reason": reason,
        "prompt_text": orjson.dumps([{"role": "user", "content": text}]).decode(),
    }


def fill(store, n: int) -> None:
    rows = []
    for i in range(n):
        hard = i % 2 == 0
        text = (HARD if hard else EASY).format(i=i, j=i * 7 % 13)
        if i % 3 == 0:  # a third of the labels come from feedback, the rest from cascades
            record_label(store, prompt_text=text, needs_strong=hard, source="feedback")
        else:
            reason = (f"{ESCALATED}, score 0.10" if hard
                      else f"auto: router 0.1 < 0.2; {ACCEPTED}, score 0.90")
            rows.append(cascade_row(text, reason))
    with store.begin() as connection:
        connection.execute(insert(RequestLog), rows)


def test_labels_come_from_cascade_outcomes_and_recorded_labels(store) -> None:
    fill(store, 30)
    labels = collect_labels(store, since=datetime.now(UTC) - timedelta(hours=1))
    assert len(labels.prompts) == 30
    assert labels.sources == {"cascade": 20, "feedback": 10}
    assert all(
        needs == text.startswith("Reconcile invoice")
        for text, needs in zip(labels.prompts, labels.needs_strong, strict=True)
    )


def test_cascade_decisions_are_labels_once_per_request(store) -> None:
    text = HARD.format(i=1, j=2)
    escalated = {**cascade_row(text, "auto: router 0.3 < 0.7; cascade: escalated from small"),
                 "cascade_score": 0.2, "cascade_decision": "escalated"}
    attempt = {**cascade_row(text, f"{ESCALATED}, judge 0.20"), "cascade_score": 0.2,
               "cascade_decision": "cheap_attempt"}  # the same request's cheap call
    accepted = {**cascade_row(EASY.format(i=1, j=2), "auto: router 0.1 < 0.7; cascade: x"),
                "cascade_score": 0.9, "cascade_decision": "accepted"}
    with store.begin() as connection:
        connection.execute(insert(RequestLog), [escalated, attempt, accepted])
    labels = collect_labels(store, since=datetime.now(UTC) - timedelta(hours=1))
    assert sorted(zip(labels.prompts, labels.needs_strong, strict=True)) == [
        (text, True), (EASY.format(i=1, j=2), False)]


def test_too_few_labels_skip_retraining(store) -> None:
    fill(store, 20)
    result = retrain(store, since=datetime.now(UTC) - timedelta(hours=1),
                     current=ComplexityRouter.load(), min_labels=200)
    assert result.status == "skipped" and "20 labels" in result.reason


def test_a_better_router_is_versioned_and_activated(store) -> None:
    fill(store, 240)
    shipped = ComplexityRouter.load()
    result = retrain(store, since=datetime.now(UTC) - timedelta(hours=1), current=shipped)
    assert result.status == "activated", result
    assert result.metrics["strong_fraction"] < result.metrics["active_strong_fraction"]
    active = load_active_router(store)
    assert active is not None and active.version == result.version
    assert active.decide(HARD.format(i=999, j=5), cost_aware=False).strong
    assert not active.decide(EASY.format(i=999, j=5), cost_aware=False).strong
    # retraining again on the same labels is no better: stored, not activated
    again = retrain(store, since=datetime.now(UTC) - timedelta(hours=1), current=active)
    assert again.status == "trained"
    with store.connect() as connection:
        versions = connection.execute(
            select(RouterVersion.version, RouterVersion.active).order_by(RouterVersion.id)
        ).all()
    assert versions == [(result.version, True), (again.version, False)]


def test_the_flow_retrains_under_prefect(store, prefect_harness) -> None:
    fill(store, 240)
    result = model_routing(window_hours=1, min_labels=100)
    assert result["status"] == "activated"
    assert load_active_router(store).version == result["version"]
