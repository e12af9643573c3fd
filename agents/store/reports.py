"""kaifong.agents.store.reports — the ledger of daily after-action reports in Redis: made days, makers' claims.

Layer: agents/store. :data:`kaifong.agents.store.keys.REPORTS` maps a local date (ISO) to the
directory of the report made for it (the console lists it); :func:`kaifong.agents.store.keys.report_claim`
is the ``SET NX`` claim that lets exactly one worker make a day's report.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from kaifong.agents.store import keys


class ReportLedger:
    """Which days have a report, and who is making one (``day`` is a local ISO date)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def has(self, day: str) -> bool:
        """True if the report of ``day`` is recorded."""
        return bool(await self.redis.hexists(keys.REPORTS, day))  # type: ignore[misc]

    async def record(self, day: str, directory: str) -> None:
        """Record that the report of ``day`` is in ``directory``."""
        await self.redis.hset(keys.REPORTS, day, directory)  # type: ignore[misc]

    async def claim(self, day: str, ttl_s: int) -> bool:
        """Claim the making of ``day``'s report for ``ttl_s`` seconds; False if another holds it."""
        return bool(await self.redis.set(keys.report_claim(day), b"1", nx=True, ex=ttl_s))

    async def release(self, day: str) -> None:
        """Give the claim on ``day`` back (the making failed: the next run, anywhere, retries)."""
        await self.redis.delete(keys.report_claim(day))
