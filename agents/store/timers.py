"""kaifong.agents.store.timers — durable timers in Redis: one sorted set per input partition.

Layer: agents/store. Deadlines are data, not sleeps: a timer is a member of a sorted set per
partition (:func:`kaifong.agents.store.keys.timers_due`) scored by its due time (ms). The worker
that owns a partition claims what is due (moved atomically to an in-flight hash), fires it, then deletes it. A worker
that gains a partition first puts that partition's in-flight timers back — their owner died
or gave the partition up mid-fire — so a deadline fires even across a crash, late by no more
than the takeover took. Firing is idempotent in the handlers (state says what already fired).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from kaifong.agents.store import keys
from kaifong.agents.store.scripts import Scripts


def member(kind: str, incident_id: str, arg: str = "") -> str:
    """A timer's member string: kind (d=deadline, n=re-notify, e=early-update expiry), id, arg."""
    return f"{kind}|{incident_id}|{arg}"


def parse_member(value: str) -> tuple[str, str, str]:
    """``(kind, incident_id, arg)`` of a member string."""
    kind, incident_id, arg = value.split("|", 2)
    return kind, incident_id, arg


@dataclass
class RingClock:
    """Schedules, claims and completes timers for one topic prefix."""

    redis: aioredis.Redis
    prefix: str
    scripts: Scripts | None = None

    def __post_init__(self) -> None:
        if self.scripts is None:
            self.scripts = Scripts(self.redis)

    def due_key(self, partition: int) -> str:
        """Sorted set of pending timers of a partition."""
        return keys.timers_due(self.prefix, partition)

    def inflight_key(self, partition: int) -> str:
        """Hash of timers claimed and being fired."""
        return keys.timers_inflight(self.prefix, partition)

    async def _eval(self, name: str, keys_: list[str], args: list[int]) -> object:
        assert self.scripts is not None
        return await self.scripts.run(name, keys_, args)

    async def schedule(self, partition: int, items: Iterable[tuple[str, int]]) -> None:
        """Add or move timers ``(member, due_ms)`` on a partition."""
        mapping = dict(items)
        if mapping:
            await self.redis.zadd(self.due_key(partition), mapping)

    async def cancel(self, partition: int, members: Iterable[str]) -> None:
        """Remove timers (pending or in flight)."""
        ms = list(members)
        if ms:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(self.due_key(partition), *ms)
            pipe.hdel(self.inflight_key(partition), *ms)
            await pipe.execute()

    async def claim(self, partition: int, now_ms: int, limit: int = 500) -> list[tuple[str, int]]:
        """Atomically take the due timers of a partition: ``[(member, due_ms)]``."""
        flat = await self._eval("timers_claim", [self.due_key(partition), self.inflight_key(partition)],
                                [now_ms, limit])
        assert isinstance(flat, list)
        return [(flat[i].decode(), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]

    async def done(self, partition: int, member_: str) -> None:
        """Forget a fired timer."""
        await self.redis.hdel(self.inflight_key(partition), member_)

    async def reclaim(self, partition: int) -> int:
        """Put a partition's in-flight timers back (its previous owner did not finish them)."""
        n = await self._eval("timers_reclaim", [self.due_key(partition), self.inflight_key(partition)], [])
        return int(str(n))

    async def pending(self, partitions: Iterable[int]) -> int:
        """Timers waiting on the given partitions."""
        pipe = self.redis.pipeline(transaction=False)
        parts = list(partitions)
        for p in parts:
            pipe.zcard(self.due_key(p))
        return int(sum(await pipe.execute())) if parts else 0
