"""The prompt as the router reads it: the text of an OpenAI request, and its size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def prompt_text(request: Mapping[str, Any], endpoint: str) -> str:
    """The text of the prompt the router reads: every message's text, in order."""
    if endpoint != "chat.completions":
        prompt = request.get("prompt", "")
        return prompt if isinstance(prompt, str) else "\n".join(map(str, prompt))
    parts = []
    for message in request.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return "\n".join(parts)


def estimate_tokens(text: str) -> int:
    """About four characters a token (English, GPT-style tokenizers); no tokenizer call."""
    return len(text) // 4 + 1
