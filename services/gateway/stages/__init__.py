"""Pipeline stages that adapt capabilities to the request context."""

from services.gateway.stages.cache import CacheStage
from services.gateway.stages.dispatch import DispatchStage
from services.gateway.stages.tokens import TokenOptimizationStage, TokenPolicyStage

__all__ = ["CacheStage", "DispatchStage", "TokenOptimizationStage", "TokenPolicyStage"]
