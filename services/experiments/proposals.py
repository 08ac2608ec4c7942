"""Proposed settings (what ``optengine optimize`` writes) started as canaries.

A proposal is a mapping of settings. Each part the gateway can apply per request
becomes one canary: a control config version with no overrides and a canary version
with the proposed value, limited to the tenants the proposal names:

- ``token_optimization_tenants: {tenant: policy}``: one canary per policy, for its
  tenants (``token_optimization`` override);
- any key of ``OVERRIDABLE`` (``token_optimization``, ``cache_semantic``, ``model``, ...):
  one canary for every tenant.

A part the gateway cannot switch per request is left out with the reason: the response
cache is built at start-up, so ``cache_enabled: true`` is a settings change (a canary of
it runs the other way round: cache on, a control of ``cache_enabled: false``), and so is
the ``routing`` config. Versions and experiments are named ``<prefix>-<lever>`` and
audited as their ``actor``; nothing is written when any part is invalid.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from models import ConfigVersion, Experiment
from services.errors import Conflict, InvalidRequest
from services.experiments.store import (
    NAME,
    OVERRIDABLE,
    check_conflicts,
    check_pacing,
    check_pool,
    create_config,
    create_experiment,
    describe,
    transition,
    validate_overrides,
)

_UNSAFE = re.compile(r"[^a-z0-9._-]+")
NOT_PER_REQUEST = {
    "cache_enabled": "the response cache is built when the gateway starts: turn it on in "
                     "the settings, then canary it with a control of cache_enabled=false",
    "routing": "the routing config is read when the gateway starts: change it in the "
               "settings, or canary routing for some tenants with a version that sets "
               "model=auto",
}


@dataclass(frozen=True, slots=True)
class Planned:
    name: str
    overrides: dict[str, Any]
    tenants: list[str] | None


@dataclass
class ProposalResult:
    canaries: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _slug(text: str) -> str:
    return _UNSAFE.sub("-", text.lower()).strip("-.")


def plan_canaries(proposal: Mapping[str, Any], prefix: str
                  ) -> tuple[list[Planned], dict[str, str]]:
    """The canaries a proposal makes and the parts left out (setting -> why)."""
    if not isinstance(proposal, Mapping) or not proposal:
        raise InvalidRequest("a proposal is a non-empty mapping of settings",
                             param="proposal")
    planned: list[Planned] = []
    skipped: dict[str, str] = {}
    for key, value in proposal.items():
        if key == "token_optimization_tenants":
            if not isinstance(value, Mapping) or not value:
                raise InvalidRequest("token_optimization_tenants must map tenants to "
                                     "policies", param=key)
            by_policy: dict[str, list[str]] = {}
            for tenant, policy in value.items():
                clean = validate_overrides({"token_optimization": policy})
                by_policy.setdefault(clean["token_optimization"], []).append(str(tenant))
            planned += [Planned(f"{prefix}-tokens-{_slug(policy)}",
                                {"token_optimization": policy}, sorted(tenants))
                        for policy, tenants in sorted(by_policy.items())]
        elif key in OVERRIDABLE and key not in NOT_PER_REQUEST:
            planned.append(Planned(f"{prefix}-{_slug(key)}", validate_overrides({key: value}),
                                   None))
        else:
            skipped[key] = NOT_PER_REQUEST.get(
                key, f"not a per-request setting (one of {sorted(OVERRIDABLE)})")
    for i, a in enumerate(planned):
        for b in planned[i + 1:]:
            if set(a.overrides) & set(b.overrides) and (
                    a.tenants is None or b.tenants is None or set(a.tenants) & set(b.tenants)):
                raise InvalidRequest(f"{a.name} and {b.name} set the same setting for the "
                                     "same tenants: propose one value per tenant",
                                     param="proposal")
    return planned, skipped


def start_proposal(engine: Engine, proposal: Mapping[str, Any], *, actor: str, prefix: str,
                   steps: Sequence[float] | None = None, step_seconds: float = 300.0,
                   min_samples: int = 200, start: bool = True,
                   worker_pools: Collection[str] | None = None) -> ProposalResult:
    """Write the control and canary versions and a canary per part, started unless
    ``start`` is off. Bad input (a bad prefix, value or pacing, a worker pool not in
    ``worker_pools`` when given) is refused before any write."""
    prefix = _slug(prefix)
    steps = check_pacing(steps, step_seconds, min_samples)
    planned, skipped = plan_canaries(proposal, prefix)
    for canary in planned:
        check_pool(canary.overrides, worker_pools)
    _check_free(engine, planned, start)
    result = ProposalResult(skipped=skipped)
    for canary in planned:
        create_config(engine, f"{canary.name}.control", {}, actor=actor,
                      description="no overrides: the settings in force")
        create_config(engine, f"{canary.name}.canary", canary.overrides, actor=actor,
                      description=f"proposed by {actor}")
        create_experiment(
            engine, canary.name, [{"name": "control", "config": f"{canary.name}.control"},
                                  {"name": "canary", "config": f"{canary.name}.canary"}],
            actor=actor, kind="canary", tenants=canary.tenants,
            steps=steps, step_seconds=step_seconds, min_samples=min_samples)
        if start:
            transition(engine, canary.name, "start", actor=actor)
        result.canaries.append(describe(engine, canary.name))
    return result


def _check_free(engine: Engine, planned: list[Planned], start: bool) -> None:
    """Refuse before any write: a name that is taken or invalid, or (when starting) a
    live experiment that sets the same setting for these tenants."""
    with Session(engine) as session:
        for canary in planned:
            if not NAME.match(f"{canary.name}.control"):
                raise InvalidRequest(f"name {canary.name!r}: use a shorter prefix of "
                                     "a-z 0-9 . _ -", param="prefix")
            taken = [n for model, n in ((Experiment, canary.name),
                                        (ConfigVersion, f"{canary.name}.control"),
                                        (ConfigVersion, f"{canary.name}.canary"))
                     if session.get(model, n) is not None]
            if taken:
                raise Conflict(f"{taken} exist: choose another prefix", param="prefix")
            if start:
                check_conflicts(session, canary.name, canary.tenants, list(canary.overrides))
