"""Prompt features of the complexity router, computed with the standard library and NumPy.

The router runs on every ``auto`` request, so its features must cost well under a
millisecond: hashed word unigrams and bigrams (``zlib.crc32``, stable across processes,
unlike ``hash``), hashed character 4-grams of the longer words (they generalise to
words never seen in training: "thermodynamic" shares grams with "thermodynamics"), and
a few structure counts (length, lines, digits, code, math, questions, answer options).
Training (``services.routing.train``) and inference use this one function, so the
shipped weights always see the features they were fitted on.
"""

from __future__ import annotations

import math
import re
import zlib

import numpy as np

HASH_BITS = 16
N_HASHED = 1 << HASH_BITS
_MASK = N_HASHED - 1

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
_CODE = re.compile(r"```|\bdef |\bclass |\breturn\b|[{};]\s*$|#include|=>|\bfunction\b", re.M)
_MATH = re.compile(r"[=+\-*/^<>]|\\frac|\\sqrt|\bsqrt\b|\d")
_OPTION = re.compile(r"^[A-J][.)]\s", re.M)

STRUCTURE_NAMES = (
    "log_chars",
    "log_words",
    "log_lines",
    "digit_fraction",
    "math_density",
    "code_markers",
    "question_marks",
    "answer_options",
    "mean_word_length",
    "upper_fraction",
)
N_STRUCTURE = len(STRUCTURE_NAMES)
N_FEATURES = N_HASHED + N_STRUCTURE
MAX_CHARS = 4000


def featurize(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Sparse features of ``text``: (column indices, values), hashed part L2-normalised.

    Hashed n-grams are present/absent (a set, no counting: cheaper, and as accurate
    here) and read from the first ``MAX_CHARS`` characters only, so a huge prompt costs
    no more than a long one; the structure counts see the whole text.

    Columns ``[0, N_HASHED)`` are hashed n-grams; the last ``N_STRUCTURE`` columns are
    the structure counts, already on a small scale (logs and fractions).
    """
    tokens = _WORD.findall(text[:MAX_CHARS].lower())
    crc = zlib.crc32
    grams = set(tokens)
    grams.update(f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False))
    for token in tokens:
        if len(token) > 5:
            padded = f"#<{token}>"
            grams.update(padded[0] + padded[i:i + 4] for i in range(1, len(padded) - 3))
    if grams:
        columns = np.fromiter({crc(g.encode()) & _MASK for g in grams}, dtype=np.int64)
        values = np.full(len(columns), 1 / math.sqrt(len(columns)), dtype=np.float32)
    else:
        columns = np.zeros(0, dtype=np.int64)
        values = np.zeros(0, dtype=np.float32)
    structure = _structure(text, tokens)
    return (
        np.concatenate([columns, np.arange(N_HASHED, N_FEATURES)]),
        np.concatenate([values, structure]).astype(np.float32),
    )


def _structure(text: str, tokens: list[str]) -> np.ndarray:
    chars = max(len(text), 1)
    words = [t for t in tokens if t[0].isalnum()]
    digits = sum(c.isdigit() for c in text)
    upper = sum(c.isupper() for c in text)
    return np.array(
        [
            math.log1p(len(text)) / 8,
            math.log1p(len(words)) / 6,
            math.log1p(text.count("\n")) / 3,
            digits / chars * 5,
            len(_MATH.findall(text)) / chars * 5,
            min(len(_CODE.findall(text)), 5) / 5,
            min(text.count("?"), 5) / 5,
            min(len(_OPTION.findall(text)), 10) / 10,
            (sum(map(len, words)) / len(words) if words else 0.0) / 10,
            upper / chars * 5,
        ],
        dtype=np.float32,
    )
