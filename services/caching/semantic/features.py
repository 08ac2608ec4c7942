"""Pair features for the semantic verifier: what embedding similarity cannot see.

Sentence embeddings put "How do I get a visa for Canada?" and "How do I get a visa for
Australia?" a few hundredths of cosine apart, closer than many true paraphrases; the
known false hits of semantic caches differ in a number, a negation or an entity. These
features make those differences explicit, cheaply (pure Python; the per-text part is
memoised, so a stored entry compared again costs only the pair part), so that a small
learned model can weigh them against the cosine.

Every feature is symmetric in its two texts (a new question is compared with a stored
one and either may be the longer). ``FEATURE_NAMES`` fixes the order of the vector, and
the verifier's JSON records the names it was trained with, so a model file and this
module can never be silently mismatched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_QUOTED = re.compile(r"\"([^\"]{1,80})\"|“([^”]{1,80})”|`([^`]{1,80})`")
_SENTENCE_END = re.compile(r"[.!?:;\n]")

NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40",
    "fifty": "50", "hundred": "100", "thousand": "1000", "million": "1000000",
    "billion": "1000000000", "first": "1", "second": "2", "third": "3", "fourth": "4",
    "fifth": "5", "half": "0.5", "dozen": "12", "twice": "2",
}
NEGATIONS = frozenset({
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "nowhere", "without",
    "cannot", "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont",
    "wouldnt", "shouldnt", "couldnt", "hasnt", "havent", "hadnt", "aint",
})
QUESTION_WORDS = frozenset({"what", "why", "how", "when", "where", "who", "which", "whom",
                            "whose"})
AUXILIARIES = frozenset({"is", "are", "was", "were", "do", "does", "did", "can", "could",
                         "should", "would", "will", "shall", "may", "might", "must", "has",
                         "have", "had", "am"})
STOP_WORDS = frozenset("""
a an the and or but if then else of to in on at by for with from into onto about as is are
was were be been being am do does did doing have has had having i me my mine we us our you
your he him his she her it its they them their this that these those there here so such
than too very can could would should will shall may might must just also any some all each
every other more most much many own same only both few s t d ll m re ve o y get got
""".split()) | QUESTION_WORDS

FEATURE_NAMES: tuple[str, ...] = (
    "cosine",
    "number_mismatch",         # the sets of numbers differ (either side may have none)
    "number_unmatched",        # numbers present on one side only, counted
    "negation_mismatch",       # one side is negated, the other is not
    "entity_unmatched",        # names/acronyms/quoted strings the other side lacks
    "question_word_mismatch",  # "what" vs "why", "how" vs "when" ...
    "opening_mismatch",        # the kind of the first word: wh-word, auxiliary, other
    "length_ratio",            # shorter / longer, in words
    "token_jaccard",
    "content_jaccard",         # without stop words
    "content_unmatched",       # content words on one side only, counted
    "content_unmatched_max",   # the larger of the two one-sided counts
    "capitalised_unmatched",   # unmatched words written with a capital mid-sentence
    "containment",             # share of the shorter side's content words in the longer
    "order_agreement",         # shared content words in the same relative order
    "char3_jaccard",
)


@dataclass(frozen=True, slots=True)
class TextFacts:
    """What the features need from one text, computed once per text."""

    tokens: frozenset[str]
    content: tuple[str, ...]   # content words in order of first appearance
    content_set: frozenset[str]
    numbers: frozenset[str]
    entities: frozenset[str]
    capitalised: frozenset[str]
    negated: bool
    question_word: str
    opening: str
    length: int
    char3: frozenset[str]


def _normalise(word: str) -> str:
    """Lower-case and strip the commonest inflections, so "exams" meets "exam"."""
    w = word.lower().replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    w = w.replace("'", "")
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def _sentence_starts(text: str) -> set[int]:
    """Offsets of the first word of each sentence: a capital there names nothing."""
    starts = {0}
    for match in _SENTENCE_END.finditer(text):
        starts.add(match.end())
    first_words = set()
    for start in starts:
        word = _WORD.search(text, start)
        if word is not None:
            first_words.add(word.start())
    return first_words


def _opening(words: list[str]) -> str:
    if not words:
        return ""
    first = words[0].lower()
    if first in QUESTION_WORDS:
        return first
    return "aux" if first in AUXILIARIES else "other"


@lru_cache(maxsize=65536)
def text_facts(text: str) -> TextFacts:
    """Facts of one text; memoised because a stored entry is compared again and again."""
    matches = list(_WORD.finditer(text))
    words = [m.group() for m in matches]
    tokens = [_normalise(w) for w in words]
    numbers = {n.replace(",", "") for n in _NUMBER.findall(text)}
    numbers |= {NUMBER_WORDS[t] for t in tokens if t in NUMBER_WORDS}
    squashed = {w.lower().replace("’", "'").replace("'", "") for w in words}
    negated = bool(squashed & NEGATIONS) or any(w.lower().endswith(("n't", "n’t"))
                                                for w in words)
    starts = _sentence_starts(text)
    capitalised: set[str] = set()
    entities: set[str] = set()
    for match, token in zip(matches, tokens, strict=True):
        word = match.group()
        if token in STOP_WORDS or not any(c.isalpha() for c in word):
            continue
        upper = sum(c.isupper() for c in word)
        if word[0].isupper() and match.start() not in starts:
            capitalised.add(token)
        if upper >= 2 or any(c.isdigit() for c in word) or token in capitalised:
            entities.add(token)
    for match in _QUOTED.finditer(text):
        quoted = next(g for g in match.groups() if g)
        phrase = " ".join(_normalise(w) for w in _WORD.findall(quoted))
        if phrase:
            entities.add(phrase)
    content = tuple(dict.fromkeys(t for t in tokens if t not in STOP_WORDS
                                  and t not in NUMBER_WORDS))
    joined = " ".join(tokens)
    return TextFacts(
        tokens=frozenset(tokens),
        content=content,
        content_set=frozenset(content),
        numbers=frozenset(numbers),
        entities=frozenset(entities),
        capitalised=frozenset(capitalised),
        negated=negated,
        question_word=next((t for t in tokens if t in QUESTION_WORDS), ""),
        opening=_opening(words),
        length=len(tokens),
        char3=frozenset(joined[i : i + 3] for i in range(max(len(joined) - 2, 1))),
    )


@lru_cache(maxsize=65536)
def same_words_key(text: str) -> tuple[str, ...]:
    """The text's words, lower-cased, in order: equal keys differ only in case, spacing
    and punctuation."""
    return tuple(w.lower().replace("’", "'") for w in _WORD.findall(text))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def _entities_missing(a: TextFacts, b: TextFacts) -> int:
    """Entities of ``a`` that ``b`` does not mention in any casing."""
    return sum(1 for entity in a.entities if not all(p in b.tokens for p in entity.split()))


def _order_agreement(a: TextFacts, b: TextFacts) -> float:
    """Share of pairs of shared words that keep their order: "kg to liters" is not
    "liters to kg", although every word matches."""
    position = {w: i for i, w in enumerate(b.content)}
    seq = [position[w] for w in a.content if w in position]
    pairs = len(seq) * (len(seq) - 1) // 2
    if pairs == 0:
        return 1.0
    kept = sum(1 for i in range(len(seq)) for j in range(i + 1, len(seq)) if seq[i] < seq[j])
    return kept / pairs


def pair_features(query: str, candidate: str, cosine: float) -> list[float]:
    """The feature vector of one (query, candidate) pair, in ``FEATURE_NAMES`` order."""
    a, b = text_facts(query), text_facts(candidate)
    numbers_unmatched = len(a.numbers ^ b.numbers)
    only_a, only_b = a.content_set - b.content_set, b.content_set - a.content_set
    shorter, longer = (a, b) if len(a.content_set) <= len(b.content_set) else (b, a)
    containment = (len(shorter.content_set & longer.content_set) / len(shorter.content_set)
                   if shorter.content_set else 1.0)
    return [
        # 4 decimals: float noise between a BLAS scan and a single dot product (1e-7)
        # must not move a pair across a tree threshold
        round(float(cosine), 4),
        float(numbers_unmatched > 0),
        float(min(numbers_unmatched, 4)),
        float(a.negated != b.negated),
        float(min(_entities_missing(a, b) + _entities_missing(b, a), 4)),
        float(bool(a.question_word and b.question_word and a.question_word != b.question_word)),
        float(a.opening != b.opening),
        min(a.length, b.length) / max(a.length, b.length, 1),
        _jaccard(a.tokens, b.tokens),
        _jaccard(a.content_set, b.content_set),
        float(min(len(only_a) + len(only_b), 10)),
        float(min(max(len(only_a), len(only_b)), 10)),
        float(min(len(only_a & a.capitalised) + len(only_b & b.capitalised), 4)),
        containment,
        _order_agreement(a, b),
        _jaccard(a.char3, b.char3),
    ]


GUARDS = ("numbers", "negation", "entities")  # the cheap rules, in the order they run


def guard_refuses(query: str, candidate: str, guards: Sequence[str] = GUARDS) -> str | None:
    """The first guard that tells the two texts apart, or None.

    ``numbers``: a number (digits or a number word) on one side only; ``negation``: one
    side negated; ``entities``: a name, code or quoted phrase of one side that the
    other does not mention in any casing.
    """
    a, b = text_facts(query), text_facts(candidate)
    if "numbers" in guards and a.numbers != b.numbers:
        return "numbers"
    if "negation" in guards and a.negated != b.negated:
        return "negation"
    if "entities" in guards:
        for x, y in ((a, b), (b, a)):
            if any(not all(p in y.tokens for p in e.split()) for e in x.entities):
                return "entities"
    return None
