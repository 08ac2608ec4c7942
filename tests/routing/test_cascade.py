"""The cascade: escalates on a low-scoring cheap answer, not on a good one; never when
the latency limit cannot hold two calls; logs the cheap attempt; streams skip it; both
attempts are sent the token-optimised request; the learned judge reads the answer's
content; prompts unlike the router's training data are deferred to the cascade."""

from __future__ import annotations

import httpx

from services.routing.cascade import score_answer
from tests.routing.conftest import (
    EASY,
    LOSSLESS,
    NOVEL,
    ORDER_MINIFIED,
    ORDER_QUESTION,
    logged_rows,
    post_chat,
)
from tests.support.fake_openai import FakeOpenAI

CASCADE = {"cascade": {"enabled": True, "threshold": 0.5}}


def chat(gateway, text: str = EASY, **extra) -> httpx.Response:
    return post_chat(gateway, "auto", text, **extra)


def test_a_confident_cheap_answer_is_kept(routed_gateway, fake_workers: FakeOpenAI) -> None:
    fake_workers.models["small"].logprob = -0.05  # ~95% per token
    gateway = routed_gateway(**CASCADE)
    response = chat(gateway)
    assert response.status_code == 200
    assert response.headers["x-route-model"] == "small"
    reason = response.headers["x-route-reason"]
    assert reason.startswith("auto: router") and "cascade: accepted, score 0.9" in reason
    assert "token confidence 0.95" in reason
    assert fake_workers.calls("large") == 0
    sent = fake_workers.requests[-1]["body"]
    assert sent["logprobs"] is True  # the cascade asked for them ...
    assert "logprobs" not in response.json()["choices"][0]  # ... the client did not
    [row] = logged_rows(gateway)  # the kept answer is logged and priced as served
    assert row.model_served == "small" and row.worker is not None
    assert row.prompt_tokens and row.completion_tokens and row.cost_usd > 0


def test_a_low_confidence_answer_escalates_and_the_cheap_attempt_is_logged(
    routed_gateway, fake_workers: FakeOpenAI
) -> None:
    fake_workers.models["small"].logprob = -2.0  # ~14% per token
    gateway = routed_gateway(**CASCADE)
    response = chat(gateway)
    assert response.status_code == 200
    assert response.headers["x-route-model"] == "large"
    reason = response.headers["x-route-reason"]
    assert "cascade: escalated from small, score 0.1" in reason  # judge x 0.135 / 0.75
    assert "token confidence 0.14" in reason
    assert fake_workers.calls("small") == 1 and fake_workers.calls("large") == 1
    assert "logprobs" not in fake_workers.requests[-1]["body"]  # strong call as asked
    logged = logged_rows(gateway)
    assert [r.model_served for r in logged] == ["small", "large"]
    cheap, final = logged
    assert cheap.id.endswith("-cheap") and len(cheap.id) == len(final.id) == 36
    assert cheap.id[:-6] == final.id[:-6] and cheap.cost_usd > 0
    assert cheap.route_reason.startswith("cascade: cheap attempt escalated")
    assert final.model_requested == "auto" and final.status_code == 200
    # the score and the decision are recorded for the model_routing flow
    assert (cheap.cascade_decision, final.cascade_decision) == ("cheap_attempt", "escalated")
    assert final.cascade_score == cheap.cascade_score and final.cascade_score < 0.5


def test_the_cheap_attempt_and_the_escalation_are_both_optimised(
    routed_gateway, fake_workers: FakeOpenAI
) -> None:
    fake_workers.models["small"].logprob = -2.0
    gateway = routed_gateway(**CASCADE)
    response = post_chat(gateway, "auto:cheap", ORDER_QUESTION, headers=LOSSLESS)
    assert response.status_code == 200, response.text
    assert "cascade: escalated from small" in response.headers["x-route-reason"]
    assert int(response.headers["x-tokens-saved"]) > 0
    cheap, strong = (r["body"] for r in fake_workers.requests[-2:])
    assert (cheap["model"], strong["model"]) == ("small", "large")
    for sent in (cheap, strong):
        assert sent["messages"] == [{"role": "user", "content": ORDER_MINIFIED}]
    assert cheap["logprobs"] is True and "logprobs" not in strong
    rows = logged_rows(gateway)  # the cheap attempt's and the answer's
    assert [r.model_served for r in rows] == ["small", "large"]
    assert all(r.token_policy == "lossless" and r.prompt_tokens_after_optimization
               < r.prompt_tokens_before_optimization for r in rows)


