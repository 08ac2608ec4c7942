"""Retraining the complexity router from the store's own labels, and its versions.

Labels (did a prompt need the strong tier?) come from:

- cascade outcomes in ``request_log`` (``cascade_decision``): a cheap answer the cascade's
  judge accepted says the cheap tier was enough; one it escalated (or kept only for lack
  of time) says it was not; rows logged before the decision had its column are read
  from their route reason;
- ``routing_labels``: user feedback (``POST /v1/feedback``, ``services.routing.feedback``),
  A/B outcomes, reviews, written by ``record_label``.

Only prompts whose text is stored count (``store_prompts``, or a label's own text).
A new router is trained on them (``train.train_router``, the same features and
calibration as the shipped one, folds by prompt hash) and stored in ``router_versions``;
it becomes the active version only when, on the out-of-fold labels, it sends fewer
requests to the strong tier at the quality target than the active router does on the
same labels. The gateway loads the active version (``load_active_router``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, delete, or_, select, update
from sqlalchemy.orm import Session

from models.tables import RequestLog, RouterVersion, RoutingLabel
from services.routing.data import RoutingData
from services.routing.router import DEFAULT_TARGET, ComplexityRouter, relative_cost
from services.routing.text import prompt_text
from services.routing.train import cheapest_at, routing_curve, train_router

ESCALATED = "cascade: cheap attempt escalated"
ACCEPTED = "cascade: accepted"
# request_log.cascade_decision of a request's own row -> did it need the strong tier?
NEEDS_STRONG = {"accepted": False, "escalated": True, "kept_late": True}
_CHEAP, _STRONG = "cheap-tier", "strong-tier"


@dataclass
class Labels:
    prompts: list[str] = field(default_factory=list)
    needs_strong: list[bool] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)

    def add(self, text: str, needs_strong: bool, source: str) -> None:
        if text.strip():
            self.prompts.append(text)
            self.needs_strong.append(needs_strong)
            self.sources[source] = self.sources.get(source, 0) + 1

    def as_data(self) -> RoutingData:
        """Labels as routing data: the strong tier counted right, the cheap one as labelled."""
        needs = np.asarray(self.needs_strong, dtype=bool)
        # one family ("store"), folds by prompt hash
        groups = [f"store_{hashlib.sha256(p.encode()).hexdigest()[:2]}" for p in self.prompts]
        return RoutingData(self.prompts, groups, {_CHEAP: ~needs, _STRONG: np.ones_like(needs)})


@dataclass(frozen=True)
class RetrainResult:
    status: str  # "skipped" | "trained" | "activated"
    reason: str
    version: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def record_label(
    engine: Engine, *, prompt_text: str, needs_strong: bool, source: str,
    request_id: str | None = None, weight: float = 1.0, replace: bool = False,
) -> None:
    """Store one label; ``replace`` drops the source's earlier labels of the same request
    first (a user who changes their rating leaves one label, not two)."""
    with Session(engine) as session, session.begin():
        if replace and request_id is not None:
            session.execute(delete(RoutingLabel).where(RoutingLabel.request_id == request_id,
                                                       RoutingLabel.source == source))
        session.add(RoutingLabel(prompt_text=prompt_text, needs_strong=needs_strong,
                                 source=source, request_id=request_id, weight=weight))


def collect_labels(engine: Engine, *, since: datetime) -> Labels:
    labels = Labels()
    with Session(engine) as session:
        cascade = session.execute(
            select(RequestLog.prompt_text, RequestLog.cascade_decision, RequestLog.endpoint)
            .where(RequestLog.created_at >= since, RequestLog.prompt_text.is_not(None),
                   RequestLog.cascade_decision.in_(NEEDS_STRONG))
        )
        for stored, decision, endpoint in cascade:
            labels.add(stored_prompt(stored, endpoint), NEEDS_STRONG[decision], "cascade")
        legacy = session.execute(
            select(RequestLog.prompt_text, RequestLog.route_reason, RequestLog.endpoint).where(
                RequestLog.created_at >= since,
                RequestLog.prompt_text.is_not(None),
                RequestLog.cascade_decision.is_(None),
                or_(RequestLog.route_reason.like(f"{ESCALATED}%"),
                    RequestLog.route_reason.like(f"%{ACCEPTED}%")),
            )
        )
        for stored, reason, endpoint in legacy:
            labels.add(stored_prompt(stored, endpoint), reason.startswith(ESCALATED), "cascade")
        for row in session.scalars(select(RoutingLabel).where(RoutingLabel.created_at >= since)):
            labels.add(row.prompt_text, row.needs_strong, row.source)
    return labels


def stored_prompt(stored: str, endpoint: str) -> str:
    """The text of ``request_log.prompt_text``, which holds the messages (or prompt) as
    JSON."""
    try:
        value = json.loads(stored)
    except json.JSONDecodeError:
        return stored
    if endpoint == "chat.completions" and isinstance(value, list):
        return prompt_text({"messages": value}, endpoint)
    return prompt_text({"prompt": value}, "completions")


def strong_fraction_at(scores: np.ndarray, data: RoutingData, target: float) -> float:
    cost = np.asarray([relative_cost(len(p)) for p in data.prompts])
    curve = routing_curve(scores / cost, data.correct[_CHEAP], data.correct[_STRONG],
                          0 * cost, cost)
    return cheapest_at(curve, target).strong_fraction


def load_active_router(engine: Engine) -> ComplexityRouter | None:
    with Session(engine) as session:
        raw = session.scalar(
            select(RouterVersion.model).where(RouterVersion.active.is_(True))
            .order_by(RouterVersion.activated_at.desc()).limit(1)
        )
    return ComplexityRouter.from_bytes(raw) if raw is not None else None


def retrain(
    engine: Engine, *, since: datetime, current: ComplexityRouter, min_labels: int = 200,
    target: float = DEFAULT_TARGET, folds: int = 5,
) -> RetrainResult:
    labels = collect_labels(engine, since=since)
    n, positives = len(labels.prompts), sum(labels.needs_strong)
    if n < min_labels or positives in (0, n):
        return RetrainResult("skipped", f"{n} labels ({positives} need the strong tier); "
                             f"need {min_labels} with both outcomes", metrics={"labels": n})
    data = labels.as_data()
    version = f"v{datetime.now(UTC):%Y%m%dT%H%M%S.%f}"
    router, oof = train_router(data, weak=_CHEAP, strong=_STRONG, folds=folds, version=version)
    current_scores = np.asarray([current.p_strong(p) for p in data.prompts])
    metrics = {
        "labels": n, "needs_strong": positives, "sources": labels.sources, "target": target,
        "strong_fraction": strong_fraction_at(oof, data, target),
        "active_strong_fraction": strong_fraction_at(current_scores, data, target),
        "previous_version": current.version,
    }
    better = metrics["strong_fraction"] < metrics["active_strong_fraction"]
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        if better:
            session.execute(update(RouterVersion).values(active=False))
        session.add(RouterVersion(version=version, model=router.to_bytes(), labels=n,
                                  metrics=metrics, active=better,
                                  activated_at=now if better else None))
    if better:
        return RetrainResult("activated", "fewer strong calls at the quality target",
                             version, metrics)
    return RetrainResult("trained", "not better than the active router; kept it",
                         version, metrics)
