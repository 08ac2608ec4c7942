"""Lossy stages: never over budget, original order, code and numbers the question asks
about kept, the last user message never touched, history summarised."""

from __future__ import annotations

import hashlib

from services.tokens import Policy, TokenOptimizer, compress, text_counter
from services.tokens.optimizer import SUMMARY_PREFIX

count = text_counter()

FILLER = [
    "The museum opened a new wing dedicated to modern sculpture last spring.",
    "Visitors praised the lighting design and the quiet reading rooms upstairs.",
    "A cafe on the ground floor serves coffee, tea and small pastries all day.",
    "Guided tours in several languages leave from the main hall every hour.",
    "The gift shop sells prints, books and postcards of the permanent collection.",
]


def document(answer_sentence: str, copies: int = 6) -> str:
    paragraphs = [" ".join(FILLER) for _ in range(copies)]
    paragraphs.insert(copies // 2, f"Bridge history. {answer_sentence} It is painted red.")
    return "\n\n".join(paragraphs)


def test_relevant_passage_kept_under_budget_in_original_order() -> None:
    text = document("The Golden Gate Bridge opened to traffic in May 1937.")
    out = compress(text, "When did the Golden Gate Bridge open?", 60, count)
    assert count(out) <= 60
    assert "opened to traffic in May 1937" in out
    kept = [s for s in out.replace("\n\n", " ").split(". ") if s]
    positions = [text.index(s) for s in kept]
    assert positions == sorted(positions)


def test_sentence_with_a_number_the_question_mentions_is_kept() -> None:
    # the number sentence shares no other word with the question
    text = document("Repainting finished in 1995 after twelve seasons.")
    text += "\n\nFrom 1995 onwards the toll plaza was automated."
    out = compress(text, "What happened to the span in 1995?", 50, count)
    assert "1995" in out and count(out) <= 50


def test_code_blocks_survive_lossy_compression_byte_identical() -> None:
    code = "```sql\nSELECT  *\n  FROM orders   WHERE id = 7;\n```"
    text = document("Nothing relevant here.") + "\n\n" + code + "\n\n" + document("More.")
    out = compress(text, "Which table is queried?", 80, count)
    assert code in out


def test_keep_marked_text_is_never_dropped() -> None:
    kept = "<!-- keep -->Always answer in French.<!-- /keep -->"
    out = compress(kept + "\n\n" + document("Unrelated."), "Tell me about tours", 60, count)
    assert kept in out


def chat(system: str, turns: int = 0) -> dict:
    messages = [{"role": "system", "content": system}]
    for i in range(turns):
        messages += [{"role": "user", "content": f"Question {i}: " + FILLER[i % 5] * 3},
                     {"role": "assistant", "content": f"Answer {i}: " + FILLER[(i + 1) % 5] * 3}]
    messages.append({"role": "user", "content": "When did the bridge open? Answer   briefly. "})
    return {"model": "gpt-4o-mini", "messages": messages}


def test_budget_policy_meets_target_and_never_touches_the_last_user_message() -> None:
    request = chat(document("The bridge opened to traffic in May 1937."), turns=6)
    snapshot = hashlib.sha256(repr(request).encode()).hexdigest()
    result = TokenOptimizer().optimize("chat.completions", request, Policy.parse("budget=200"),
                                       count)
    assert hashlib.sha256(repr(request).encode()).hexdigest() == snapshot  # not in place
    assert result.tokens_after <= 200 < result.tokens_before
    last = result.request["messages"][-1]
    assert last == {"role": "user", "content": "When did the bridge open? Answer briefly. "}
    assert "May 1937" in result.request["messages"][0]["content"]


def test_history_window_summarises_dropped_turns() -> None:
    request = chat("Be brief.", turns=12)
    result = TokenOptimizer().optimize("chat.completions", request, Policy.parse("ratio=3"),
                                       count)
    stages = {s.stage: s.saved for s in result.stages}
    assert stages["history"] > 0 and result.tokens_after <= result.tokens_before / 3
    messages = result.request["messages"]
    assert messages[0]["role"] == "system"  # the summary joins it: still one system message
    assert messages[0]["content"].startswith("Be brief.\n\n" + SUMMARY_PREFIX)
    assert [m["role"] for m in messages].count("system") == 1
    assert messages[-1]["content"].startswith("When did the bridge open?")


def test_a_turn_is_dropped_with_its_tool_results() -> None:
    messages = [{"role": "system", "content": "Use tools."}]
    for i in range(6):
        messages += [
            {"role": "user", "content": f"Look up item {i}. " + FILLER[i % 5] * 2},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": f"c{i}", "type": "function",
                             "function": {"name": "lookup", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": FILLER[(i + 2) % 5] * 2},
            {"role": "assistant", "content": f"Item {i} found."},
        ]
    messages.append({"role": "user", "content": "Which items did you find?"})
    result = TokenOptimizer().optimize("chat.completions", {"messages": messages},
                                       Policy.parse("ratio=2"), count)
    kept = result.request["messages"]
    calls = {c["id"] for m in kept for c in m.get("tool_calls") or []}
    assert all(m["tool_call_id"] in calls for m in kept if m["role"] == "tool")
    assert len(kept) < len(messages) and kept[-1] == messages[-1]


def test_off_returns_the_same_object_and_lossless_keeps_meaning() -> None:
    request = chat("Data:\n\n\n\n[\n  {\"a\": 1, \"b\": 2},\n  {\"a\": 3, \"b\": 4}\n]")
    off = TokenOptimizer().optimize("chat.completions", request, Policy.parse("off"), count)
    assert off.request is request and off.saved == 0
    lossless = TokenOptimizer().optimize("chat.completions", request,
                                         Policy.parse("lossless"), count)
    assert lossless.saved > 0
    assert "\n\n\n" not in lossless.request["messages"][0]["content"]


def test_completion_prompt_keeps_its_question() -> None:
    prompt = document("The bridge opened in May 1937.") + "\n\nQ: When did the bridge open?\nA:"
    result = TokenOptimizer().optimize("completions", {"model": "gpt-3.5-turbo-instruct",
                                                        "prompt": prompt},
                                       Policy.parse("ratio=4"), count)
    out = result.request["prompt"]
    assert out.endswith("\n\nQ: When did the bridge open?\nA:") and "May 1937" in out
    assert result.tokens_after <= result.tokens_before / 4


def test_kept_leading_messages_go_upstream_as_written() -> None:
    system = "You   answer questions about the museum.\n\n\n\n" + document(
        "The bridge opened to traffic in May 1937.", copies=2)
    request = chat(system, turns=16)
    full = TokenOptimizer().optimize("chat.completions", request, Policy.parse("ratio=3"),
                                     count)
    assert full.request["messages"][0]["content"] != system  # compressed without the keep
    kept = TokenOptimizer().optimize("chat.completions", request, Policy.parse("ratio=3"),
                                     count, keep_leading=1)
    messages = kept.request["messages"]
    assert messages[0] == {"role": "system", "content": system}  # byte for byte
    assert kept.saved > 0  # the rest is still cut: turns dropped and summarised
    summary_host = next(m for m in messages if SUMMARY_PREFIX in str(m["content"]))
    assert summary_host["role"] == "user"  # not spliced into the kept system prompt
    assert messages[-1]["content"].startswith("When did the bridge open?")
    assert [m["role"] for m in messages].count("system") == 1
