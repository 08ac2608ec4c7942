"""Pipeline stages that adapt capabilities to the request context."""

from services.gateway.stages.cache import CacheStage
from services.gateway.stages.dispatch import DispatchStage
from services.gateway.stages.ratelimit import RateLimitStage, build_rate_limit_stage
from services.gateway.stages.tokens import TokenOptimizationStage, TokenPolicyStage

__all__ = [
    "CacheStage",
    "DispatchStage",
    "RateLimitStage",
    "TokenOptimizationStage",
    "TokenPolicyStage",
    "build_rate_limit_stage",
]
