"""Static prefixes: what repeats across requests keys prefix-affinity routing."""

from services.caching.prefix import static_prefix_key

SYSTEM = {"role": "system", "content": "You are a support bot for ACME. " * 20}


def chat(*messages, **extra):
    return {"messages": list(messages), **extra}


def test_requests_sharing_a_system_prompt_share_a_prefix() -> None:
    a = static_prefix_key("chat.completions", "m", chat(SYSTEM, {"role": "user", "content": "a"}))
    b = static_prefix_key("chat.completions", "m", chat(SYSTEM, {"role": "user", "content": "b"}))
    assert a is not None and a == b
    assert static_prefix_key("chat.completions", "other-model",
                             chat(SYSTEM, {"role": "user", "content": "a"})) != a


def test_a_lone_user_turn_has_no_prefix() -> None:
    assert static_prefix_key("chat.completions", "m",
                             chat({"role": "user", "content": "hi"})) is None
    tools = chat({"role": "user", "content": "hi"}, tools=[{"type": "function"}])
    assert static_prefix_key("chat.completions", "m", tools) is not None


def test_long_completion_prompts_share_their_leading_part() -> None:
    document = "lorem ipsum " * 200
    a = static_prefix_key("completions", "m", {"prompt": document + "Question one?"})
    b = static_prefix_key("completions", "m", {"prompt": document + "Question two?"})
    assert a is not None and a == b
    assert static_prefix_key("completions", "m", {"prompt": "short"}) is None
