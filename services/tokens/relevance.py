"""Relevance of text units to a question: Okapi BM25 (lexical) and, optionally, an
embedding similarity, combined into one score in [0, 2].

BM25 is the default because it costs microseconds; the MiniLM encoder
(``services.embeddings``) adds meaning beyond shared words but costs about 2 s per 1k
tokens on a busy 2-core box, so it is opt-in. Hard distractors (passages that share the
question's words but not its answer) are where it pays.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

Embed = Callable[[Sequence[str]], np.ndarray]  # texts -> L2-normalised rows

_WORD = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = frozenset(
    "a an and are as at be by did do does for from had has have how i in is it its of on "
    "or that the their them there these they this to was were what when where which who "
    "whom whose why will with you your".split()
)


def terms(text: str) -> list[str]:
    """Lower-cased word stems without stop words (plural -s folded, enough for BM25)."""
    out = []
    for word in _WORD.findall(text.lower()):
        if word in _STOPWORDS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.append(word)
    return out


def bm25(query: str, documents: Sequence[str], *, k1: float = 1.2, b: float = 0.75
         ) -> list[float]:
    """Okapi BM25 of each document for the query, IDF from the documents themselves."""
    docs = [terms(d) for d in documents]
    if not docs:
        return []
    n = len(docs)
    avg_len = sum(map(len, docs)) / n or 1.0
    df: Counter[str] = Counter()
    for doc in docs:
        df.update(set(doc))
    query_terms = set(terms(query))
    scores = []
    for doc in docs:
        tf = Counter(doc)
        norm = k1 * (1 - b + b * len(doc) / avg_len)
        score = 0.0
        for term in query_terms:
            if term in tf:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                score += idf * tf[term] * (k1 + 1) / (tf[term] + norm)
        scores.append(score)
    return scores


def _scaled(values: Sequence[float]) -> list[float]:
    if not values:
        return []
    low, high = min(values), max(values)
    if high - low <= 1e-12:
        return [0.0 if high <= 0 else 1.0 for _ in values]
    return [(v - low) / (high - low) for v in values]


def relevance(query: str, documents: Sequence[str], embed: Embed | None = None,
              *, lexical_weight: float = 0.25) -> list[float]:
    """BM25 scaled to [0, 1], plus cosine similarity scaled to [0, 1] when ``embed``
    (BM25 then weighs ``lexical_weight``: 0.25 was best of 1, 0.5, 0.25, 0 on hard
    distractors, questions 0-59 of the NQ compression set, and held on questions 60-199;
    see docs/benchmarks.md)."""
    lexical = _scaled(bm25(query, documents))
    if embed is None or not documents:
        return lexical
    vectors = embed([query, *documents])
    cosine = (vectors[1:] @ vectors[0]).tolist()
    return [lexical_weight * lex + sem
            for lex, sem in zip(lexical, _scaled(cosine), strict=True)]
