"""The semantic verifier: decides whether a stored question answers a new one.

A vector search finds the stored question nearest in meaning; on real user questions
(Quora's duplicate pairs) that alone is wrong for one hit in four even at cosine 0.9,
because near-identical wording often asks something else ("... visa for Canada?" vs
"... for Australia?"). The verifier scores a (query, candidate, cosine) triple with a
small model over ``features.FEATURE_NAMES`` and accepts when the probability reaches a
threshold that was calibrated on held-out data for a target precision.

The model ships as JSON (``verifier.json``, written by ``train.py``): either gradient
boosted trees or a logistic regression, both evaluated here in NumPy. JSON rather than
pickle: it is reviewable, diffable and cannot execute code when loaded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.caching.semantic.features import (
    FEATURE_NAMES,
    GUARDS,
    guard_refuses,
    pair_features,
    same_words_key,
)
from services.caching.semantic.index import Neighbor

MODEL_PATH = Path(__file__).with_name("verifier.json")


class _Logistic:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.mean = np.asarray(spec["mean"], dtype=np.float64)
        self.scale = np.asarray(spec["scale"], dtype=np.float64)
        self.coef = np.asarray(spec["coef"], dtype=np.float64)
        self.intercept = float(spec["intercept"])

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept


class _Trees:
    """Binary gradient boosted trees, all trees walked at once.

    Every tree is padded to the same node count and every leaf points to itself, so
    ``depth`` vectorised steps take each (sample, tree) to its leaf without branching in
    Python: ~0.1 ms for a handful of candidates and a few hundred trees.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        trees = spec["trees"]
        width = max(len(t["feature"]) for t in trees)
        shape = (len(trees), width)
        self.feature = np.zeros(shape, dtype=np.intp)
        self.threshold = np.zeros(shape, dtype=np.float64)
        self.left = np.tile(np.arange(width, dtype=np.intp), (len(trees), 1))
        self.right = self.left.copy()
        self.value = np.zeros(shape, dtype=np.float64)
        for i, tree in enumerate(trees):
            n = len(tree["feature"])
            for node in range(n):
                if tree["left"][node] >= 0:  # split node; leaves keep their self-loops
                    self.feature[i, node] = tree["feature"][node]
                    self.threshold[i, node] = tree["threshold"][node]
                    self.left[i, node] = tree["left"][node]
                    self.right[i, node] = tree["right"][node]
            self.value[i, :n] = tree["value"]
        self.depth = int(spec["max_depth"])
        self.init = float(spec["init"])
        self.learning_rate = float(spec["learning_rate"])
        self._rows = np.arange(len(trees))

    def logits(self, x: np.ndarray) -> np.ndarray:
        # sklearn's trees compare float32 features with float64 thresholds: do the same,
        # so this walk lands in the leaves the trainer's own predict() lands in
        x = x.astype(np.float32).astype(np.float64)
        node = np.zeros((len(x), len(self._rows)), dtype=np.intp)
        sample = np.arange(len(x))[:, None]
        for _ in range(self.depth):
            feature = self.feature[self._rows, node]
            go_left = x[sample, feature] <= self.threshold[self._rows, node]
            node = np.where(go_left, self.left[self._rows, node], self.right[self._rows, node])
        return self.init + self.learning_rate * self.value[self._rows, node].sum(axis=1)


@dataclass(frozen=True, slots=True)
class Verdict:
    probability: float
    accepted: bool