def test_refusals_and_truncation_escalate_without_logprobs(
    routed_gateway, fake_workers: FakeOpenAI
) -> None:
    fake_workers.models["small"].text = "I'm sorry, but I can't help with that."
    gateway = routed_gateway(**CASCADE)
    assert chat(gateway).headers["x-route-model"] == "large"
    fake_workers.models["small"].text = "Buenos"
    fake_workers.models["small"].finish_reason = "length"
    assert chat(gateway).headers["x-route-model"] == "large"


def test_a_substituted_request_is_judged_and_escalated_to_the_model_asked_for(
    routed_gateway, fake_workers: FakeOpenAI
) -> None:
    """With substitution and the cascade on, a request for an explicit model that the
    router moves down is judged like a routed one: a weak cheap answer goes to the model
    the caller asked for (never above it), a good one is kept, both logged as such."""
    gateway = routed_gateway(substitution_tenants=["*"], **CASCADE)
    fake_workers.models["small"].logprob = -2.0
    weak = post_chat(gateway, "large", EASY)
    assert weak.status_code == 200 and weak.headers["x-route-model"] == "large"
    reason = weak.headers["x-route-reason"]
    assert reason.startswith("substituted large: router")
    assert "cascade: escalated from small" in reason
    fake_workers.models["small"].logprob = -0.05
    good = post_chat(gateway, "large", EASY)
    assert good.headers["x-route-model"] == "small"
    assert "cascade: accepted" in good.headers["x-route-reason"]
    fake_workers.models["small"].logprob = -2.0
    medium = post_chat(gateway, "medium", EASY)  # escalated to medium, not to large
    assert medium.headers["x-route-model"] == "medium"
    assert "cascade: escalated from small" in medium.headers["x-route-reason"]
    assert (fake_workers.calls("small"), fake_workers.calls("medium"),
            fake_workers.calls("large")) == (3, 1, 1)
    decisions = [(r.model_requested, r.model_served, r.cascade_decision)
                 for r in logged_rows(gateway)]
    assert sorted(decisions, key=str) == sorted([
        ("large", "small", "cheap_attempt"), ("large", "large", "escalated"),
        ("large", "small", "accepted"), ("medium", "small", "cheap_attempt"),
        ("medium", "medium", "escalated")], key=str)


def test_a_substituted_stream_keeps_the_routers_guess(routed_gateway,
                                                      fake_workers: FakeOpenAI) -> None:
    gateway = routed_gateway(substitution_tenants=["*"], **CASCADE)
    fake_workers.models["small"].logprob = -2.0
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", timeout=30, json={
            "model": "large", "stream": True,
            "messages": [{"role": "user", "content": EASY}]}) as response:
        response.read()
    assert response.headers["x-route-model"] == "small"
    assert "cascade" not in response.headers["x-route-reason"]
    assert fake_workers.calls("large") == 0


def test_no_cascade_when_the_latency_limit_cannot_hold_two_calls(
    routed_gateway, fake_workers: FakeOpenAI
) -> None:
    fake_workers.models["small"].logprob = -2.0
    gateway = routed_gateway(**CASCADE)
    # within 2.2 s the strong choice is medium (large's SLO is 10 s): 0.5 + 2 s > 2.2 s
    response = chat(gateway, headers={"X-Max-Latency-Ms": "2200"})
    assert response.headers["x-route-model"] == "small"
    assert "no cascade: latency limit" in response.headers["x-route-reason"]
    assert fake_workers.calls("medium") == 0 and fake_workers.calls("large") == 0
    # within 5 s the cascade fits (small, then medium)
    response = chat(gateway, headers={"X-Max-Latency-Ms": "5000"})
    assert response.headers["x-route-model"] == "medium"
    assert "cascade: escalated from small" in response.headers["x-route-reason"]


def test_streaming_requests_use_the_router_not_the_cascade(
    routed_gateway, fake_workers: FakeOpenAI
) -> None:
    fake_workers.models["small"].logprob = -2.0
    gateway = routed_gateway(**CASCADE)
    response = chat(gateway, stream=True)
    assert response.headers["x-route-model"] == "small"
    assert "cascade" not in response.headers["x-route-reason"]
    assert fake_workers.calls("large") == 0


