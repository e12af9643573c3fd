"""kaifong.agents.store.views — the read-only queries of the live picture the web room shows.

Layer: agents/store. Reads only (nothing here writes): open incidents and escalations, incident
documents, units of a district with their registry entries and live hashes, the dispatchable
counters and the day's drill outcome counts. Keys from :mod:`kaifong.agents.store.keys`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from kaifong.agents.store import keys

#: Keys per MGET: a city-wide read stays a few round trips without one huge reply.
MGET_CHUNK = 500


def _chunks(items: list[str], size: int = MGET_CHUNK) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@dataclass(frozen=True)
class Views:
    """Read-only queries on the shared Redis (``prefix``: the topic prefix that scopes the open sets)."""

    redis: aioredis.Redis
    prefix: str

    # -- incidents and escalations -----------------------------------------------------------
    async def open_ids(self, exercise: bool | None = None) -> list[str]:
        """Ids of open incidents: real, exercise or both (``None``)."""
        kinds = [False, True] if exercise is None else [exercise]
        out: list[str] = []
        for kind in kinds:
            members: set[bytes] = await self.redis.smembers(keys.open_incidents(self.prefix, kind))  # type: ignore[misc,assignment]
            out += [m.decode() for m in members]
        return out

    async def open_count(self, exercise: bool) -> int:
        """How many incidents are open, real or exercise."""
        return int(await self.redis.scard(keys.open_incidents(self.prefix, exercise)))  # type: ignore[misc,arg-type]

    async def open_escalation_ids(self) -> list[str]:
        """Ids of the open (unacknowledged) real escalations."""
        raw: list[bytes] = await self.redis.hkeys(keys.open_escalations(self.prefix))  # type: ignore[misc,assignment]
        return [k.decode() for k in raw]

    async def open_escalation_levels(self) -> list[str]:
        """The command level of every open real escalation (one entry per escalation)."""
        raw: list[bytes] = await self.redis.hvals(keys.open_escalations(self.prefix))  # type: ignore[misc,assignment]
        return [v.decode() for v in raw]

    async def incident(self, incident_id: str) -> dict[str, Any] | None:
        """One stored incident document (None when unknown)."""
        raw = await self.redis.get(keys.incident(incident_id))
        return orjson.loads(raw) if raw is not None else None

    async def incidents(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """Stored incident documents of ``ids`` in id order (unknown ones skipped), MGET in chunks."""
        docs: list[dict[str, Any]] = []
        for chunk in _chunks(sorted(set(ids))):
            raws = await self.redis.mget([keys.incident(i) for i in chunk])
            docs.extend(orjson.loads(raw) for raw in raws if raw is not None)
        return docs

    # -- units -------------------------------------------------------------------------------
    async def available_counts(self) -> dict[tuple[str, str], int]:
        """Dispatchable units per (district, kind), from the counters the unit scripts keep."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.AVAILABLE_COUNTS)  # type: ignore[misc,assignment]
        out: dict[tuple[str, str], int] = {}
        for k, v in raw.items():
            district, _, kind = k.decode().rpartition("|")
            out[(district, kind)] = int(v)
        return out

    async def district_unit_ids(self, district: str) -> list[str]:
        """Ids of the units registered in ``district``, sorted."""
        members: set[bytes] = await self.redis.smembers(keys.district_units(district))  # type: ignore[misc,assignment]
        return sorted(m.decode() for m in members)

    async def registries(self, unit_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Registry entries of ``unit_ids`` (unknown ones absent), MGET in chunks."""
        out: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(unit_ids):
            for uid, raw in zip(chunk, await self.redis.mget([keys.unit_registry(u) for u in chunk]), strict=True):
                if raw is not None:
                    out[uid] = orjson.loads(raw)
        return out

    async def lives(self, unit_ids: list[str]) -> list[dict[str, str]]:
        """The decoded live hash of each of ``unit_ids``, in order (empty for an unknown unit)."""
        if not unit_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for uid in unit_ids:
            pipe.hgetall(keys.unit_live(uid))
        raws: list[dict[bytes, bytes]] = await pipe.execute()
        return [{k.decode(): v.decode() for k, v in raw.items()} for raw in raws]

    # -- drills ------------------------------------------------------------------------------
    async def drill_counts(self, day: str) -> dict[str, int]:
        """Outcome → count of the drills issued on local ``day`` (a value that is no count skipped)."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.drills_today(day))  # type: ignore[misc,assignment]
        out: dict[str, int] = {}
        for k, v in raw.items():
            try:
                out[k.decode()] = int(v)
            except ValueError:
                continue  # not a count: nothing to show
        return out
