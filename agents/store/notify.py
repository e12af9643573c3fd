"""kaifong.agents.store.notify — what the notifier keeps in Redis: its lease and the alerts held open.

Layer: agents/store. The alerts last pushed as firing are kept so that the next lease holder (a
restart, another worker) resolves those whose escalation closed while nobody was pushing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from kaifong.agents.store import keys
from kaifong.agents.store.lease import Lease
from kaifong.agents.store.scripts import Scripts


@dataclass
class NotifyStore:
    """The notifier's lease and its record of firing alerts."""

    redis: aioredis.Redis
    prefix: str
    scripts: Scripts

    def lease(self, holder: str) -> Lease:
        """The notifier's lease, as ``holder`` holds or wants it."""
        return Lease(self.redis, keys.notify_leader(self.prefix), holder, self.scripts)

    async def firing(self) -> dict[str, dict[str, Any]]:
        """Alert key → the alert last pushed as firing."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.notify_firing(self.prefix))  # type: ignore[misc,assignment]
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def keep(self, alerts: dict[str, dict[str, Any]], gone: Iterable[str]) -> None:
        """Record ``alerts`` as firing and forget ``gone``, in one round trip."""
        gone = list(gone)
        pipe = self.redis.pipeline(transaction=True)
        if alerts:
            pipe.hset(keys.notify_firing(self.prefix), mapping={k: orjson.dumps(v) for k, v in alerts.items()})
        if gone:
            pipe.hdel(keys.notify_firing(self.prefix), *gone)
        if alerts or gone:
            await pipe.execute()
