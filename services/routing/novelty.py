"""Is a prompt unlike the router's training data? Nearest neighbours in the router's own
feature space.

The complexity router learns what makes its training tasks hard for the cheap model;
on a kind of task it never saw (math word problems after MMLU) its score is a guess, no
better than random (docs/benchmarks.md). So the router keeps a sample of its training
prompts and measures how close a new prompt comes to them: the mean cosine similarity
of its ``k`` nearest references over the router's hashed n-grams (``features``), the
very features its score is made of. Below the threshold the prompt is *novel*, and the
routing policy defers it to the cascade (cheap model first, its answer judged) instead
of trusting the router.

Why not MiniLM embeddings (``services.embeddings``)? Measured on RouteLLM's data
(docs/benchmarks.md): in MiniLM space GSM8K word problems sit as close to MMLU's math
questions as MMLU subjects sit to each other (0% flagged with MMLU as the training
data), since the embedding reads the topic, not the kind of task, and one embedding
costs 50+ ms on this CPU. The router's n-grams read the task's wording and format
(98% of GSM8K flagged; 0.4-23% of a held-out MMLU category) in about a millisecond.

The threshold is calibrated without the prompts it will be judged on: each reference's
similarity to the references of *other* calibration groups (an MMLU subject, or a
single prompt for a one-file family) stands for a prompt of a topic the sample does not
cover but of a kind it does; the threshold is a low quantile (``QUANTILE``) of those.

At inference the references are an inverted index (for each hashed column, the
references that have it), so a query costs its columns' posting lists, NumPy only.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.routing.features import N_HASHED, featurize

SHIPPED_NOVELTY = Path(__file__).with_name("models") / "novelty-v1.npz"
K = 10
QUANTILE = 0.02
PER_GROUP = 60


def hashed_columns(text: str) -> np.ndarray:
    """The prompt's hashed n-gram columns (binary features; their norm is 1/sqrt(n))."""
    columns, _ = featurize(text)
    return np.unique(columns[columns < N_HASHED])


@dataclass(frozen=True)
class NoveltyDetector:
    indptr: np.ndarray  # int64, N_HASHED + 1: postings of column c are indptr[c]:indptr[c+1]
    postings: np.ndarray  # int32 reference ids
    sizes: np.ndarray  # float64, columns per reference
    threshold: float  # top-k mean cosine below which a prompt is novel
    k: int = K
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_columns(cls, references: Sequence[np.ndarray], threshold: float, *, k: int = K,
                     meta: dict[str, Any] | None = None) -> NoveltyDetector:
        ids = np.concatenate([np.full(len(c), i, np.int32) for i, c in enumerate(references)])
        cols = np.concatenate(list(references)).astype(np.int64)
        order = np.argsort(cols, kind="stable")
        indptr = np.zeros(N_HASHED + 1, np.int64)
        np.cumsum(np.bincount(cols, minlength=N_HASHED), out=indptr[1:])
        return cls(indptr, ids[order], np.asarray([max(len(c), 1) for c in references],
                                                  np.float64), threshold, k, meta or {})

    def similarities_to_references(self, columns: np.ndarray) -> np.ndarray:
        """Cosine similarity of a prompt (its hashed columns) to every reference."""
        if len(columns) == 0:
            return np.zeros(len(self.sizes))
        starts, ends = self.indptr[columns], self.indptr[columns + 1]
        hits = np.concatenate([self.postings[s:e] for s, e in zip(starts, ends, strict=True)])
        shared = np.bincount(hits, minlength=len(self.sizes))
        return shared / np.sqrt(self.sizes * len(columns))

    def similarity(self, text: str) -> float:
        """Mean cosine similarity of ``text`` to its k nearest references."""
        sims = self.similarities_to_references(hashed_columns(text))
        k = min(self.k, len(sims))
        return float(np.partition(sims, len(sims) - k)[-k:].mean())

    def novel(self, text: str) -> tuple[bool, float]:
        similarity = self.similarity(text)
        return similarity < self.threshold, similarity

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, indptr=self.indptr, sizes=self.sizes,
            postings=self.postings.astype(np.uint16 if len(self.sizes) < 1 << 16 else np.int32),
            threshold=np.float64(self.threshold), k=np.int64(self.k),
            meta=np.frombuffer(json.dumps(self.meta).encode(), dtype=np.uint8),
        )
        return buffer.getvalue()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_bytes())

    @classmethod
    def from_bytes(cls, raw: bytes) -> NoveltyDetector:
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            return cls(
                indptr=data["indptr"].astype(np.int64),
                postings=data["postings"].astype(np.int32),
                sizes=data["sizes"].astype(np.float64), threshold=float(data["threshold"]),
                k=int(data["k"]), meta=json.loads(bytes(data["meta"]).decode()),
            )

    @classmethod
    def load(cls, path: Path = SHIPPED_NOVELTY) -> NoveltyDetector:
        if not path.is_file():
            raise FileNotFoundError(f"novelty detector {path} does not exist")
        return cls.from_bytes(path.read_bytes())


def sample_references(groups: Sequence[str], per_group: int = PER_GROUP,
                      seed: int = 0) -> np.ndarray:
    """Indices of up to ``per_group`` rows of each group (every topic represented)."""
    rng = np.random.default_rng(seed)
    names = np.asarray(groups)
    chosen = [rng.permutation(np.flatnonzero(names == g))[:per_group]
              for g in sorted(set(groups))]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def fit_novelty(prompts: Sequence[str], groups: Sequence[str], *, k: int = K,
                quantile: float = QUANTILE) -> NoveltyDetector:
    """References = ``prompts``; the threshold is the ``quantile`` of each reference's
    top-k similarity to the references of other ``groups``."""
    references = [hashed_columns(p) for p in prompts]
    detector = NoveltyDetector.from_columns(references, 1.0, k=k)
    names = np.asarray(groups)
    within = []
    for i, columns in enumerate(references):
        sims = detector.similarities_to_references(columns)
        sims = sims[names != names[i]]
        if len(sims):
            kk = min(k, len(sims))
            within.append(float(np.partition(sims, len(sims) - kk)[-kk:].mean()))
    threshold = float(np.quantile(within, quantile)) if within else 0.0
    meta = {"references": len(references), "groups": len(set(groups)), "quantile": quantile}
    return NoveltyDetector(detector.indptr, detector.postings, detector.sizes, threshold, k,
                           meta)
