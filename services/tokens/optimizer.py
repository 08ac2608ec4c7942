"""Runs the token stages over one OpenAI request and measures each.

A request's text lives in *slots*: each message's string content or text part (chat), or
the prompt string (completions). The last user message (for a completion prompt: its
last paragraph, the question) is frozen: lossless stages may tidy its inside (minify
pasted JSON, say) but keep its leading and trailing whitespace, and no stage removes
anything from it. The request is copied, never changed in place.

Stages, in order, each measured with the target model's counter:
``layout``, ``json``, ``xml``, ``dedupe`` (lossless), then for ``budget``/``ratio``
policies ``context`` (query-aware extraction from long system/context messages) and
``history`` (oldest turns dropped, summarised extractively), until the target is met.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.tokens import extractive, lossless, segments
from services.tokens.counting import content_text, count_request
from services.tokens.policy import Policy
from services.tokens.relevance import Embed

Count = Callable[[str], int]
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")
_CONTEXT_ROLES = frozenset({"system", "developer", "tool", "function", "context"})
SUMMARY_PREFIX = "Summary of earlier conversation (extracted): "


@dataclass(slots=True)
class _Slot:
    message: int | None  # index in messages; None for a completion prompt
    part: int | None  # index in a content list, None for string content
    role: str
    text: str
    frozen: bool


@dataclass(slots=True)
class StageSaving:
    stage: str
    tokens_before: int
    tokens_after: int

    @property
    def saved(self) -> int:
        return self.tokens_before - self.tokens_after


@dataclass(slots=True)
class Optimized:
    request: dict[str, Any]
    tokens_before: int
    tokens_after: int
    stages: list[StageSaving] = field(default_factory=list)

    @property
    def saved(self) -> int:
        return self.tokens_before - self.tokens_after


class TokenOptimizer:
    """Holds the stage settings; ``optimize`` is pure and thread-safe."""

    def __init__(self, *, embed: Embed | None = None, min_context_tokens: int = 64,
                 summary_share: float = 0.1) -> None:
        self._embed = embed
        self._min_context_tokens = min_context_tokens
        self._summary_share = summary_share

    def optimize(self, endpoint: str, request: dict[str, Any], policy: Policy,
                 count: Count, *, keep_leading: int = 0) -> Optimized:
        """``keep_leading``: the first messages go upstream exactly as written, whatever
        the policy (a prefix the upstream caches: rewriting it would save next to
        nothing and cost every later request its cache hit)."""
        if policy.mode == "off":
            before = count_request(endpoint, request, count)
            return Optimized(request, before, before)
        count = _memoised(count)  # stages recount the whole prompt; most of it is unchanged
        before = count_request(endpoint, request, count)
        work = copy.deepcopy(request)
        slots = _slots(endpoint, work, keep_leading)
        result = Optimized(work, before, before)
        free_stages: list[tuple[str, Callable[[str], str]]] = [
            ("layout", lossless.layout),
            ("json", lambda t: lossless.json_blocks(t, count)),
            ("xml", lambda t: lossless.xml_document(t, count)),
        ]
        for name, rewrite in free_stages:
            for slot in slots:
                rewritten = segments.map_free(slot.text, rewrite)
                slot.text = _same_edges(slot.text, rewritten) if slot.frozen else rewritten
            self._measure(result, name, endpoint, work, slots, count)
        deduped = lossless.dedupe([s.text for s in slots], [s.frozen for s in slots])
        for slot, text in zip(slots, deduped, strict=True):
            slot.text = text
        self._measure(result, "dedupe", endpoint, work, slots, count)
        target = policy.target(before)
        if target is not None and result.tokens_after > target:
            self._compress_context(slots, target, result.tokens_after, count)
            self._measure(result, "context", endpoint, work, slots, count)
        if target is not None and result.tokens_after > target and endpoint == (
                "chat.completions"):
            work["messages"] = self._window_history(work["messages"], slots, target,
                                                    endpoint, count, keep_leading)
            slots = _slots(endpoint, work, keep_leading)
            self._measure(result, "history", endpoint, work, slots, count)
        return result

    def _measure(self, result: Optimized, stage: str, endpoint: str, work: dict[str, Any],
                 slots: list[_Slot], count: Count) -> None:
        _write_back(endpoint, work, slots)
        tokens = count_request(endpoint, work, count)
        result.stages.append(StageSaving(stage, result.tokens_after, tokens))
        result.tokens_after = tokens

    def _compress_context(self, slots: list[_Slot], target: int, current: int,
                          count: Count) -> None:
        """Cut the long context slots (system prompts, documents, tool results) so the
        prompt meets ``target``. When earlier turns exist they share the cut: the
        context keeps its share of the room left, and at least half of it; the history
        stage then fits the turns into the rest."""
        question = " ".join(s.text for s in slots if s.frozen and s.role == "user") or \
            " ".join(s.text for s in slots if s.frozen)
        sizes = {id(s): count(s.text) for s in slots if not s.frozen}
        context = [s for s in slots if not s.frozen and s.role in _CONTEXT_ROLES
                   and sizes[id(s)] >= self._min_context_tokens]
        history = sum(sizes[id(s)] for s in slots if not s.frozen and s.role in ("user",
                                                                                "assistant"))
        total = sum(sizes[id(s)] for s in context)
        if not context:
            return
        room = max(1, target - (current - total - history))
        share = room * total / (total + history) if history else room
        if history:
            share = max(share, min(total, room / 2))
        for slot in context:
            size = sizes[id(slot)]
            budget = max(1, int(share * size / total))
            if budget < size:
                slot.text = extractive.compress(slot.text, question, budget, count,
                                                embed=self._embed)

    def _window_history(self, messages: list[dict[str, Any]], slots: list[_Slot],
                        target: int, endpoint: str, count: Count, keep_leading: int
                        ) -> list[dict[str, Any]]:
        """Drop the oldest turns (never system messages or the last user message) until
        the prompt fits, and put back a budgeted extractive summary of what was dropped,
        chosen for relevance to the last user message.

        A turn goes with the tool results that answer its tool calls (an orphaned tool
        message is an invalid request), and only turns before the last user message are
        dropped. The summary joins the first system message (a second system message or
        two user messages in a row break some chat templates) unless it is one of the
        ``keep_leading`` messages, else the first remaining earlier user message; with
        neither, there is no summary."""
        frozen = {s.message for s in slots if s.frozen}
        question = " ".join(s.text for s in slots if s.frozen)
        last = max(frozen - {None}, default=len(messages))
        groups: list[list[int]] = []
        for i, message in enumerate(messages[:last]):
            role = message.get("role")
            if role in ("system", "developer"):
                continue
            if role == "tool" and groups and groups[-1][-1] == i - 1:
                groups[-1].append(i)
            else:
                groups.append([i])
        dropped: set[int] = set()
        kept = list(messages)
        summary_budget = max(0, round(target * self._summary_share))
        while groups and count_request(endpoint, {"messages": kept}, count) + (
                summary_budget if dropped else 0) > target:
            dropped.update(groups.pop(0))
            kept = [m for i, m in enumerate(messages) if i not in dropped]
        if not dropped:
            return messages
        removed = "\n\n".join(content_text(messages[i].get("content")) for i in sorted(dropped))
        room = target - count_request(endpoint, {"messages": kept}, count) - 8
        summary = extractive.compress(removed, question, room, count) if room > 0 else ""
        # the leading messages are never dropped, so their indexes hold in ``kept``
        host = next((i for i, m in enumerate(kept) if m.get("role") == "system"
                     and isinstance(m.get("content"), str) and i >= keep_leading), None)
        if host is None:
            host = next((i for i, m in enumerate(kept[: last - len(dropped)])
                         if m.get("role") == "user" and isinstance(m.get("content"), str)),
                        None)
        if not summary.strip() or host is None:
            return kept
        note = SUMMARY_PREFIX + summary
        content = kept[host]["content"]
        kept[host] = {**kept[host], "content": f"{content}\n\n{note}" if kept[host].get(
            "role") == "system" else f"{note}\n\n{content}"}
        return kept


def _same_edges(original: str, rewritten: str) -> str:
    """The rewrite with the original's leading and trailing whitespace: the end of the
    last user message is where the model continues (``"A: "`` and ``"A:"`` differ)."""
    core = rewritten.strip()
    if not core:
        return original
    lead = original[: len(original) - len(original.lstrip())]
    trail = original[len(original.rstrip()):]
    return lead + core + trail


def _memoised(count: Count) -> Count:
    seen: dict[str, int] = {}

    def counted(text: str) -> int:
        tokens = seen.get(text)
        if tokens is None:
            tokens = seen[text] = count(text)
        return tokens

    return counted


def _slots(endpoint: str, request: dict[str, Any], keep_leading: int = 0) -> list[_Slot]:
    """The text slots the stages may rewrite: all but the first ``keep_leading``
    messages' (a completion prompt has no messages to keep)."""
    if endpoint != "chat.completions":
        prompt = request.get("prompt")
        if not isinstance(prompt, str):
            return []
        breaks = [m for m in _PARAGRAPH_BREAK.finditer(prompt) if prompt[m.end():].strip()]
        split = breaks[-1] if breaks else None
        if split is None:
            return [_Slot(None, None, "user", prompt, True)]
        return [_Slot(None, 0, "context", prompt[: split.start()], False),
                _Slot(None, 1, "separator", split.group(0), True),
                _Slot(None, 2, "user", prompt[split.end():], True)]
    messages = request.get("messages") or []
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"),
                    default=None)
    slots = []
    for i, message in enumerate(messages):
        if i < keep_leading:
            continue
        role, content = str(message.get("role", "")), message.get("content")
        if isinstance(content, str):
            slots.append(_Slot(i, None, role, content, i == last_user))
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(
                        part.get("text"), str):
                    slots.append(_Slot(i, j, role, part["text"], i == last_user))
    return slots


def _write_back(endpoint: str, request: dict[str, Any], slots: list[_Slot]) -> None:
    if endpoint != "chat.completions":
        if slots:
            request["prompt"] = "".join(s.text for s in slots)
        return
    messages = request["messages"]
    for slot in slots:
        assert slot.message is not None
        if slot.part is None:
            messages[slot.message]["content"] = slot.text
        else:
            messages[slot.message]["content"][slot.part]["text"] = slot.text
