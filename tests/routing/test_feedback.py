"""POST /v1/feedback: every rating is stored per request (experiments compare them);
ratings of cheap-tier answers with a stored prompt also become routing labels the
retraining flow reads; other answers get none; the request must be the caller's and
answered. Against the real store: SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from sqlalchemy import insert, select

from models import RequestLog
from models.tables import RequestRating, RoutingLabel
from services.errors import Conflict, NotFound
from services.routing import RoutingConfig
from services.routing.feedback import FeedbackRequest, record_feedback
from services.routing.retrain import collect_labels
from tests.routing.conftest import EASY, PRICES, post_chat, routing_config

CONFIG = RoutingConfig.parse(routing_config())  # cheap tier: small; strong: large


@pytest.fixture
def engine(any_store):
    """A migrated store, SQLite and PostgreSQL in turn (tests/conftest.py)."""
    return any_store


def logged(engine, *, model: str = "small", tenant: str = "t", status: int = 200,
           prompt: str | None = EASY) -> str:
    request_id = f"req-{uuid.uuid4().hex}"
    stored = orjson.dumps([{"role": "user", "content": prompt}]).decode() if prompt else None
    with engine.begin() as connection:
        connection.execute(insert(RequestLog), [{
            "id": request_id, "created_at": datetime.now(UTC), "tenant": tenant,
            "endpoint": "chat.completions", "status_code": status, "model_requested": "auto",
            "model_served": model if status == 200 else None, "prompt_text": stored,
        }])
    return request_id


def rate(engine, request_id: str, tenant: str = "t", **verdict):
    return record_feedback(engine, CONFIG, FeedbackRequest(request_id=request_id, **verdict),
                           tenant=tenant)


def labels(engine) -> list[tuple[str | None, str, bool, str]]:
    with engine.connect() as connection:
        return [tuple(r) for r in connection.execute(select(
            RoutingLabel.request_id, RoutingLabel.prompt_text, RoutingLabel.needs_strong,
            RoutingLabel.source).order_by(RoutingLabel.id))]


def ratings(engine) -> dict[str, tuple[str, float]]:
    with engine.connect() as connection:
        return {r.request_id: (r.tenant, r.score) for r in connection.execute(select(
            RequestRating.request_id, RequestRating.tenant, RequestRating.score))}


def test_cheap_tier_ratings_become_labels_and_a_new_rating_replaces_the_old(engine) -> None:
    request_id = logged(engine)
    bad = rate(engine, request_id, rating="bad")
    assert bad.needs_strong is True and bad.model == "small"
    assert labels(engine) == [(request_id, EASY, True, "feedback")]
    good = rate(engine, request_id, score=0.8)
    assert good.rating == "good" and good.needs_strong is False
    assert labels(engine) == [(request_id, EASY, False, "feedback")]
    found = collect_labels(engine, since=datetime.now(UTC) - timedelta(hours=1))
    assert (found.prompts, found.needs_strong, found.sources) == ([EASY], [False],
                                                                  {"feedback": 1})
    assert rate(engine, logged(engine), score=0.2).needs_strong is True
    assert ratings(engine)[request_id] == ("t", 0.8)  # the second rating replaced the first


def test_every_answered_request_keeps_its_rating_label_or_not(engine) -> None:
    strong, promptless = logged(engine, model="large"), logged(engine, prompt=None)
    assert rate(engine, strong, rating="good").score == 1.0
    result = rate(engine, promptless, rating="bad")
    assert result.needs_strong is None and "logged without its prompt" in result.detail
    assert ratings(engine) == {strong: ("t", 1.0), promptless: ("t", 0.0)}
    assert labels(engine) == []


def test_other_tiers_answers_leave_no_label(engine) -> None:
    for model in ("large", "medium", "not-routed"):
        result = rate(engine, logged(engine, model=model), rating="good")
        assert result.needs_strong is None
        assert "not a model of the router's cheap tier (fast_cheap)" in result.detail
    unrouted = record_feedback(engine, None, FeedbackRequest(
        request_id=logged(engine), rating="bad"), tenant="t")
    assert unrouted.needs_strong is None
    assert labels(engine) == []


def test_unknown_foreign_unanswered_and_promptless_requests_are_refused(engine) -> None:
    with pytest.raises(NotFound):
        rate(engine, "req-nope", rating="bad")
    with pytest.raises(NotFound):  # another tenant's request looks like no request
        rate(engine, logged(engine, tenant="other"), rating="bad")
    with pytest.raises(Conflict, match="no answer to rate"):
        rate(engine, logged(engine, status=502), rating="bad")
    assert labels(engine) == [] and ratings(engine) == {}


@pytest.fixture
def feedback_gateway(fake_workers, make_settings, start_gateway):
    def start(*, store_prompts: bool):
        return start_gateway(make_settings(
            workers=[fake_workers.url], routing=routing_config(), price_overrides=PRICES,
            cache_enabled=False, store_prompts=store_prompts,
            api_keys=["key-a:team-a", "key-b:team-b"],
        ))

    return start


def post_feedback(gateway, key: str | None, body: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{gateway.url}/v1/feedback", json=body, headers=headers, timeout=30)


def answered(gateway, model: str = "small", *, flush: bool = True) -> str:
    response = post_chat(gateway, model, EASY, headers={"Authorization": "Bearer key-a"})
    assert response.status_code == 200, response.text
    if flush:
        gateway.flush_telemetry()
    return response.headers["x-request-id"]


def test_the_feedback_api_records_labels_for_the_callers_requests(feedback_gateway) -> None:
    gateway = feedback_gateway(store_prompts=True)
    request_id = answered(gateway)
    response = post_feedback(gateway, "key-a", {"request_id": request_id, "rating": "bad"})
    assert response.status_code == 200, response.text
    assert response.json() | {"detail": ""} == {
        "object": "feedback", "request_id": request_id, "rating": "bad", "score": 0.0,
        "model": "small", "needs_strong": True, "detail": ""}
    assert labels(gateway.services.engine) == [(request_id, EASY, True, "feedback")]
    strong = post_feedback(gateway, "key-a", {"request_id": answered(gateway, "large"),
                                              "rating": "good"})
    assert strong.status_code == 200 and strong.json()["needs_strong"] is None

    foreign = post_feedback(gateway, "key-b", {"request_id": request_id, "rating": "good"})
    assert foreign.status_code == 404 and foreign.json()["error"]["param"] == "request_id"
    assert post_feedback(gateway, None, {"request_id": request_id, "rating": "good"}
                         ).status_code == 401
    assert len(labels(gateway.services.engine)) == 1
    assert ratings(gateway.services.engine)[request_id] == ("team-a", 0.0)


def test_a_rating_posted_the_moment_its_answer_arrives_finds_it(feedback_gateway) -> None:
    gateway = feedback_gateway(store_prompts=True)
    for _ in range(5):  # no flush in between: the route waits for the answer's log row
        request_id = answered(gateway, flush=False)
        response = post_feedback(gateway, "key-a", {"request_id": request_id, "rating": "good"})
        assert response.status_code == 200, response.text
    assert len(labels(gateway.services.engine)) == 5


@pytest.mark.parametrize(("body", "says"), [
    ({"request_id": "req-1"}, "exactly one of rating"),
    ({"request_id": "req-1", "rating": "good", "score": 1}, "exactly one of rating"),
    ({"request_id": "req-1", "rating": "meh"}, "rating: Input should be 'good' or 'bad'"),
    ({"request_id": "req-1", "score": 1.5}, "score: Input should be less than or equal to 1"),
    ({"rating": "good"}, "request_id: Field required"),
    ({"request_id": "req-1", "rating": "good", "comment": "x"}, "comment: Extra inputs"),
    ([], "JSON object"),
])
def test_malformed_feedback_is_a_clear_400(feedback_gateway, body, says) -> None:
    response = post_feedback(feedback_gateway(store_prompts=True), "key-a", body)
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]["message"]


def test_without_stored_prompts_a_rating_is_kept_without_a_label(feedback_gateway) -> None:
    gateway = feedback_gateway(store_prompts=False)
    response = post_feedback(gateway, "key-a", {"request_id": answered(gateway),
                                                "rating": "bad"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["score"] == 0.0 and body["needs_strong"] is None
    assert "OPTENGINE_STORE_PROMPTS is off" in body["detail"]
