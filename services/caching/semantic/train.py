"""Train and calibrate the semantic verifier: ``python -m services.caching.semantic.train``.

    python -m services.caching.semantic.train --pairs ../shared/data/cache/qqp_pairs_dev.json

Writes ``verifier.json`` (the model, the calibrated threshold and the calibration curve)
and ``training_pairs.txt`` (the hashes of the pairs it learned from, which the benchmark
excludes) next to this file. Deterministic: the training pairs are chosen by a hash rule
(``corpus.SPLIT_RULE``), folds by another hash, and the models have fixed seeds.

Calibration imitates production, not pair classification: for each of ``--folds`` folds
a model fitted on the other folds answers the fold's questions through the real lookup
(vector search over every training entry, then the verifier over the best ``--k``), and
a hit counts as correct only when it returns the question's own labelled duplicate. The
threshold is the lowest probability whose hits reach the target precision in those
out-of-fold lookups. Gradient boosting needs scikit-learn at training time only; the
shipped model is evaluated with NumPy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.caching.semantic.corpus import (
    SPLIT_RULE,
    Pair,
    encode_cached,
    is_training_pair,
    load_pairs,
)
from services.caching.semantic.features import FEATURE_NAMES, pair_features
from services.caching.semantic.index import VectorIndex
from services.caching.semantic.verifier import SemanticVerifier

log = logging.getLogger("semantic.train")
PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST_NAME = "training_pairs.txt"
SCOPE = ("train", "train")


@dataclass(frozen=True, slots=True)
class Outcome:
    """The best candidate of one simulated lookup and how it would have been judged."""

    probability: float
    cosine: float
    kind: str  # "correct" | "wrong_own" (own pair, label 0) | "wrong_other" (another entry)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> dict[str, Any]:
    """L2-regularised logistic regression by Newton's method on standardised features."""
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    z = np.c_[(x - mean) / scale, np.ones(len(x))]
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-z @ w))
        grad = z.T @ (p - y) + penalty * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return {"kind": "logistic", "mean": mean.tolist(), "scale": scale.tolist(),
            "coef": w[:-1].tolist(), "intercept": float(w[-1])}


def fit_trees(x: np.ndarray, y: np.ndarray, *, trees: int, depth: int,
              learning_rate: float) -> dict[str, Any]:
    """Gradient boosted trees (scikit-learn), exported to plain node arrays."""
    from sklearn.ensemble import GradientBoostingClassifier

    model = GradientBoostingClassifier(n_estimators=trees, max_depth=depth,
                                       learning_rate=learning_rate, random_state=0)
    model.fit(x, y)
    prior = float(model.init_.class_prior_[1])
    exported = []
    for estimator in model.estimators_[:, 0]:
        tree = estimator.tree_
        exported.append({
            "feature": [int(f) if f >= 0 else 0 for f in tree.feature],
            "threshold": [float(t) for t in tree.threshold],
            "left": [int(v) for v in tree.children_left],
            "right": [int(v) for v in tree.children_right],
            "value": [float(v) for v in tree.value[:, 0, 0]],
        })
    spec = {"kind": "gbdt", "max_depth": depth, "learning_rate": learning_rate,
            "init": float(np.log(prior / (1 - prior))), "trees": exported}
    # the NumPy walk must reproduce scikit-learn exactly, or the calibration is void
    ours = _model_probabilities(spec, x)
    theirs = model.predict_proba(x)[:, 1]
    if float(np.abs(ours - theirs).max()) > 1e-9:
        raise RuntimeError("exported trees disagree with scikit-learn's predictions")
    return spec


def _spec(model: dict[str, Any], threshold: float = 0.5, min_cosine: float = 0.0
          ) -> dict[str, Any]:
    return {"format": 1, "features": list(FEATURE_NAMES), "model": model,
            "threshold": threshold, "min_cosine": min_cosine}


def _model_probabilities(model: dict[str, Any], x: np.ndarray) -> np.ndarray:
    verifier = SemanticVerifier(_spec(model))
    logits = np.clip(verifier._model.logits(x), -60.0, 60.0)
    return 1.0 / (1.0 + np.exp(-logits))


