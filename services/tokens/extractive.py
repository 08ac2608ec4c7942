"""Query-aware extractive compression: keep the most relevant passages and sentences of a
context under a token budget, in their original order, word for word.

Two levels, because each fails where the other works: whole passages keep an answer
together with the sentence that names its subject (a sentence alone may say "It was
founded in 1886"), but a budget of a passage or two leaves no room for a second
candidate. So the best passages are taken whole while they fit, and what is left of the
budget is filled with the best sentences of the other passages, each scored by its own
relevance plus its passage's.

Never dropped: protected segments (code blocks, ``<!-- keep -->`` regions). Taken first,
while they fit in half the budget: sentences carrying a number the question mentions
(a question about "the 1998 final" needs the sentence with 1998 even when its words
score low). Never changed: anything kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.tokens import segments
from services.tokens.lossless import Count
from services.tokens.relevance import Embed, relevance

_PASSAGE_BREAK = re.compile(r"\n[ \t]*\n+")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_NUMBER = re.compile(r"\d+(?:[.,:/-]\d+)*")


@dataclass(slots=True)
class _Unit:
    passage: int  # index of the passage it belongs to
    order: int  # position in the original text
    text: str
    score: float
    mandatory: bool
    pinned: bool = False
    tokens: int = 0


def passages(text: str) -> list[tuple[str, bool]]:
    """(passage, protected) pairs: free text split at blank lines, protected whole."""
    out: list[tuple[str, bool]] = []
    for segment in segments.split(text):
        if segment.protected:
            out.append((segment.text.strip("\n"), True))
        else:
            out.extend((p.strip(), False) for p in _PASSAGE_BREAK.split(segment.text)
                       if p.strip())
    return out


def sentences(passage: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(passage) if s.strip()]


def numbers_in(text: str) -> set[str]:
    return {n.rstrip(".,") for n in _NUMBER.findall(text)}


def compress(context: str, question: str, budget: int, count: Count,
             *, embed: Embed | None = None, passage_share: float = 1.0,
             lexical_weight: float = 0.25) -> str:
    """The context cut to at most ``budget`` tokens (more only if the mandatory parts
    alone exceed it), the kept parts in their original order.

    ``passage_share`` is the part of the budget whole passages may take before the
    sentence level fills the rest; ``lexical_weight`` is BM25's weight beside the
    embedding score (when ``embed`` is given).
    """
    if count(context) <= budget:
        return context
    parts = passages(context)
    scores = relevance(question, [p for p, _ in parts], embed,
                       lexical_weight=lexical_weight)
    wanted = numbers_in(question)
    whole = [_Unit(i, i, text, score, protected)
             for i, ((text, protected), score) in enumerate(zip(parts, scores, strict=True))]
    units: list[_Unit] = []
    for passage, (text, protected) in zip(whole, parts, strict=True):
        for sentence in [text] if protected else sentences(text):
            units.append(_Unit(passage.passage, len(units), sentence, passage.score,
                               protected, bool(wanted & numbers_in(sentence))))
    own = relevance(question, [u.text for u in units])
    for unit, score in zip(units, own, strict=True):
        unit.score += score
    for unit in units:
        unit.tokens = count(unit.text)
    chosen = _select(units, whole, budget, passage_share)
    return _fit(chosen, budget, count)


def _select(units: list[_Unit], whole: list[_Unit], budget: int, passage_share: float
            ) -> list[_Unit]:
    chosen = [u for u in units if u.mandatory]
    used = sum(u.tokens + 1 for u in chosen)
    for unit in sorted((u for u in units if u.pinned and not u.mandatory),
                       key=lambda u: -u.score):
        if used + unit.tokens + 1 <= budget / 2:
            chosen.append(unit)
            used += unit.tokens + 1
    picked = {id(u) for u in chosen}
    taken: set[int] = set()
    by_passage: dict[int, list[_Unit]] = {}
    for unit in units:
        by_passage.setdefault(unit.passage, []).append(unit)
    for passage in sorted(whole, key=lambda p: -p.score):
        members = [u for u in by_passage[passage.passage] if id(u) not in picked]
        cost = sum(u.tokens + 1 for u in members)
        if used + cost > budget * passage_share:
            break
        chosen.extend(members)
        used += cost
        taken.add(passage.passage)
    rest = [u for u in units if u.passage not in taken and id(u) not in picked]
    for unit in sorted(rest, key=lambda u: -u.score):
        if used + unit.tokens + 1 <= budget:
            chosen.append(unit)
            used += unit.tokens + 1
    return chosen


def _render(chosen: list[_Unit]) -> str:
    out: list[str] = []
    previous: _Unit | None = None
    for unit in sorted(chosen, key=lambda u: u.order):
        if previous is not None:
            out.append(" " if previous.passage == unit.passage else "\n\n")
        out.append(unit.text)
        previous = unit
    return "".join(out)


def _fit(chosen: list[_Unit], budget: int, count: Count) -> str:
    """Joining can merge or split tokens at the seams: drop the weakest optional units
    until the rendered text is within budget."""
    text = _render(chosen)
    optional = sorted((u for u in chosen if not u.mandatory),
                      key=lambda u: (u.pinned, u.score))
    while count(text) > budget and optional:
        chosen.remove(optional.pop(0))
        text = _render(chosen)
    return text
