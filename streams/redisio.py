"""kaifong.streams.redisio — the Redis connection, with call timing and error counting.

Layer: streams. One asyncio client per process (hiredis parser when installed).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from kaifong.streams import security
from kaifong.streams.settings import Settings


def connect(settings: Settings) -> aioredis.Redis:
    """An asyncio Redis client for ``settings.redis_url`` (bytes in, bytes out; ``rediss://`` is TLS
    verified against ``KAIFONG_REDIS_SSL_CAFILE``, AUTH rides in the URL)."""
    return aioredis.Redis.from_url(
        settings.redis_url, decode_responses=False, socket_connect_timeout=3, socket_timeout=5,
        health_check_interval=15, retry_on_timeout=False, **security.redis_kwargs(settings),
    )