def simulate(index: VectorIndex, verifier: SemanticVerifier, queries: Sequence[Pair],
             vectors: np.ndarray, *, k: int) -> list[Outcome | None]:
    """Run each query through search + verifier; None where nothing was a candidate.

    Queries whose text is itself an entry are the exact tiers' business, not ours: the
    caller drops them before (see ``exact_repeat``).
    """
    outcomes: list[Outcome | None] = []
    for pair, vector in zip(queries, vectors, strict=True):
        best = verifier.best(pair.text_b, index.search(SCOPE, vector, k=k))
        if best is None:
            outcomes.append(None)
            continue
        neighbor, probability = best
        if neighbor.text == pair.text_a:
            kind = "correct" if pair.label == 1 else "wrong_own"
        else:
            kind = "wrong_other"
        outcomes.append(Outcome(probability, neighbor.cosine, kind))
    return outcomes


def precision_curve(outcomes: Sequence[Outcome | None], positives: int,
                    thresholds: Sequence[float]) -> list[dict[str, float]]:
    """Precision/recall of accepting every best candidate with probability >= t."""
    rows = []
    for t in thresholds:
        hits = [o for o in outcomes if o is not None and o.probability >= t]
        correct = sum(o.kind == "correct" for o in hits)
        wrong_own = sum(o.kind == "wrong_own" for o in hits)
        rows.append({
            "threshold": round(float(t), 4), "hits": len(hits), "correct": correct,
            "wrong_own": wrong_own, "wrong_other": len(hits) - correct - wrong_own,
            "precision": round(correct / len(hits), 4) if hits else 1.0,
            "recall": round(correct / positives, 4) if positives else 0.0,
        })
    return rows


def wilson_lower(correct: int, n: int, z: float = 1.96) -> float:
    """Lower end of the 95% Wilson interval of a precision of ``correct`` / ``n``."""
    if n == 0:
        return 0.0
    p = correct / n
    centre = p + z * z / (2 * n)
    margin = z * ((p * (1 - p) + z * z / (4 * n)) / n) ** 0.5
    return (centre - margin) / (1 + z * z / n)


def choose_threshold(outcomes: Sequence[Outcome | None], target: float, min_hits: int
                     ) -> tuple[float, bool, float]:
    """Lowest threshold whose hits reach ``target`` precision, with at least ``min_hits``
    hits behind the estimate. When no threshold reaches it, the one whose precision has
    the highest 95% lower bound: the most precise setting the data can vouch for, rather
    than a lucky handful of hits at the very top. Returns (threshold, reached, precision).
    """
    scored = sorted((o for o in outcomes if o is not None), key=lambda o: -o.probability)
    best: tuple[float, bool, float] | None = None
    fallback, fallback_bound = (1.0, False, 0.0), -1.0
    correct = 0
    for i, outcome in enumerate(scored, start=1):
        correct += outcome.kind == "correct"
        nxt = scored[i].probability if i < len(scored) else -1.0
        if nxt == outcome.probability or i < min_hits:
            continue  # only cut between distinct probabilities
        precision = correct / i
        if precision >= target:
            best = (outcome.probability, True, precision)
        bound = wilson_lower(correct, i)
        if bound > fallback_bound:
            fallback, fallback_bound = (outcome.probability, False, precision), bound
    return best or fallback


def exact_repeat(pair: Pair, entry_texts: set[str]) -> bool:
    return pair.text_b in entry_texts


