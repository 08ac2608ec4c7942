"""Synthetic hard negatives: the known false hits of semantic caches, made on purpose.

Quora's pairs rarely differ only in a number, a negation or a name, so a verifier that
learns from them alone gives "Can I take ibuprofen with alcohol?" and "Can I not take
ibuprofen with alcohol?" a probability of 0.84. Training adds altered copies of training
questions, labelled "different": one number changed, a negation added or removed, a
name swapped for another name from the corpus, a word swapped for its opposite. The
benchmark never sees them: they are made from training pairs only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from services.caching.semantic.features import text_facts

_INTEGER = re.compile(r"\b\d{1,4}\b")
_AUX = r"(?:is|are|was|were|can|do|does|did|should|will|would|could)"
_SUBJECT = r"(?:I|you|we|they|he|she|it|people|someone|one)"
# "How do I get ..." -> "How do I not get ..."; "The tax is high" -> "The tax is not high"
_QUESTION_AUX = re.compile(rf"\b{_AUX}\s+{_SUBJECT}\b", re.IGNORECASE)
_STATEMENT_AUX = re.compile(rf"^(?:\S+\s+){{2,}}?{_AUX}\b", re.IGNORECASE)
_CONTRACTED = {"don't": "do", "doesn't": "does", "didn't": "did", "can't": "can",
               "isn't": "is", "aren't": "are", "won't": "will", "wouldn't": "would",
               "shouldn't": "should", "couldn't": "could", "wasn't": "was"}
_NEGATED = re.compile(r"\b(" + "|".join(map(re.escape, _CONTRACTED)) + r"|not)\b",
                      re.IGNORECASE)
OPPOSITES = {"best": "worst", "worst": "best", "good": "bad", "bad": "good",
             "increase": "decrease", "decrease": "increase", "before": "after",
             "after": "before", "more": "less", "less": "more", "buy": "sell", "sell": "buy",
             "maximum": "minimum", "minimum": "maximum", "advantages": "disadvantages",
             "disadvantages": "advantages", "cheap": "expensive", "expensive": "cheap",
             "easy": "hard", "hard": "easy", "fast": "slow", "slow": "fast", "first": "last",
             "last": "first", "start": "stop", "stop": "start", "old": "new", "new": "old",
             "with": "without", "without": "with", "male": "female", "female": "male"}
_OPPOSITE = re.compile(r"\b(" + "|".join(OPPOSITES) + r")\b")
KINDS = ("number", "negation", "entity", "opposite")
DEFAULT_KINDS = ("number", "negation", "entity")


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def change_number(text: str) -> str | None:
    match = _INTEGER.search(text)
    if match is None:
        return None
    value = int(match.group())
    return f"{text[: match.start()]}{value + 1}{text[match.end():]}"


def flip_negation(text: str) -> str | None:
    negated = _NEGATED.search(text)
    if negated is not None:
        word = negated.group()
        if word.lower() == "not":
            return (text[: negated.start()] + text[negated.end():]).replace("  ", " ")
        plain = _CONTRACTED[word.lower()]
        return text[: negated.start()] + plain + text[negated.end():]
    aux = _QUESTION_AUX.search(text) or _STATEMENT_AUX.search(text)
    if aux is None:
        return None
    return f"{text[: aux.end()]} not{text[aux.end():]}"


def swap_entity(text: str, pool: Sequence[str]) -> str | None:
    """Replace the first capitalised mid-sentence word with another corpus name."""
    names = text_facts(text).capitalised
    for match in re.finditer(r"\b[A-Z][a-z]{3,}\b", text):
        if match.group().lower() in names and match.start() > 0:
            start = int(_key(text)[:8], 16) % len(pool)
            for other in (*pool[start:], *pool[:start]):
                if other.lower() != match.group().lower():
                    return text[: match.start()] + other + text[match.end():]
    return None


def swap_opposite(text: str) -> str | None:
    match = _OPPOSITE.search(text)
    if match is None:
        return None
    return text[: match.start()] + OPPOSITES[match.group()] + text[match.end():]


def hard_negatives(texts: Sequence[str], *, per_kind: int,
                   kinds: Sequence[str] = DEFAULT_KINDS) -> list[tuple[str, str, str]]:
    """Up to ``per_kind`` (original, altered, kind) triples of each kind, chosen by hash
    order of the originals so that the same texts always give the same set."""
    ordered = sorted(set(texts), key=_key)
    pool = sorted({m.group() for t in ordered for m in re.finditer(r"\b[A-Z][a-z]{3,}\b", t)
                   if m.start() > 0 and m.group().lower() in text_facts(t).capitalised})
    makers = {"number": change_number, "negation": flip_negation,
              "entity": lambda t: swap_entity(t, pool) if pool else None,
              "opposite": swap_opposite}
    out: list[tuple[str, str, str]] = []
    for kind in kinds:
        made = 0
        for text in ordered:
            altered = makers[kind](text)
            if altered is not None and altered != text:
                out.append((text, altered, kind))
                made += 1
                if made == per_kind:
                    break
    return out
