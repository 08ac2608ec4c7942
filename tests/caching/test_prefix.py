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