def test_answer_scores() -> None:
    sure = score_answer("Paris.", finish_reason="stop", token_logprobs=[-0.01, -0.02])
    hedged = score_answer("I'm not sure, it might be Lyon.", finish_reason="stop")
    assert sure.score > 0.95 and hedged.score < 0.5 and "hedging" in hedged.reasons
    split = score_answer("B", finish_reason="stop", samples=["C", "D"])
    agree = score_answer("B", finish_reason="stop", samples=["b.", "B"])
    assert split.score < agree.score
    assert score_answer("", finish_reason="stop").score == 0


def test_self_consistency_asks_for_extra_samples_and_escalates_when_they_disagree(
    routed_gateway, fake_workers: FakeOpenAI
) -> None:
    gateway = routed_gateway(cascade={"enabled": True, "threshold": 0.5, "self_consistency": 2})
    small = fake_workers.models["small"]
    small.logprob = -0.1  # confident tokens (score ~0.9 alone)
    agreeing = chat(gateway, temperature=0.7)
    assert fake_workers.requests[-1]["body"]["n"] == 3
    assert agreeing.headers["x-route-model"] == "small"
    assert len(agreeing.json()["choices"]) == 1  # the client asked for one
    small.other_samples = ["The answer is C.", "The answer is D."]
    disagreeing = chat(gateway, temperature=0.7)
    assert disagreeing.headers["x-route-model"] == "large"
    assert "self-consistency 0.00" in disagreeing.headers["x-route-reason"]


def test_the_judge_escalates_an_answer_whose_arithmetic_is_wrong(
    routed_gateway, fake_workers: FakeOpenAI
) -> None:
    from tests.routing.test_judge import PROBLEM, RIGHT, WRONG_SUM

    gateway = routed_gateway(cascade={"enabled": True})  # the judge's own threshold
    fake_workers.models["small"].text = RIGHT
    kept = chat(gateway, PROBLEM)
    assert kept.headers["x-route-model"] == "small"
    assert "cascade: accepted" in kept.headers["x-route-reason"]
    assert kept.json()["choices"][0]["message"]["content"] == RIGHT
    fake_workers.models["small"].text = WRONG_SUM
    escalated = chat(gateway, PROBLEM)
    assert escalated.headers["x-route-model"] == "large"
    assert "wrong arithmetic" in escalated.headers["x-route-reason"]
    rows = logged_rows(gateway)
    assert [(r.model_served, r.cascade_decision) for r in rows] == [
        ("small", "accepted"), ("small", "cheap_attempt"), ("large", "escalated")]
    assert rows[0].cascade_score > rows[2].cascade_score
    assert rows[0].cost_usd > 0  # the kept cheap answer is logged with its cost


def test_a_novel_prompt_is_deferred_to_the_cascade_or_sent_strong_without_one(
    routed_gateway, fake_workers: FakeOpenAI
) -> None:
    cascading = routed_gateway(**CASCADE)
    response = chat(cascading, NOVEL)
    assert "novel prompt" in response.headers["x-route-reason"]
    assert "deferred to the cascade" in response.headers["x-route-reason"]
    assert fake_workers.calls("small") == 1  # the cheap model answered first
    streamed = chat(cascading, NOVEL, stream=True)  # a stream cannot be judged
    assert streamed.headers["x-route-model"] == "large"
    assert "no cascade to judge" in streamed.headers["x-route-reason"]
    guessing = routed_gateway(defer_novel=False)
    response = chat(guessing, NOVEL)
    assert response.headers["x-route-model"] == "small"
    assert "novel" not in response.headers["x-route-reason"]


def test_models_say_what_the_virtual_names_promise(routed_gateway) -> None:
    cards = httpx.get(f"{routed_gateway(**CASCADE).url}/v1/models").json()["data"]
    described = {c["id"]: c.get("description") for c in cards}
    assert "95% of the powerful tier's accuracy" in described["auto"]
    assert "90%" in described["auto:cheap"] and "99%" in described["auto:quality"]
    assert "cheap answers are judged" in described["auto"]
    assert described["small"] is None
