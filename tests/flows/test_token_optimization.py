"""The token optimisation flow under Prefect's test harness: a QA dataset gives reduction
and answer recall per stage; recurring system prompts become cache-eligible prefixes;
stored traffic is read where prompts are kept."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy import select

from models import CacheablePrefix, RequestLog, TokenReport
from services.tokens import Policy, text_counter
from services.tokens.evaluation import evaluate, prompt_samples, qa_samples, static_prefixes

SYSTEM = ("You are the support assistant of Acme Hardware. Answer in two sentences, cite the "
          "order number, never promise refunds, escalate safety issues to a human agent.")


def qa_rows(n: int = 12) -> list[dict]:
    rows = []
    for i in range(n):
        rows.append({"question": f"who founded company {i}",
                     "answers": [f"Founder{i} Smith"],
                     "ctxs": [{"title": f"Company {i}",
                               "text": f"Company {i} was founded by Founder{i} Smith in "
                                       f"{1900 + i}. It makes tools.   It has   offices."}]})
    return rows


def test_evaluation_measures_reduction_and_answer_recall() -> None:
    samples = qa_samples(qa_rows(), distractors=5)
    count = text_counter()
    lossless = evaluate(samples, Policy.parse("lossless"), count)
    assert lossless.quality == 1.0 and lossless.stages.get("layout", 0) > 0
    lossy = evaluate(samples, Policy.parse("ratio=3"), count)
    # query-aware extraction keeps the sentence that answers the question: every answer
    # survives a 3x cut of these contexts (each holds one answer among 5 distractors)
    assert lossy.reduction > 0.5 and lossy.quality == 1.0
    assert lossy.tokens_after < lossless.tokens_after


def test_only_recurring_long_system_prompts_are_static_prefixes() -> None:
    chats = [{"messages": [{"role": "system", "content": SYSTEM},
                           {"role": "user", "content": f"Where is order {i}?"}]} for i in range(3)]
    chats.append({"messages": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "hi"}]})
    chats.append({"messages": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "yo"}]})
    prefixes = static_prefixes(prompt_samples(chats), text_counter())
    assert [(p.occurrences, p.kind) for p in prefixes] == [(3, "template")]
    # the messages themselves are kept: warming replays them so the token prefix matches
    assert prefixes[0].messages == [{"role": "system", "content": SYSTEM}]


def test_flow_reports_per_stage_and_marks_prefixes(store, prefect_harness, tmp_path) -> None:
    from flows.token_optimization import token_optimization

    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in qa_rows()))
    result = token_optimization(source=str(data), policy="ratio=2")
    assert result["samples"] == 12 and result["reduction"] > 0.3
    with store.connect() as conn:
        report = conn.execute(select(TokenReport)).one()
    assert report.policy == "ratio=2" and report.quality == 1.0 == result["quality"]
    assert report.stages["context"]["tokens_saved"] > 0
    assert report.tokens_after < report.tokens_before

    # recent traffic, as request_log keeps it when prompt storage is on
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello"}]
    with store.begin() as conn:
        conn.execute(RequestLog.__table__.insert(), [
            {"id": f"req-{uuid.uuid4().hex}", "created_at": datetime.now(UTC),
             "tenant": tenant, "endpoint": "chat.completions", "status_code": 200,
             "prompt_text": orjson.dumps(messages).decode()} for tenant in ("t", "u", "u")])
    with store.begin() as conn:  # a prefix traffic stopped sending a month ago
        conn.execute(CacheablePrefix.__table__.insert(), [{
            "prefix_hash": "0" * 64, "kind": "system_prompt", "tokens": 100,
            "occurrences": 50, "marked_at": datetime.now(UTC) - timedelta(days=30)}])
    recent = token_optimization(source="recent", policy="lossless")
    assert recent["samples"] == 3 and recent["prefixes_marked"] == 1
    assert recent["prefixes_forgotten"] == 1
    with store.connect() as conn:
        prefix = conn.execute(select(CacheablePrefix)).one()
    assert prefix.occurrences == 3 and prefix.text is None  # prompts not stored by default
    assert prefix.messages is None
    assert prefix.tenants == ["u", "t"]  # who sent it, most frequent first (warming's order)
