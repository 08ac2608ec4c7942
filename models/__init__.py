"""The metrics store schema (SQLAlchemy 2 typed ORM) and its engine helpers.

Imports nothing from ``services``: the store is shared by the gateway, the flows and
the dashboard, and each of them brings its own settings.
"""

from models.base import Base
from models.db import create_store_engine, insert_ignoring_conflicts, session_factory
from models.tables import (
    Alert,
    AlertEvent,
    ApiKey,
    Batch,
    BatchResult,
    CacheablePrefix,
    CacheEntry,
    CacheReport,
    ConfigAudit,
    ConfigVersion,
    CostReport,
    CostRollup,
    CostRollupState,
    Experiment,
    ExperimentArm,
    ExperimentResult,
    ForecastScore,
    QuarantinedEvent,
    RequestLog,
    RequestRating,
    ScalingDecision,
    SemanticEntry,
    StoredFile,
    TokenReport,
    Worker,
    WorkerLaunch,
)

__all__ = [
    "Alert",
    "AlertEvent",
    "ApiKey",
    "Batch",
    "BatchResult",
    "CacheEntry",
    "CacheablePrefix",
    "CacheReport",
    "ConfigAudit",
    "ConfigVersion",
    "Experiment",
    "ExperimentArm",
    "ExperimentResult",
    "CostReport",
    "CostRollup",
    "CostRollupState",
    "Base",
    "QuarantinedEvent",
    "RequestLog",
    "RequestRating",
    "ScalingDecision",
    "ForecastScore",
    "WorkerLaunch",
    "SemanticEntry",
    "TokenReport",
    "StoredFile",
    "Worker",
    "create_store_engine",
    "insert_ignoring_conflicts",
    "session_factory",
]
