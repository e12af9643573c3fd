"""kaifong.agents.store.lease — a Redis lease one worker at a time holds (the drill scheduler's).

Layer: agents/store. Taken with ``SET NX PX``; renewed and released by two scripts that act
only for the holder (``lua/drill_lease_renew.lua``, ``lua/drill_lease_release.lua``), so a
holder that lost the lease can neither extend nor delete its successor's. A lease is not a lock:
the holder decides how long it trusts its own view of it (see the drill scheduler).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from kaifong.agents.store.scripts import Scripts


@dataclass
class Lease:
    """The lease at ``key``, as held (or wanted) by ``holder``."""

    redis: aioredis.Redis
    key: str
    holder: str
    scripts: Scripts

    async def take(self, ms: int) -> bool:
        """Take the lease for ``ms`` if nobody holds it."""
        return bool(await self.redis.set(self.key, self.holder, nx=True, px=ms))

    async def renew(self, ms: int) -> bool:
        """Extend the lease to ``ms`` from now; False when this holder no longer has it."""
        return bool(await self.scripts.run("drill_lease_renew", [self.key], [self.holder, ms]))

    async def release(self) -> bool:
        """Give the lease up (if this holder has it)."""
        return bool(await self.scripts.run("drill_lease_release", [self.key], [self.holder]))
