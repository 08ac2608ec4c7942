"""Response caching: keys, the L1/L2/L3 exact tiers, single flight, stream replay."""

from services.caching.cache import CacheMetrics, CacheTier, Hit, ResponseCache
from services.caching.entry import CachedResponse
from services.caching.keys import CacheKey, cache_key, is_deterministic, semantic_scope
from services.caching.memory import MemoryCache
from services.caching.persistent import PersistentCache
from services.caching.redis_tier import CircuitBreaker, RedisCache
from services.caching.replay import assemble, fresh_body, stream_chunks

HIT_LAYERS = frozenset({"L1", "L2", "L3", "SEMANTIC"})

__all__ = [
    "HIT_LAYERS",
    "CacheKey",
    "CacheMetrics",
    "CacheTier",
    "CachedResponse",
    "CircuitBreaker",
    "Hit",
    "MemoryCache",
    "PersistentCache",
    "RedisCache",
    "ResponseCache",
    "assemble",
    "cache_key",
    "fresh_body",
    "is_deterministic",
    "semantic_scope",
    "stream_chunks",
]
