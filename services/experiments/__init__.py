"""Experiments: versioned configs, sticky assignment to arms, sequential statistics and
canary rollouts gated by them (``controller.run_once``, run by the ``experiments`` flow).
"""

from services.experiments.analysis import ArmData, Evaluation, evaluate
from services.experiments.assignment import (
    UNIT_HEADER,
    LiveArm,
    LiveExperiment,
    bucket,
    load_live,
)
from services.experiments.controller import Decision, run_once
from services.experiments.proposals import ProposalResult, start_proposal
from services.experiments.stats import Comparison, Guardrail
from services.experiments.store import (
    OVERRIDABLE,
    audit_log,
    create_config,
    create_experiment,
    describe,
    list_configs,
    list_experiments,
    transition,
    validate_overrides,
)

__all__ = [
    "OVERRIDABLE",
    "UNIT_HEADER",
    "ArmData",
    "Comparison",
    "Decision",
    "Evaluation",
    "Guardrail",
    "LiveArm",
    "LiveExperiment",
    "ProposalResult",
    "audit_log",
    "bucket",
    "create_config",
    "create_experiment",
    "describe",
    "evaluate",
    "list_configs",
    "list_experiments",
    "load_live",
    "run_once",
    "start_proposal",
    "transition",
    "validate_overrides",
]
