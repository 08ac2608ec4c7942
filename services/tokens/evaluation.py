"""Offline evaluation of the token stages, for the ``token_optimization`` flow.

Samples come from a QA dataset (``question``, ``answers``, ``ctxs``: quality is answer
recall, exact and LLM-free), a prompt file (ShareGPT ``conversations``, or objects with
``messages``, as a prompt-template library is kept) or the prompts ``request_log`` kept
(only where prompt storage is on). ``evaluate`` reports tokens saved per stage;
``static_prefixes`` finds the system prompts and templates that recur, which the caching
layer can treat as cache-eligible prefixes.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from models import CacheablePrefix, RequestLog, TokenReport
from services.caching.prefix import cacheable_prefix_hash, leading_instructions
from services.tokens.counting import content_text, count_request
from services.tokens.optimizer import TokenOptimizer
from services.tokens.policy import Policy

Count = Callable[[str], int]
MAX_PREFIX_TENANTS = 64  # per cacheable_prefixes row: warming goes no further anyway
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant", "system": "system"}


@dataclass(slots=True)
class Sample:
    endpoint: str
    request: dict[str, Any]
    answers: list[str] | None = None
    kind: str = "system_prompt"  # what a recurring prefix of it is, for the prefix table
    tenant: str | None = None  # who sent it (stored prompts only)


@dataclass(slots=True)
class Evaluation:
    samples: int = 0
    tokens_before: int = 0
    tokens_after: int = 0
    stages: dict[str, int] = field(default_factory=dict)
    answered: int = 0  # samples whose answer was in the original prompt
    kept_answer: int = 0
    seconds: float = 0.0

    @property
    def reduction(self) -> float:
        return 1 - self.tokens_after / self.tokens_before if self.tokens_before else 0.0

    @property
    def quality(self) -> float | None:
        return self.kept_answer / self.answered if self.answered else None

    @property
    def ms_per_1k_tokens(self) -> float | None:
        if not self.tokens_before:
            return None
        return self.seconds * 1000 / (self.tokens_before / 1000)


def passage_text(ctx: dict[str, Any]) -> str:
    return f"{ctx['title']}\n{ctx['text']}"


def has_answer(text: str, answers: Sequence[str]) -> bool:
    low = text.lower()
    return any(a.lower() in low for a in answers)


def qa_samples(rows: Sequence[dict[str, Any]], *, distractors: int = 9, seed: int = 0
               ) -> list[Sample]:
    """Each question as a RAG chat: its gold passage among other rows' passages (none
    holding an answer) in the system message, the question as the last user turn."""
    rng = random.Random(seed)
    texts = [passage_text(r["ctxs"][0]) for r in rows]
    samples = []
    for i, row in enumerate(rows):
        usable = [j for j in range(len(rows)) if j != i
                  and not has_answer(texts[j], row["answers"])]
        passages = [texts[j] for j in rng.sample(usable, min(distractors, len(usable)))]
        passages.insert(rng.randrange(len(passages) + 1), texts[i])
        messages = [{"role": "system", "content": "Answer from these documents.\n\n"
                     + "\n\n".join(passages)},
                    {"role": "user", "content": row["question"]}]
        samples.append(Sample("chat.completions", {"messages": messages},
                              list(row["answers"]), kind="document"))
    return samples


def prompt_samples(items: Iterable[dict[str, Any]], *, kind: str = "template") -> list[Sample]:
    """Chats from ShareGPT records (``conversations``) or ``{"messages": [...]}`` objects
    (a prompt-template library)."""
    samples = []
    for item in items:
        if "messages" in item:
            messages = item["messages"]
        else:
            messages = [{"role": _SHAREGPT_ROLES.get(t.get("from", ""), "user"),
                         "content": t.get("value", "")} for t in item.get("conversations", [])]
        if messages:
            samples.append(Sample("chat.completions", {"messages": messages}, kind=kind))
    return samples


def stored_samples(engine: Engine, since: datetime, limit: int = 1000) -> list[Sample]:
    """Recent prompts from ``request_log`` (present only when prompt storage is on)."""
    query = (select(RequestLog.endpoint, RequestLog.prompt_text, RequestLog.tenant)
             .where(RequestLog.created_at >= since, RequestLog.prompt_text.is_not(None))
             .order_by(RequestLog.created_at.desc()).limit(limit))
    samples = []
    with engine.connect() as conn:
        for endpoint, text, tenant in conn.execute(query):
            value = orjson.loads(text)
            key = "messages" if endpoint == "chat.completions" else "prompt"
            samples.append(Sample(endpoint, {key: value}, tenant=tenant))
    return samples


def evaluate(samples: Sequence[Sample], policy: Policy, count: Count,
             optimizer: TokenOptimizer | None = None) -> Evaluation:
    optimizer = optimizer or TokenOptimizer()
    result = Evaluation()
    stages: Counter[str] = Counter()
    for sample in samples:
        began = time.perf_counter()
        optimized = optimizer.optimize(sample.endpoint, sample.request, policy, count)
        result.seconds += time.perf_counter() - began
        result.samples += 1
        result.tokens_before += optimized.tokens_before
        result.tokens_after += optimized.tokens_after
        for stage in optimized.stages:
            stages[stage.stage] += stage.saved
        if sample.answers and has_answer(_text(sample.request), sample.answers):
            result.answered += 1
            result.kept_answer += has_answer(_text(optimized.request), sample.answers)
    result.stages = dict(stages)
    return result


def _text(request: dict[str, Any]) -> str:
    if "messages" in request:
        return "\n".join(content_text(m.get("content")) for m in request["messages"])
    prompt = request.get("prompt")
    return prompt if isinstance(prompt, str) else ""


@dataclass(frozen=True, slots=True)
class Prefix:
    prefix_hash: str
    kind: str
    tokens: int
    occurrences: int
    text: str
    messages: list[dict[str, Any]]  # as requests send them: warming replays them as-is
    tenants: list[str] = field(default_factory=list)  # who sent it, most frequent first


def static_prefixes(samples: Sequence[Sample], count: Count, *, min_occurrences: int = 2,
                    min_tokens: int = 32) -> list[Prefix]:
    """Leading system/developer messages that recur across samples and are long enough
    for a prefix cache to pay."""
    seen: dict[str, list[Any]] = defaultdict(list)
    kinds: dict[str, str] = {}
    tenants: dict[str, Counter[str]] = defaultdict(Counter)
    for sample in samples:
        lead = leading_instructions(sample.request.get("messages"))
        if not lead:
            continue
        key = cacheable_prefix_hash(lead)
        seen[key].append(lead)
        kinds[key] = sample.kind
        if sample.tenant is not None:
            tenants[key][sample.tenant] += 1
    prefixes = []
    for key, leads in seen.items():
        text = "\n\n".join(content_text(m.get("content")) for m in leads[0])
        tokens = count_request("chat.completions", {"messages": leads[0]}, count)
        if len(leads) >= min_occurrences and tokens >= min_tokens:
            senders = [t for t, _ in sorted(tenants[key].items(),
                                            key=lambda item: (-item[1], item[0]))]
            prefixes.append(Prefix(key, kinds[key], tokens, len(leads), text, leads[0],
                                   senders[:MAX_PREFIX_TENANTS]))
    return sorted(prefixes, key=lambda p: -p.occurrences * p.tokens)


def write_report(engine: Engine, *, source: str, policy: Policy, encoding: str,
                 evaluation: Evaluation) -> int:
    before = evaluation.tokens_before or 1
    stages = {name: {"tokens_saved": saved, "share": round(saved / before, 4)}
              for name, saved in evaluation.stages.items()}
    row = TokenReport(source=source, policy=str(policy), encoding=encoding,
                      samples=evaluation.samples, tokens_before=evaluation.tokens_before,
                      tokens_after=evaluation.tokens_after, reduction=evaluation.reduction,
                      quality=evaluation.quality, stages=stages,
                      ms_per_1k_tokens=evaluation.ms_per_1k_tokens)
    with Session(engine) as session, session.begin():
        session.add(row)
        session.flush()
        return row.id


def forget_stale_prefixes(engine: Engine, before: datetime) -> int:
    """Drop the ``cacheable_prefixes`` rows no run has marked since ``before``: traffic
    stopped sending them, so warming them (or keeping them intact) no longer pays."""
    with Session(engine) as session, session.begin():
        result = session.execute(delete(CacheablePrefix)
                                 .where(CacheablePrefix.marked_at < before))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def mark_cacheable(engine: Engine, prefixes: Sequence[Prefix], *, store_text: bool) -> int:
    """Upsert the prefixes into ``cacheable_prefixes`` (occurrences are the latest run's);
    their text and messages only when prompts may be stored."""
    with Session(engine) as session, session.begin():
        for prefix in prefixes:
            session.merge(CacheablePrefix(
                prefix_hash=prefix.prefix_hash, kind=prefix.kind, tokens=prefix.tokens,
                occurrences=prefix.occurrences, text=prefix.text if store_text else None,
                messages=prefix.messages if store_text else None,
                tenants=prefix.tenants or None, marked_at=datetime.now(UTC)))
    return len(prefixes)
