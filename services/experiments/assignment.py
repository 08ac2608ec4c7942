"""Sticky assignment of units to arms, and the live experiments gateways apply.

A unit (tenant, API key or the ``X-Experiment-Unit`` header) is hashed with the
experiment's name to a point in [0, 1); the arms split that interval in their stored
order, so every replica puts a unit in the same arm with no shared state, and separate
experiments assign independently. A canary's control comes first and its canary
second, so the canary holds the top ``share`` of the interval: raising the share from
5% to 25% only moves units from control to canary, never back, and a unit never sees
two arms of one step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from models import ConfigVersion, Experiment, ExperimentArm
from services.experiments.store import LIVE

UNIT_HEADER = "x-experiment-unit"


def bucket(experiment: str, unit: str) -> float:
    digest = hashlib.blake2b(f"{experiment}\x00{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True, slots=True)
class LiveArm:
    name: str
    config: str
    overrides: Mapping[str, Any]
    upper: float  # the arm holds [previous arm's upper, upper)


@dataclass(frozen=True, slots=True)
class LiveExperiment:
    name: str
    unit: str
    tenants: frozenset[str] | None
    arms: tuple[LiveArm, ...]

    def applies_to(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def arm_for(self, unit: str) -> LiveArm | None:
        point = bucket(self.name, unit)
        for arm in self.arms:
            if point < arm.upper:
                return arm if arm.upper > 0 else None
        return None


def live_arms(arms: list[tuple[str, str, Mapping[str, Any], float]]) -> tuple[LiveArm, ...]:
    """Arms (name, config, overrides, weight) in stored order, as hash ranges; arms with
    no weight get none, and the last arm with weight closes the interval at 1."""
    out = []
    upper = 0.0
    last = max((i for i, a in enumerate(arms) if a[3] > 0), default=-1)
    for i, (name, config, overrides, weight) in enumerate(arms):
        if weight <= 0:
            continue
        upper = 1.0 if i == last else upper + weight
        out.append(LiveArm(name, config, dict(overrides), upper))
    return tuple(out)


def load_live(engine: Engine) -> list[LiveExperiment]:
    """The experiments gateways apply now (running, paused, promoted), oldest first."""
    with Session(engine) as session:
        experiments = list(session.scalars(
            select(Experiment).where(Experiment.status.in_(LIVE))
            .order_by(Experiment.created_at)))
        rows = session.execute(
            select(ExperimentArm, ConfigVersion.overrides)
            .join(ConfigVersion, ConfigVersion.name == ExperimentArm.config_version)
            .where(ExperimentArm.experiment.in_([e.name for e in experiments]))
            .order_by(ExperimentArm.experiment, ExperimentArm.position)).all()
    arms: dict[str, list[tuple[str, str, Mapping[str, Any], float]]] = {}
    for arm, overrides in rows:
        arms.setdefault(arm.experiment, []).append(
            (arm.name, arm.config_version, overrides, arm.weight))
    return [LiveExperiment(e.name, e.unit, frozenset(e.tenants) if e.tenants else None,
                           live_arms(arms.get(e.name, [])))
            for e in experiments]
