"""Replaying a prompt workload through the gateway, as real clients would.

Workloads are ShareGPT-format JSON (a list of ``{"conversations": [{"from": "human",
"value": ...}, ...]}``), the format of the shipped demo prompts and of public traces, so
the same loader runs the small demo and bigger runs on other files.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

DEMO_PROMPTS = Path(__file__).with_name("prompts.json")


def load_prompts(path: Path, limit: int | None = None) -> list[str]:
    """First human turn of each conversation, in file order."""
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON list of ShareGPT records")
    prompts: list[str] = []
    for record in records:
        turns = record.get("conversations") if isinstance(record, dict) else None
        if not turns:
            continue
        first = next((t for t in turns if t.get("from") in ("human", "user")), turns[0])
        text = str(first.get("value", "")).strip()
        if text:
            prompts.append(text)
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


@dataclass
class ReplayResult:
    sent: int
    ok: int
    failed: int
    wall_s: float
    errors: list[str]


async def replay(
    base_url: str,
    model: str,
    prompts: list[str],
    *,
    api_key: str | None = None,
    concurrency: int = 8,
    max_tokens: int = 64,
    chat: bool = False,
    on_done: Callable[[bool], None] | None = None,
) -> ReplayResult:
    """Send every prompt as a streaming request, ``concurrency`` at a time.

    Streams are used so the store records real time-to-first-token. With ``chat`` false
    the prompt goes to ``/v1/completions`` in a question/answer frame, which a base
    model (the demo's Gemma 3 270M) continues readably.
    """
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    semaphore = asyncio.Semaphore(concurrency)
    errors: list[str] = []
    ok = 0

    async def one(client: httpx.AsyncClient, prompt: str) -> None:
        nonlocal ok
        if chat:
            path = "/v1/chat/completions"
            body: dict[str, object] = {"messages": [{"role": "user", "content": prompt}]}
        else:
            path = "/v1/completions"
            body = {"prompt": f"Question: {prompt}\nAnswer:"}
        body.update(model=model, max_tokens=max_tokens, temperature=0, stream=True)
        async with semaphore:
            success = False
            try:
                async with client.stream("POST", path, json=body, headers=headers) as response:
                    text = ""
                    async for line in response.aiter_lines():
                        text = line or text
                        if '"error"' in line:
                            errors.append(line[:300])
                            break
                    success = response.status_code == 200 and text.strip() == "data: [DONE]"
                    if response.status_code != 200:
                        errors.append(f"HTTP {response.status_code}")
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            ok += success
            if on_done is not None:
                on_done(success)

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        await asyncio.gather(*(one(client, p) for p in prompts))
    wall = time.perf_counter() - start
    return ReplayResult(len(prompts), ok, len(prompts) - ok, wall, errors)
