"""Train and calibrate the complexity router: ``python -m services.routing.train``.

    python -m services.routing.train --data ../shared/data/routing/routellm_mmlu/responses

The label is "the weak model got it wrong" (so the strong one is needed); a logistic
regression (scikit-learn, at training time only) fits it on ``features.featurize``.
Thresholds are calibrated on out-of-fold scores of a group split (whole subjects held
out), the setting the router meets in production: prompts from topics it never saw.
Requests are ranked by cost-aware priority (``router.relative_cost``) and, for requests
whose cost the answer dominates, by probability alone; for each ranking and quality
target the threshold is the cheapest cut that keeps ``target`` x the strong model's
accuracy. The final model is
then fitted on all rows. Deterministic (fixed fold assignment and solver).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from services.routing.data import RoutingData, load_routing_data
from services.routing.features import N_FEATURES, featurize
from services.routing.router import (
    OUTPUT_PAD_TOKENS,
    SHIPPED_MODEL,
    ComplexityRouter,
    relative_cost,
)

log = logging.getLogger(__name__)

TARGETS = (0.90, 0.95, 0.99)
DEFAULT_C = 0.5


def feature_matrix(prompts: Sequence[str]) -> sparse.csr_matrix:
    rows = [featurize(p) for p in prompts]
    indptr = np.cumsum([0] + [len(c) for c, _ in rows])
    indices = np.concatenate([c for c, _ in rows]) if rows else np.zeros(0, np.int64)
    data = np.concatenate([v for _, v in rows]) if rows else np.zeros(0, np.float32)
    return sparse.csr_matrix((data, indices, indptr), shape=(len(rows), N_FEATURES))


def fit_weights(
    x: sparse.csr_matrix, needs_strong: np.ndarray, *, c: float = DEFAULT_C,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    if len(set(needs_strong.tolist())) < 2:
        raise ValueError("training labels are all one class: nothing to learn from")
    model = LogisticRegression(C=c, max_iter=2000, solver="liblinear")
    model.fit(x, needs_strong, sample_weight=sample_weight)
    return model.coef_[0].astype(np.float32), float(model.intercept_[0])


def group_folds(groups: Sequence[str], folds: int) -> np.ndarray:
    """Fold of each row, by a hash of its group: whole groups (subjects) stay together."""
    def fold(group: str) -> int:
        return int(hashlib.sha256(group.encode()).hexdigest(), 16) % folds

    return np.asarray([fold(g) for g in groups])


def out_of_fold_scores(
    data: RoutingData, x: sparse.csr_matrix, needs_strong: np.ndarray, *, folds: int = 5,
    c: float = DEFAULT_C,
) -> np.ndarray:
    """P(strong needed) of every row from a model that never saw its group."""
    assignment = group_folds(data.groups, folds)
    scores = np.zeros(len(data.prompts))
    for k in range(folds):
        test = assignment == k
        if not test.any() or test.all():
            continue
        weights, bias = fit_weights(x[~test], needs_strong[~test], c=c)
        scores[test] = 1.0 / (1.0 + np.exp(-(x[test] @ weights + bias)))
    return scores


@dataclass(frozen=True)
class CurvePoint:
    strong_fraction: float
    accuracy: float
    quality: float  # accuracy / strong model's accuracy
    cost_saved: float  # vs sending everything to the strong model
    threshold: float


def routing_curve(
    scores: np.ndarray, weak_ok: np.ndarray, strong_ok: np.ndarray,
    weak_cost: np.ndarray, strong_cost: np.ndarray,
) -> list[CurvePoint]:
    """Every cut of the score order: the top-k scored prompts go to the strong model."""
    order = np.argsort(-scores, kind="stable")
    n = len(scores)
    gain = (strong_ok.astype(float) - weak_ok.astype(float))[order]
    extra = (strong_cost - weak_cost)[order]
    accuracy = (weak_ok.sum() + np.concatenate([[0.0], np.cumsum(gain)])) / n
    cost = weak_cost.sum() + np.concatenate([[0.0], np.cumsum(extra)])
    all_strong = strong_cost.sum()
    strong_acc = strong_ok.mean()
    sorted_scores = scores[order]
    points = []
    for k in range(n + 1):
        threshold = float(sorted_scores[k - 1]) if k > 0 else float("inf")
        points.append(CurvePoint(
            strong_fraction=k / n,
            accuracy=float(accuracy[k]),
            quality=float(accuracy[k] / strong_acc) if strong_acc else 1.0,
            cost_saved=float(1 - cost[k] / all_strong),
            threshold=threshold,
        ))
    return points


def cheapest_at(points: Sequence[CurvePoint], target: float) -> CurvePoint:
    """The cut with the fewest strong calls whose quality reaches ``target``."""
    for point in points:
        if point.quality >= target - 1e-12:
            return point
    return points[-1]


def train_router(
    data: RoutingData, *, weak: str | None = None, strong: str | None = None,
    folds: int = 5, c: float = DEFAULT_C, version: str = "v1",
    targets: Sequence[float] = TARGETS,
) -> tuple[ComplexityRouter, np.ndarray]:
    """Fit on all rows; thresholds from out-of-fold scores. Returns (router, oof scores)."""
    weak, strong = data.pick_pair(weak, strong)
    x = feature_matrix(data.prompts)
    needs_strong = ~data.correct[weak]
    oof = out_of_fold_scores(data, x, needs_strong, folds=folds, c=c)
    weak_ok, strong_ok = data.correct[weak], data.correct[strong]
    cost = np.asarray([relative_cost(len(p)) for p in data.prompts])
    by_cost = routing_curve(oof / cost, weak_ok, strong_ok, 0 * cost, cost)
    ones = np.ones(len(oof))
    by_p = routing_curve(oof, weak_ok, strong_ok, 0 * ones, ones)
    thresholds = {float(t): cheapest_at(by_p, t).threshold for t in targets}
    cost_thresholds = {float(t): cheapest_at(by_cost, t).threshold for t in targets}
    weights, bias = fit_weights(x, needs_strong, c=c)
    meta = {
        "weak": weak, "strong": strong, "rows": len(data.prompts), "folds": folds, "C": c,
        "groups": len(set(data.groups)), "pad_tokens": OUTPUT_PAD_TOKENS,
    }
    return ComplexityRouter(
        weights, bias, thresholds, cost_thresholds, version=version, meta=meta
    ), oof


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="CSV file or folder")
    parser.add_argument("--out", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--weak")
    parser.add_argument("--strong")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("-C", type=float, default=DEFAULT_C)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = load_routing_data(args.data)
    router, _ = train_router(data, weak=args.weak, strong=args.strong, folds=args.folds,
                             c=args.C)
    router.save(args.out)
    log.info("wrote %s: thresholds %s", args.out, router.thresholds)


if __name__ == "__main__":
    main()
