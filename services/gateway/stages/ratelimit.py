"""Rate-limit stage, first in the pipeline: a caller past its key's rate gets a 429
``rate_limit_exceeded`` with Retry-After before any work is done for it (the refusal
still leaves its request_log row)."""

from __future__ import annotations

from services.gateway.pipeline import Next, Reply, RequestContext
from services.ratelimit import RateLimit, RateLimiter
from services.settings import Settings


class RateLimitStage:
    name = "rate_limit"

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply:
        await self.limiter.take(ctx.principal.tenant, ctx.principal.key_id)
        return await call_next(ctx)


def build_rate_limit_stage(settings: Settings) -> RateLimitStage | None:
    """The stage of ``rate_limit_rps`` / ``rate_limit_tenants``, None when neither is set."""
    default = None
    if settings.rate_limit_rps > 0:
        default = RateLimit(settings.rate_limit_rps, settings.rate_limit_burst)
    tenants = {tenant: RateLimit(float(limit["rps"]), float(limit.get("burst", limit["rps"])))
               for tenant, limit in settings.rate_limit_tenants.items()}
    if default is None and not tenants:
        return None
    return RateLimitStage(RateLimiter(default, tenants, redis_url=settings.redis_url,
                                      timeout_s=settings.rate_limit_redis_timeout_s))