class SemanticVerifier:
    """Scores candidate matches; thread-safe (immutable after construction)."""

    # It judges the nearest candidate only: one a rule refuses is a miss, it does not make
    # way for the next (which the model would judge in its place, and sometimes accept).
    skips_refused = False
    needs_dense = True  # its features read the MiniLM cosine

    def __init__(self, spec: dict[str, Any], *, threshold: float | None = None) -> None:
        names = tuple(spec["features"])
        if names != FEATURE_NAMES:
            raise ValueError(f"verifier model was trained on features {names}, "
                             f"this code computes {FEATURE_NAMES}: retrain it")
        model = spec["model"]
        kind = model["kind"]
        if kind == "gbdt":
            self._model: _Trees | _Logistic = _Trees(model)
        elif kind == "logistic":
            self._model = _Logistic(model)
        else:
            raise ValueError(f"unknown verifier model kind {kind!r}")
        self.kind = kind
        self.spec = spec
        self.calibrated_threshold = float(spec["threshold"])
        self.threshold = self.calibrated_threshold if threshold is None else float(threshold)
        self.min_cosine = float(spec.get("min_cosine", 0.0))
        self.guards = tuple(spec.get("guards", GUARDS))

    @classmethod
    def load(cls, path: str | Path | None = None, *, threshold: float | None = None
             ) -> SemanticVerifier:
        """Load the shipped model (or ``path``); ``threshold`` overrides the calibrated one
        (the gateway passes ``cache_semantic_min_probability`` when it is set)."""
        spec = json.loads(Path(path or MODEL_PATH).read_text())
        return cls(spec, threshold=threshold)

    def with_threshold(self, threshold: float) -> SemanticVerifier:
        return SemanticVerifier(self.spec, threshold=threshold)

    def admits(self, query: str, candidate: str) -> bool:
        """Whether a candidate is worth a transformer pass: the cheap rules (a number,
        negation or entity on one side only) refuse it without one."""
        return guard_refuses(query, candidate, self.guards) is None

    def probabilities(self, query: str, candidates: list[tuple[str, float]]) -> list[float]:
        """P(same question) for each (candidate text, cosine), in one vectorised pass.

        The same words in the same order (case, spacing and punctuation aside) are the
        same question: probability 1. The model alone cannot say so, because Quora labels
        one such pair in seven "different", so it would never clear a strict threshold
        for "how do I reset my password" against "How do I reset my password?".
        """
        if not candidates:
            return []
        x = np.array([pair_features(query, text, cosine) for text, cosine in candidates],
                     dtype=np.float64)
        logits = np.clip(self._model.logits(x), -60.0, 60.0)
        words = same_words_key(query)
        return [1.0 if same_words_key(text) == words else 1.0 / (1.0 + math.exp(-float(z)))
                for (text, _), z in zip(candidates, logits, strict=True)]

    def best(self, query: str, neighbors: Sequence[Neighbor], *, policy: str = "nearest"
             ) -> tuple[Neighbor, float] | None:
        """Score the search's candidates (best cosine first); return the chosen one and its
        probability, accepted or not.

        ``nearest`` (the default) verifies the nearest candidate only. Picking the most
        probable of the best four ("most_probable") was measured and is worse on both
        benchmarks: it trades a semantic match for a lexical one (at p >= 0.5, GPTCache's
        mock pairs: 824 correct / 142 wrong against 906 / 44; Quora: 2,230 / 2,109 against
        2,227 / 1,884). The cache still searches several, so that an expired nearest
        entry falls through to the next.
        """
        pool = [n for n in neighbors if n.cosine >= self.min_cosine]
        if not pool:
            return None
        if policy == "nearest":
            pool = pool[:1]
        elif policy != "most_probable":
            raise ValueError(f"unknown policy {policy!r}")
        scores = self.probabilities(query, [(n.text, n.cosine) for n in pool])
        i = max(range(len(pool)), key=lambda j: (scores[j], pool[j].cosine))
        return pool[i], scores[i]

    def probability(self, query: str, candidate: str, cosine: float) -> float:
        return self.probabilities(query, [(candidate, cosine)])[0]

    def accept(self, query: str, candidate: str, cosine: float) -> bool:
        return self.verdict(query, candidate, cosine).accepted

    def verdict(self, query: str, candidate: str, cosine: float) -> Verdict:
        if cosine < self.min_cosine:
            return Verdict(0.0, False)
        probability = self.probability(query, candidate, cosine)
        return Verdict(probability, probability >= self.threshold)
