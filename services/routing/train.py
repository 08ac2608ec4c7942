"""Train and calibrate the router, its novelty detector and the cascade's answer judge.

    python -m services.routing.train \
        --data ../shared/data/routing/routellm_mmlu/responses \
        --data ../shared/data/routing/routellm_gsm8k_dev

The router's label is "the weak model got it wrong" (so the strong one is needed); a
logistic regression (scikit-learn, at training time only) fits it on
``features.featurize``. With more than one task family in the data (MMLU's four
categories, GSM8K: ``data.task_family``) thresholds are calibrated on leave-family-out
scores: every prompt is scored by a router that never saw its kind of task, the setting
the router meets on new traffic; with one family, on a split by file (subject). Requests
are ranked by cost-aware priority (``router.relative_cost``) and, for requests whose cost
the answer dominates, by probability alone; for each ranking and quality target the
threshold is the cheapest cut that keeps ``target`` x the strong model's accuracy. The
final model is then fitted on all rows.

The novelty detector (``novelty``) keeps a sample of the training prompts; the answer
judge (``judge``) is trained on the rows that carry the models' answers
(``*_response`` columns), with the router's leave-family-out score as one feature.
Deterministic (fixed fold assignment and solver).
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

from services.routing.data import RoutingData, concat, load_routing_data, task_family
from services.routing.features import N_FEATURES, featurize
from services.routing.judge import SHIPPED_JUDGE, AnswerJudge
from services.routing.novelty import (
    SHIPPED_NOVELTY,
    NoveltyDetector,
    fit_novelty,
    sample_references,
)
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


def family_folds(groups: Sequence[str]) -> np.ndarray:
    """Fold of each row = its task family (leave-family-out)."""
    families = sorted({task_family(g) for g in groups})
    return np.asarray([families.index(task_family(g)) for g in groups])


def fold_assignment(groups: Sequence[str], folds: int) -> np.ndarray:
    """Leave-family-out when there are several families, else ``folds`` group folds."""
    by_family = family_folds(groups)
    return by_family if by_family.max(initial=0) >= 1 else group_folds(groups, folds)


def out_of_fold_scores(
    data: RoutingData, x: sparse.csr_matrix, needs_strong: np.ndarray, *, folds: int = 5,
    c: float = DEFAULT_C, assignment: np.ndarray | None = None,
) -> np.ndarray:
    """P(strong needed) of every row from a model that never saw its group (its family,
    with ``assignment = family_folds(...)``)."""
    if assignment is None:
        assignment = group_folds(data.groups, folds)
    scores = np.zeros(len(data.prompts))
    for k in range(int(assignment.max(initial=0)) + 1):
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
    assignment = fold_assignment(data.groups, folds)
    oof = out_of_fold_scores(data, x, needs_strong, c=c, assignment=assignment)
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
        "families": sorted({task_family(g) for g in data.groups}),
        "calibration": "leave-family-out" if assignment.max(initial=0) >= 1
        and len({task_family(g) for g in data.groups}) > 1 else "group split",
    }
    return ComplexityRouter(
        weights, bias, thresholds, cost_thresholds, version=version, meta=meta
    ), oof


@dataclass(frozen=True)
class Trained:
    router: ComplexityRouter
    novelty: NoveltyDetector
    judge: AnswerJudge | None
    router_oof: np.ndarray  # P(strong needed), leave-family-out
    judge_oof: np.ndarray | None  # P(cheap answer right) of the judged rows, out of fold
    judged_rows: np.ndarray  # indices of the rows with the cheap model's answer


def fit_novelty_on(data: RoutingData) -> NoveltyDetector:
    """References: up to ``PER_GROUP`` prompts per file (subject); a family of one file
    (GSM8K) is calibrated prompt by prompt, as its prompts are its only topics."""
    families: dict[str, set[str]] = {}
    for g in data.groups:
        families.setdefault(task_family(g), set()).add(g)
    calibration = [g if len(families[task_family(g)]) > 1 else f"{g}#{i}"
                   for i, g in enumerate(data.groups)]
    chosen = sample_references(
        [g if len(families[task_family(g)]) > 1 else f"{g}#{i % 11}"
         for i, g in enumerate(data.groups)])
    return fit_novelty([data.prompts[i] for i in chosen], [calibration[i] for i in chosen])


def train_all(
    data: RoutingData, *, weak: str | None = None, strong: str | None = None,
    folds: int = 5, c: float = DEFAULT_C, targets: Sequence[float] = TARGETS,
) -> Trained:
    """The router (thresholds leave-family-out), its novelty detector, and the answer
    judge when the data carries the weak model's answers."""
    from services.routing.train_judge import JudgeData, train_judge

    weak, strong = data.pick_pair(weak, strong)
    router, oof = train_router(data, weak=weak, strong=strong, folds=folds, c=c,
                               targets=targets)
    novelty = fit_novelty_on(data)
    answers = data.responses.get(weak, [])
    rows = np.asarray([i for i, a in enumerate(answers) if a.strip()], dtype=np.int64)
    if len(rows) < 50:
        return Trained(router, novelty, None, oof, None, rows)
    judged = JudgeData([data.prompts[i] for i in rows], [answers[i] for i in rows],
                       data.correct[weak][rows], oof[rows])
    judge, judge_oof = train_judge(
        judged, cheap_rows=np.arange(len(rows)), weak_ok=data.correct[weak][rows],
        strong_ok=data.correct[strong][rows], targets=targets, folds=folds,
    )
    return Trained(router, novelty, judge, oof, judge_oof, rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", required=True,
                        help="CSV file or folder; repeat for several task families")
    parser.add_argument("--out", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--novelty-out", type=Path, default=SHIPPED_NOVELTY)
    parser.add_argument("--judge-out", type=Path, default=SHIPPED_JUDGE)
    parser.add_argument("--weak")
    parser.add_argument("--strong")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("-C", type=float, default=DEFAULT_C)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = concat([load_routing_data(path) for path in args.data])
    trained = train_all(data, weak=args.weak, strong=args.strong, folds=args.folds, c=args.C)
    trained.router.save(args.out)
    log.info("wrote %s: thresholds %s (%s)", args.out, trained.router.thresholds,
             trained.router.meta["calibration"])
    trained.novelty.save(args.novelty_out)
    log.info("wrote %s: threshold %.3f", args.novelty_out, trained.novelty.threshold)
    if trained.judge is not None:
        trained.judge.save(args.judge_out)
        log.info("wrote %s: thresholds %s", args.judge_out, trained.judge.thresholds)


if __name__ == "__main__":
    main()
