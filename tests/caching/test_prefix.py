"""Static prefixes: what repeats across requests keys prefix-affinity routing."""

from services.caching.prefix import static_prefix_key

SYSTEM = {"role": "system", "content": "You are a support bot for ACME. " * 20}


def chat(*messages, **extra):
    return {"messages": list(messages), **extra}


def test_requests_sharing_a_system_prompt_share_a_prefix() -> None:
    a = static_prefix_key("chat.completions", "m", chat(SYSTEM, {"role": "user", "content": "a"}))
    b = static_prefix_key("chat.completions", "m", chat(SYSTEM, {"role": "user", "content": "b"}))
    assert a is not None and a == b
    assert (
        static_prefix_key(
            "chat.completions", "other-model", chat(SYSTEM, {"role": "user", "content": "a"})
        )
        != a
    )


def test_a_lone_user_turn_has_no_prefix() -> None:
    assert (
        static_prefix_key("chat.completions", "m", chat({"role": "user", "content": "hi"})) is None
    )
    tools = chat({"role": "user", "content": "hi"}, tools=[{"type": "function"}])
    assert static_prefix_key("chat.completions", "m", tools) is not None


def test_a_conversation_keeps_its_prefix_from_turn_to_turn() -> None:
    turn1 = [SYSTEM, {"role": "user", "content": "my order is late"}]
    turn2 = turn1 + [
        {"role": "assistant", "content": "Which order?"},
        {"role": "user", "content": "number 42"},
    ]
    assert static_prefix_key("chat.completions", "m", chat(*turn2)) == static_prefix_key(
        "chat.completions", "m", chat(*turn1)
    )
    # without a system prompt the conversation's first message keys it
    bare1 = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
             {"role": "user", "content": "tell me more"}]
    bare2 = bare1 + [{"role": "assistant", "content": "sure"}, {"role": "user", "content": "ok"}]
    other = [{"role": "user", "content": "bonjour"}] + bare1[1:]
    key = static_prefix_key("chat.completions", "m", chat(*bare1))
    assert key is not None
    assert key == static_prefix_key("chat.completions", "m", chat(*bare2))
    assert key != static_prefix_key("chat.completions", "m", chat(*other))


def test_long_completion_prompts_share_their_leading_part() -> None:
    document = "lorem ipsum " * 200
    a = static_prefix_key("completions", "m", {"prompt": document + "Question one?"})
    b = static_prefix_key("completions", "m", {"prompt": document + "Question two?"})
    assert a is not None and a == b
    assert static_prefix_key("completions", "m", {"prompt": "short"}) is None


def test_anthropic_breakpoint_goes_after_the_static_prefix() -> None:
    from services.caching.prefix import place_anthropic_breakpoint

    body = {
        "system": "Policy manual. " * 400,
        "messages": [
            {"role": "user", "content": "earlier question"},
            {"role": "assistant", "content": "earlier answer"},
            {"role": "user", "content": "the new question"},
        ],
    }
    assert place_anthropic_breakpoint(body)
    assert body["messages"][1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["messages"][2]["content"] == "the new question"  # the live turn is untouched
    assert "cache_control" not in body["system"][0]


def test_no_breakpoint_for_short_prefixes_or_when_markers_are_used_up() -> None:
    from services.caching.prefix import place_anthropic_breakpoint

    short = {"system": "Be brief.", "messages": [{"role": "user", "content": "hi"}]}
    assert not place_anthropic_breakpoint(short)
    marked = [{"type": "text", "text": "x" * 2000, "cache_control": {"type": "ephemeral"}}] * 4
    full = {"system": marked, "messages": [{"role": "user", "content": "q"}]}
    assert not place_anthropic_breakpoint(full)
