"""Per-key request rate limits: token buckets in Redis shared by every gateway replica
(in-process without Redis)."""

from services.ratelimit.bucket import RateLimit, RateLimiter, RateLimitExceeded

__all__ = ["RateLimit", "RateLimitExceeded", "RateLimiter"]
