"""Train and calibrate the semantic verifier: ``python -m services.caching.semantic.train``.

    python -m services.caching.semantic.train --pairs ../shared/data/cache/qqp_pairs_dev.json

Writes ``verifier.json`` (the model, the calibrated threshold and the calibration curve)
and ``training_pairs.txt`` (the hashes of the pairs it learned from, which the benchmark
excludes) next to this file. Deterministic: the training pairs are chosen by a hash rule
(``corpus.SPLIT_RULE``), folds by another hash, and the models have fixed seeds.

The model learns from the training pairs plus synthetic hard negatives made from them
(``augment.py``: a number changed, a negation flipped, a name swapped), because Quora's
pairs rarely teach those.

Calibration imitates production, not pair classification: for each of ``--folds`` folds
a model fitted on the other folds answers the fold's questions through the real lookup
(vector search over every training entry, then the verifier on the nearest), and a hit
is correct only when it returns the question's own labelled duplicate. The threshold is
the lowest probability whose hits reach the target precision in those out-of-fold
lookups, judged by default on the hits a label exists for (``--calibrate-on``; see
``choose_threshold``). Gradient boosting needs scikit-learn at training time only; the
shipped model is evaluated with NumPy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.caching.semantic.augment import hard_negatives
from services.caching.semantic.corpus import (
    SPLIT_RULE,
    Pair,
    encode_cached,
    is_training_pair,
    load_pairs,
)
from services.caching.semantic.features import FEATURE_NAMES, pair_features, same_words_key
from services.caching.semantic.index import VectorIndex
from services.caching.semantic.verifier import SemanticVerifier
from services.embeddings import DEFAULT_ENCODER, ENCODER_KINDS, default_encoder

log = logging.getLogger("semantic.train")
PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST_NAME = "training_pairs.txt"
SCOPE = ("train", "train")


@dataclass(frozen=True, slots=True)
class Outcome:
    """The best candidate of one simulated lookup and how it would have been judged."""

    probability: float
    cosine: float
    # "correct" | "wrong_own" (own pair, label 0) | "wrong_other" (another entry); the
    # benchmark splits "other_labelled" off "wrong_other": another entry, labelled elsewhere
    # as the same question (still a wrong hit)
    kind: str
    same_words: bool = False  # accepted by the same-words rule, whatever the threshold


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
        same = same_words_key(neighbor.text) == same_words_key(pair.text_b)
        outcomes.append(Outcome(probability, neighbor.cosine, kind, same))
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
            "other_labelled": sum(o.kind == "other_labelled" for o in hits),
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


def choose_threshold(outcomes: Sequence[Outcome | None], target: float, min_hits: int, *,
                     labelled_only: bool = True) -> tuple[float, bool, float]:
    """Lowest threshold whose hits reach ``target`` precision, with at least ``min_hits``
    judged hits behind the estimate. When no threshold reaches it, the one whose precision
    has the highest 95% lower bound: the most precise setting the data can vouch for,
    rather than a lucky handful of hits at the very top. Returns (threshold, reached,
    precision).

    ``labelled_only``: judge only hits on the query's own pair, whose label says whether
    they are right. A hit on another entry has no label; read by hand, most are true
    duplicates (Quora asks the same question many times), so counting them all as wrong
    would calibrate on the data set's missing labels rather than on the verifier.

    Hits of the same-words rule are left out: no threshold decides them.
    """
    scored = sorted((o for o in outcomes if o is not None and not o.same_words),
                    key=lambda o: -o.probability)
    best: tuple[float, bool, float] | None = None
    fallback, fallback_bound = (1.0, False, 0.0), -1.0
    correct = judged = 0
    for i, outcome in enumerate(scored, start=1):
        correct += outcome.kind == "correct"
        judged += outcome.kind != "wrong_other" or not labelled_only
        nxt = scored[i].probability if i < len(scored) else -1.0
        if nxt == outcome.probability or judged < min_hits:
            continue  # only cut between distinct probabilities
        precision = correct / judged
        if precision >= target:
            best = (outcome.probability, True, precision)
        bound = wilson_lower(correct, judged)
        if bound > fallback_bound:
            fallback, fallback_bound = (outcome.probability, False, precision), bound
    return best or fallback


def exact_repeat(pair: Pair, entry_texts: set[str]) -> bool:
    return pair.text_b in entry_texts


def train(pairs_path: Path, *, out_dir: Path, model_kind: str, target: float, folds: int,
          k: int, min_cosine: float, trees: int, depth: int, learning_rate: float,
          min_hits: int, hard_negatives_per_kind: int, embeddings_cache: Path | None,
          labelled_only: bool = True, encoder: str = DEFAULT_ENCODER,
          encode: Callable[[Sequence[str]], np.ndarray] | None = None) -> dict[str, Any]:
    """``encoder`` names the embedding encoder the verifier is calibrated on (recorded in
    the spec); ``encode`` replaces it (tests)."""
    if encode is None:
        encode = default_encoder(encoder).encode  # type: ignore[arg-type]
    fmt, pairs = load_pairs(pairs_path)
    if fmt != "qqp":
        raise SystemExit("training needs labelled pairs with negatives ({text_a,text_b,label})")
    training = [p for p in pairs if is_training_pair(p)]
    fold_of_text = {}
    for p in training:  # a synthetic pair trains only where its source pair does
        fold_of_text.setdefault(p.text_a, int(p.digest[8:16], 16) % folds)
    synthetic = [Pair(original, altered, 0) for original, altered, _ in
                 hard_negatives(list(fold_of_text), per_kind=hard_negatives_per_kind)]
    texts = sorted({t for p in (*training, *synthetic) for t in (p.text_a, p.text_b)})
    log.info("%d training pairs of %d (%d duplicates) + %d synthetic hard negatives, "
             "%d distinct texts to embed", len(training), len(pairs),
             sum(p.label for p in training), len(synthetic), len(texts))
    vectors = encode_cached(encode, texts, embeddings_cache)
    row = {t: i for i, t in enumerate(texts)}

    def features(batch: Sequence[Pair]) -> np.ndarray:
        return np.array([pair_features(p.text_b, p.text_a, float(vectors[row[p.text_a]]
                                                                 @ vectors[row[p.text_b]]))
                         for p in batch]).reshape(len(batch), -1)

    x_real, x_syn = features(training), features(synthetic)
    x = np.vstack([x_real, x_syn])
    y = np.array([p.label for p in (*training, *synthetic)], dtype=np.float64)

    def fit(xs: np.ndarray, ys: np.ndarray) -> dict[str, Any]:
        if model_kind == "logistic":
            return fit_logistic(xs, ys)
        return fit_trees(xs, ys, trees=trees, depth=depth, learning_rate=learning_rate)

    index = VectorIndex(vectors.shape[1])
    entry_texts = {p.text_a for p in training}
    for text in sorted(entry_texts):
        index.add(SCOPE, hashlib.sha256(text.encode()).hexdigest(), text, vectors[row[text]])
    fold_of = np.array([int(p.digest[8:16], 16) % folds for p in training]
                       + [fold_of_text[p.text_a] for p in synthetic], dtype=np.int64)
    outcomes: list[Outcome | None] = []
    evaluated: list[Pair] = []
    for fold in range(folds):
        log.info("fold %d/%d", fold + 1, folds)
        held = fold_of == fold
        verifier = SemanticVerifier(_spec(fit(x[~held], y[~held]), min_cosine=min_cosine))
        queries = [p for p, h in zip(training, held[: len(training)], strict=True)
                   if h and not exact_repeat(p, entry_texts)]
        query_vectors = np.array([vectors[row[p.text_b]] for p in queries])
        outcomes += simulate(index, verifier, queries, query_vectors, k=k)
        evaluated += queries
    positives = sum(p.label for p in evaluated)
    threshold, reached, cv_precision = choose_threshold(outcomes, target, min_hits,
                                                        labelled_only=labelled_only)
    grid = [round(t, 2) for t in np.arange(0.30, 0.991, 0.01)]
    curve = precision_curve(outcomes, positives, grid)
    at = precision_curve(outcomes, positives, [threshold])[0]
    log.info("threshold %.4f (target %.2f %s, %s precision %.4f): all hits precision %.4f, "
             "recall %.4f, %d hits", threshold, target, "reached" if reached else "NOT reached",
             "labelled-hit" if labelled_only else "all-hit", cv_precision, at["precision"],
             at["recall"], at["hits"])

    spec = _spec(fit(x, y), threshold=round(threshold, 6), min_cosine=min_cosine)
    spec["search_k"] = k
    spec["target_precision"] = target
    spec["calibration"] = {
        "method": f"{folds}-fold out-of-fold lookups over the training half: search all "
                  f"{len(entry_texts)} training entries, verify the nearest; correct = own "
                  "labelled duplicate; wrong_own = own pair labelled 0; wrong_other = "
                  "another entry (unlabelled)",
        "calibrated_on": "labelled hits (correct / (correct + wrong_own))" if labelled_only
        else "all hits",
        "target_reached": reached, "calibrated_precision": round(cv_precision, 4),
        "precision": at["precision"], "recall": at["recall"],
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
        "split_rule": SPLIT_RULE, "pairs": len(training), "encoder": encoder,
        "duplicates": int(y.sum()), "synthetic_hard_negatives": len(synthetic),
        "manifest": MANIFEST_NAME,
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
    parser.add_argument("--calibrate-on", choices=("labelled", "all"), default="labelled",
                        help="precision over hits on the query's own (labelled) pair, or over "
                             "all hits counting other entries as wrong")
    parser.add_argument("--hard-negatives", type=int, default=600,
                        help="synthetic hard negatives per kind (number, negation, ...)")
    parser.add_argument("--encoder", choices=ENCODER_KINDS,
                        default=DEFAULT_ENCODER, help="embedding encoder to calibrate on "
                        "(the one the app uses: setting embedding_encoder)")
    parser.add_argument("--embeddings-cache", type=Path, default=None,
                        help="an .npz to keep text embeddings in between runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(args.pairs, out_dir=args.out, model_kind=args.model, target=args.target_precision,
          folds=args.folds, k=args.k, min_cosine=args.min_cosine, trees=args.trees,
          depth=args.depth, learning_rate=args.learning_rate, min_hits=args.min_hits,
          hard_negatives_per_kind=args.hard_negatives, embeddings_cache=args.embeddings_cache,
          labelled_only=args.calibrate_on == "labelled", encoder=args.encoder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
