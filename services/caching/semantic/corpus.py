"""Labelled question pairs for training and benchmarking the semantic cache.

Two formats are read: QQP's ``{text_a, text_b, label}`` and GPTCache's mock benchmark
``{origin, similar}`` (every pair a true duplicate). The training split is a rule on a
hash of the pair, not a random draw, so that the training script, the shipped manifest
and the benchmark agree on it without sharing state: a pair trains the verifier when
the first 32 bits of ``sha256(text_a + "\\n" + text_b)`` are below 2**31.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLIT_RULE = "training pair iff int(sha256(text_a + '\\n' + text_b)[:8], 16) < 2**31"


@dataclass(frozen=True, slots=True)
class Pair:
    text_a: str  # the stored entry
    text_b: str  # the incoming question
    label: int   # 1 = same question

    @property
    def digest(self) -> str:
        return pair_digest(self.text_a, self.text_b)


def pair_digest(text_a: str, text_b: str) -> str:
    return hashlib.sha256(f"{text_a}\n{text_b}".encode()).hexdigest()


def is_training_pair(pair: Pair) -> bool:
    return int(pair.digest[:8], 16) < 2**31


def load_pairs(path: str | Path) -> tuple[str, list[Pair]]:
    """Read a pairs file; returns its format name ("qqp" or "mock") and the pairs."""
    rows = json.loads(Path(path).read_text())
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: expected a non-empty JSON list of pairs")
    first = rows[0]
    if {"text_a", "text_b", "label"} <= first.keys():
        return "qqp", [Pair(r["text_a"], r["text_b"], int(r["label"])) for r in rows]
    if {"origin", "similar"} <= first.keys():
        return "mock", [Pair(r["origin"], r["similar"], 1) for r in rows]
    raise ValueError(f"{path}: unknown pair format, keys {sorted(first)}")


def encode_cached(encode: Callable[[Sequence[str]], np.ndarray], texts: Sequence[str],
                  cache: Path | None = None) -> np.ndarray:
    """Embed ``texts``, reusing the vectors stored in ``cache`` (an .npz keyed by text hash).

    Embedding 20,000 questions takes minutes on two busy cores; training and benchmark
    runs repeat on the same texts, so the vectors are kept between runs when asked to.
    """
    keys = [hashlib.sha256(t.encode()).hexdigest()[:32] for t in texts]
    known: dict[str, np.ndarray] = {}
    if cache is not None and cache.exists():
        with np.load(cache) as stored:
            known = dict(zip(stored["keys"].tolist(), stored["vectors"], strict=True))
    missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in known}.items())
    if missing:
        vectors = encode([t for _, t in missing])
        known.update(zip((k for k, _ in missing), vectors, strict=True))
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            names = sorted(known)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, keys=np.array(names), vectors=np.stack([known[k] for k in names]))
            tmp.replace(cache)
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([known[k] for k in keys]).astype(np.float32)