def train(pairs_path: Path, *, out_dir: Path, model_kind: str, target: float, folds: int,
          k: int, min_cosine: float, trees: int, depth: int, learning_rate: float,
          min_hits: int, embeddings_cache: Path | None) -> dict[str, Any]:
    from services.embeddings import default_encoder

    fmt, pairs = load_pairs(pairs_path)
    if fmt != "qqp":
        raise SystemExit("training needs labelled pairs with negatives ({text_a,text_b,label})")
    training = [p for p in pairs if is_training_pair(p)]
    texts = sorted({t for p in training for t in (p.text_a, p.text_b)})
    log.info("%d training pairs of %d (%d duplicates), %d distinct texts to embed",
             len(training), len(pairs), sum(p.label for p in training), len(texts))
    vectors = encode_cached(default_encoder().encode, texts, embeddings_cache)
    row = {t: i for i, t in enumerate(texts)}

    x = np.array([pair_features(p.text_b, p.text_a, float(vectors[row[p.text_a]]
                                                            @ vectors[row[p.text_b]]))
                  for p in training])
    y = np.array([p.label for p in training], dtype=np.float64)

    def fit(xs: np.ndarray, ys: np.ndarray) -> dict[str, Any]:
        if model_kind == "logistic":
            return fit_logistic(xs, ys)
        return fit_trees(xs, ys, trees=trees, depth=depth, learning_rate=learning_rate)

    index = VectorIndex(vectors.shape[1])
    entry_texts = {p.text_a for p in training}
    for text in sorted(entry_texts):
        index.add(SCOPE, hashlib.sha256(text.encode()).hexdigest(), text, vectors[row[text]])
    fold_of = np.array([int(p.digest[8:16], 16) % folds for p in training])
    outcomes: list[Outcome | None] = []
    evaluated: list[Pair] = []
    for fold in range(folds):
        log.info("fold %d/%d", fold + 1, folds)
        held = fold_of == fold
        verifier = SemanticVerifier(_spec(fit(x[~held], y[~held]), min_cosine=min_cosine))
        queries = [p for p, h in zip(training, held, strict=True)
                   if h and not exact_repeat(p, entry_texts)]
        query_vectors = np.array([vectors[row[p.text_b]] for p in queries])
        outcomes += simulate(index, verifier, queries, query_vectors, k=k)
        evaluated += queries
    positives = sum(p.label for p in evaluated)
    threshold, reached, cv_precision = choose_threshold(outcomes, target, min_hits)
    grid = [round(t, 2) for t in np.arange(0.30, 0.991, 0.01)]
    curve = precision_curve(outcomes, positives, grid)
    at = precision_curve(outcomes, positives, [threshold])[0]
    log.info("threshold %.4f (target %.2f %s): cv precision %.4f recall %.4f, %d hits",
             threshold, target, "reached" if reached else "NOT reached", at["precision"],
             at["recall"], at["hits"])

    spec = _spec(fit(x, y), threshold=round(threshold, 6), min_cosine=min_cosine)
    spec["search_k"] = k
    spec["target_precision"] = target
    spec["calibration"] = {
        "method": f"{folds}-fold out-of-fold lookups over the training half: search all "
                  f"{len(entry_texts)} training entries, verify the best {k}; correct = own "
                  "labelled duplicate; other entries and label-0 pairs are wrong",
        "target_reached": reached, "precision": at["precision"], "recall": at["recall"],
        "hits": at["hits"], "queries": len(evaluated), "positives": positives,
        "exact_repeats_skipped": sum(exact_repeat(p, entry_texts) for p in training),
        "curve": curve,
    }
    manifest = sorted(p.digest[:16] for p in training)
    manifest_text = ("# semantic verifier training pairs: first 16 hex digits of "
                     "sha256(text_a + '\\n' + text_b)\n"
                     f"# rule: {SPLIT_RULE}\n# source: {pairs_path.name}\n"
                     + "".join(f"{h}\n" for h in manifest))
    spec["training"] = {
        "pairs_file": pairs_path.name,
        "pairs_file_sha256": hashlib.sha256(pairs_path.read_bytes()).hexdigest(),
        "split_rule": SPLIT_RULE, "pairs": len(training),
        "duplicates": int(y.sum()), "manifest": MANIFEST_NAME,
        "manifest_sha256": hashlib.sha256(manifest_text.encode()).hexdigest(),
        "model": {"kind": model_kind, "trees": trees, "max_depth": depth,
                  "learning_rate": learning_rate} if model_kind == "gbdt"
        else {"kind": model_kind, "l2": 1.0},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).write_text(manifest_text)
    (out_dir / "verifier.json").write_text(json.dumps(spec, separators=(",", ":")) + "\n")
    return spec


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, required=True, help="QQP-format pairs (JSON)")
    parser.add_argument("--out", type=Path, default=PACKAGE_DIR)
    parser.add_argument("--model", choices=("gbdt", "logistic"), default="gbdt")
    parser.add_argument("--target-precision", type=float, default=0.97)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--k", type=int, default=4, help="candidates verified per lookup")
    parser.add_argument("--min-cosine", type=float, default=0.5,
                        help="candidates below this cosine are not scored")
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--min-hits", type=int, default=30,
                        help="hits needed behind a calibrated precision estimate")
    parser.add_argument("--embeddings-cache", type=Path, default=None,
                        help="an .npz to keep text embeddings in between runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(args.pairs, out_dir=args.out, model_kind=args.model, target=args.target_precision,
          folds=args.folds, k=args.k, min_cosine=args.min_cosine, trees=args.trees,
          depth=args.depth, learning_rate=args.learning_rate, min_hits=args.min_hits,
          embeddings_cache=args.embeddings_cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
