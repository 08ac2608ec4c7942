"""How far can a better verifier over the same encoder go on Quora's labels?

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/semantic_verifier_features.py \\
        --pairs ../shared/data/cache/qqp_pairs_dev.json

Pair classification, not retrieval: every ``{text_a, text_b, label}`` pair of the file is
scored by models fitted on the other folds (folds by pair hash, as the verifier's
training uses), and the precision reached at a given recall of the duplicates is
reported for richer and richer inputs, all over the same frozen all-MiniLM-L6-v2 states:

* ``cosine``: the pooled embeddings' cosine alone;
* ``verifier features``: the 16 pair features the shipped verifier uses;
* ``+ token alignment``: per-token best matches between the two texts' contextual token
  states (mean, weakest and IDF-weighted match, tokens left unmatched at several levels);
* ``+ embedding interaction``: a small neural network over ``|u - v|`` and ``u * v`` of
  the pooled embeddings, stacked (its score is a feature, fitted within each training
  fold by inner folds so no label reaches its own score).

Each arm fits gradient-boosted trees (scikit-learn's histogram variant: the same model
family as the verifier, faster to fit). The retrieval setting can only do worse than
these figures: there the own entry must also be the one found, and a hit on another
entry that asks the same question counts as wrong. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from harness import machine_info, markdown_table, print_json_line

from services.caching.semantic.corpus import Pair, load_pairs
from services.caching.semantic.features import pair_features
from services.embeddings import DEFAULT_ENCODER, ENCODER_KINDS, default_encoder

RECALL_LEVELS = (0.05, 0.10, 0.25, 0.40)
UNMATCHED_LEVELS = (0.5, 0.6, 0.7, 0.8)


class TokenTexts:
    """Unit-norm contextual token states (without [CLS]/[SEP]) and IDF weights per text."""

    def __init__(self, texts: Sequence[str], encoder_kind: str) -> None:
        encoder = default_encoder(encoder_kind)  # type: ignore[arg-type]
        self.row = {t: i for i, t in enumerate(texts)}
        self.states: list[np.ndarray] = []
        self.ids: list[np.ndarray] = []
        pooled = []
        for ids, hidden in encoder.token_states(texts):
            mean = hidden.mean(axis=0)
            pooled.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
            inner = hidden[1:-1] if len(hidden) > 2 else hidden
            self.states.append(inner / np.linalg.norm(inner, axis=1, keepdims=True))
            self.ids.append(ids[1:-1] if len(ids) > 2 else ids)
        self.pooled = np.asarray(pooled, dtype=np.float32)
        df = Counter(t for ids in self.ids for t in set(ids.tolist()))
        self._idf = {t: math.log((len(texts) + 1) / (n + 1)) for t, n in df.items()}

    def weights(self, i: int) -> np.ndarray:
        return np.array([self._idf[t] for t in self.ids[i].tolist()])

    def alignment(self, a: str, b: str) -> list[float]:
        """Symmetric features of the best token-to-token matches between two texts."""
        i, j = self.row[a], self.row[b]
        sim = self.states[i] @ self.states[j].T
        best_a, best_b = sim.max(axis=1), sim.max(axis=0)
        wa, wb = self.weights(i), self.weights(j)
        mean = sorted((float(best_a.mean()), float(best_b.mean())))
        weighted = sorted((float(best_a @ wa / wa.sum()), float(best_b @ wb / wb.sum())))
        weakest = sorted((float(best_a.min()), float(best_b.min())))
        out = [*mean, *weighted, *weakest]
        for level in UNMATCHED_LEVELS:
            na, nb = int((best_a < level).sum()), int((best_b < level).sum())
            out += [max(na, nb), na + nb]
        ka, kb = int(best_a.argmin()), int(best_b.argmin())
        out += [max(wa[ka] * (1 - best_a[ka]), wb[kb] * (1 - best_b[kb])),
                float(wa @ (1 - best_a) + wb @ (1 - best_b))]
        return out


def _trees() -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=0)


def _interaction_net() -> Any:
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier((256,), alpha=1e-3, max_iter=200, early_stopping=True, random_state=0)


def out_of_fold(make: Callable[[], Any], x: np.ndarray, y: np.ndarray, fold: np.ndarray
                ) -> np.ndarray:
    scores = np.zeros(len(y))
    for f in np.unique(fold):
        model = make().fit(x[fold != f], y[fold != f])
        scores[fold == f] = model.predict_proba(x[fold == f])[:, 1]
    return scores


def stacked(base: np.ndarray, deep: np.ndarray, y: np.ndarray, fold: np.ndarray,
            inner_folds: int) -> np.ndarray:
    """Trees over ``base`` plus the network's score on ``deep``; within each training fold
    the network's score comes from inner folds, so no pair's label reaches its own score."""
    scores = np.zeros(len(y))
    for f in np.unique(fold):
        train, test = fold != f, fold == f
        inner = np.arange(train.sum()) % inner_folds
        net_train = out_of_fold(_interaction_net, deep[train], y[train], inner)
        net_test = _interaction_net().fit(deep[train], y[train]).predict_proba(deep[test])[:, 1]
        trees = _trees().fit(np.column_stack([base[train], net_train]), y[train])
        scores[test] = trees.predict_proba(np.column_stack([base[test], net_test]))[:, 1]
    return scores


def precision_at(scores: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(y[order])
    precision, recall = tp / np.arange(1, len(y) + 1), tp / y.sum()
    out = {f"precision_at_recall_{r:.2f}": round(float(precision[np.argmax(recall >= r)]), 4)
           for r in RECALL_LEVELS}
    out["roc_auc"] = round(float(roc_auc_score(y, scores)), 4)
    return out


def run(pairs: Sequence[Pair], *, folds: int, encoder: str) -> dict[str, Any]:
    texts = sorted({t for p in pairs for t in (p.text_a, p.text_b)})
    t0 = time.perf_counter()
    tokens = TokenTexts(texts, encoder)
    embed_s = time.perf_counter() - t0
    a = np.array([tokens.row[p.text_a] for p in pairs])
    b = np.array([tokens.row[p.text_b] for p in pairs])
    u, v = tokens.pooled[a], tokens.pooled[b]
    cosine = (u * v).sum(axis=1)
    base = np.array([pair_features(p.text_b, p.text_a, c) for p, c in zip(pairs, cosine,
                                                                            strict=True)])
    align = np.array([tokens.alignment(p.text_b, p.text_a) for p in pairs])
    y = np.array([p.label for p in pairs])
    fold = np.array([int(p.digest[8:16], 16) % folds for p in pairs])
    arms = {
        "cosine": out_of_fold(_trees, base[:, :1], y, fold),
        "verifier features": out_of_fold(_trees, base, y, fold),
        "+ token alignment": out_of_fold(_trees, np.hstack([base, align]), y, fold),
        "+ embedding interaction": stacked(np.hstack([base, align]),
                                           np.hstack([np.abs(u - v), u * v]), y, fold, 3),
    }
    return {"pairs": len(pairs), "duplicates": int(y.sum()), "folds": folds,
            "encoder": encoder, "embed_s": round(embed_s, 1),
            "arms": {name: precision_at(s, y) for name, s in arms.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    if os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, required=True, help="QQP-format pairs")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, choices=ENCODER_KINDS)
    args = parser.parse_args(argv)
    fmt, pairs = load_pairs(args.pairs)
    if fmt != "qqp":
        parser.error("--pairs: needs labelled pairs {text_a, text_b, label}")
    result = run(pairs, folds=args.folds, encoder=args.encoder)
    print(f"# verifier inputs on {args.pairs}: {result['pairs']} pairs "
          f"({result['duplicates']} duplicates), {args.folds}-fold out-of-fold scores")
    print(markdown_table(["inputs", *(f"precision at recall {r:.2f}" for r in RECALL_LEVELS),
                          "ROC AUC"],
                         [[name, *(f"{m[f'precision_at_recall_{r:.2f}']:.3f}"
                                   for r in RECALL_LEVELS), f"{m['roc_auc']:.3f}"]
                          for name, m in result["arms"].items()]))
    result["pairs_file"] = str(args.pairs)
    result["machine"] = machine_info()
    print()
    print_json_line(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
