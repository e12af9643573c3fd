"""kaifong.agents.store.units — units in Redis: registry, live state, geo index, reservations.

Layer: agents/store (the unit model). Every write is one Lua script (``lua/units_*.lua``),
atomic per call, so that across partitions and worker processes:

- a status update checks its sequence number and its transition and re-indexes the unit in one
  step (no reader ever sees a unit "available" in the geo index that is not);
- a reservation of several units for one incident either takes all of them or none, and never
  takes a unit reserved by another incident (no unit is ever dispatched twice) — reservations
  are part of an incident's change (``lua/incident_apply.lua``);
- the rule of which geo set a unit belongs in is written once, ``lua/lib/dispatchable.lua``.

Keys (:mod:`kaifong.agents.store.keys`): a unit's live hash (status, seq, position,
reservation, staleness) and registry entry, the GEO sets of dispatchable units per pool
(``avail`` for real incidents, ``drill`` for units taking part in an exercise) and kind, and the
last-arrival sorted set for heartbeat staleness.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from kaifong.agents.core.matching import Candidate
from kaifong.agents.store import keys
from kaifong.agents.store.scripts import Scripts

REGISTRY_CACHE_S = 30.0
#: Units read and parsed per step when a pass goes over the whole city: ~1 ms of the event loop
#: a step (1,000 held the incident flow up for ~6 ms a step).
READ_STEP = 200

#: Redis' geo index holds latitudes within ±85.05112878° (Web Mercator) only. A unit reporting from
#: beyond (a valid WGS-84 position, e.g. ±90) is kept but not indexed (not dispatchable by
#: distance), and an incident there finds no candidates, instead of a script error that would
#: stop the firehose on every replay of that event.
GEO_LAT_MAX = 85.05112878

#: Every script of the unit model (``lua/units_*.lua``).
SCRIPT_NAMES = ("units_status", "units_candidates", "units_registry", "units_release", "units_sweep")

@dataclass
class UnitStore:
    """The unit model in Redis, script by script."""

    redis: aioredis.Redis
    stale_after_s: float = 60.0
    scripts: Scripts | None = None
    #: Parsed registry entries of recently seen candidates (the registry changes rarely; its
    #: dispatch attributes may lag an update by at most REGISTRY_CACHE_S).
    _registry_cache: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scripts is None:
            self.scripts = Scripts(self.redis)

    @property
    def run(self) -> Scripts:
        """The script runner."""
        assert self.scripts is not None
        return self.scripts

    async def load_scripts(self) -> None:
        """Load (or reload after a Redis restart) every unit script, before pipelining them."""
        await self.run.preload(*SCRIPT_NAMES)

    async def _eval(self, name: str, keys_: Sequence[str], args: Sequence[Any]) -> Any:
        return await self.run.run(name, keys_, args)

    async def held_by(self, incident_id: str) -> set[str]:
        """Units currently recorded as reserved for the incident."""
        members: set[bytes] = await self.redis.smembers(keys.incident_units(incident_id))  # type: ignore[misc,assignment]
        return {m.decode() for m in members}

    async def release(self, incident_id: str, unit_ids: Iterable[str]) -> int:
        """Release the units the incident holds; return how many were released."""
        ids = list(unit_ids)
        if not ids:
            return 0
        return int(await self._eval("units_release", (), (incident_id, *ids)))

    async def sweep_stale(self, now_ms: int, limit: int = 5000) -> int:
        """Mark units whose last heartbeat is older than ``stale_after_s`` unavailable."""
        return int(await self._eval("units_sweep", (), (now_ms - int(self.stale_after_s * 1000), limit)))

    @staticmethod
    def search_args(lat: float, lon: float, searches: Sequence[tuple[str, float, int]], *, pool: str) -> list[Any]:
        """The arguments of ``lua/lib/candidates.lua`` for ``searches`` (``[(kind, radius_m, count)]``)
        around a point; empty when the point is beyond what the geo index can search."""
        if not abs(lat) <= GEO_LAT_MAX:
            return []  # see GEO_LAT_MAX
        args: list[Any] = [pool, lon, lat]
        for kind, radius, count in searches:
            args += [kind, radius, count]
        return args

    async def candidates(self, lat: float, lon: float, searches: Sequence[tuple[str, float, int]],
                         *, pool: str) -> list[Candidate]:
        """Dispatchable units near a point: ``searches`` is ``[(kind, radius_m, count)]``.

        One script call runs every kind's GEOSEARCH (small radii keep Redis' own cost low; a
        kind that finds nobody is searched 4× wider), then :meth:`found` reads what it returned.
        """
        args = self.search_args(lat, lon, searches, pool=pool)
        return await self.found(await self._eval("units_candidates", (), args)) if args else []

    async def found(self, flat: Sequence[Any]) -> list[Candidate]:
        """Candidates from what ``lua/lib/candidates.lua`` returned, with their registry entries (one
        MGET for the entries not already cached)."""
        hits = [(flat[i].decode(), float(flat[i + 2]), float(flat[i + 1]), flat[i + 3])
                for i in range(0, len(flat), 4)]
        if not hits:
            return []
        now = time.monotonic()
        missing = [(uid, regv) for uid, _, _, regv in hits if not self._cached(uid, regv, now)]
        if missing:
            ids = [uid for uid, _ in missing]
            raws = await self.redis.mget([keys.unit_registry(u) for u in ids])
            for (uid, regv), raw in zip(missing, raws, strict=True):
                self._cache(uid, regv, raw, now)
        out = []
        for uid, hlat, hlon, _ in hits:
            cached = self._registry_cache.get(uid)
            if cached is None:
                continue
            _, _, kind, responders, equipment, district, grid, venue_id = cached
            out.append(Candidate(unit_id=uid, kind=kind, lat=hlat, lon=hlon, responders=responders,
                                 equipment=equipment, district=district, grid=grid, venue_id=venue_id))
        return out

    def _cached(self, uid: str, regv: bytes, now: float) -> bool:
        """Whether the cached registry entry of ``uid`` is current (same version; an entry
        without a version is trusted for ``REGISTRY_CACHE_S``)."""
        c = self._registry_cache.get(uid)
        return c is not None and (c[1] == regv if regv else c[0] >= now)

    def _cache(self, uid: str, regv: bytes, raw: bytes | str | None, now: float) -> None:
        if raw is None:
            self._registry_cache.pop(uid, None)  # in the index but its entry is gone: not dispatchable
            return
        reg = orjson.loads(raw)
        self._registry_cache[uid] = (now + REGISTRY_CACHE_S, regv, reg["kind"], reg["responders"],
                                     frozenset(reg["equipment"]), reg["district"], reg["grid"], reg["venue"]["id"])

    async def warm_registry(self, chunk: int = READ_STEP) -> int:
        """Read every unit's registry entry into the cache (a worker's first decisions then
        need no registry round trip); return how many were read. ``chunk`` units a step: a
        step of 1,000 held up the incidents arriving meanwhile for ~6 ms."""
        members: set[bytes] = await self.redis.smembers(keys.ALL_UNITS)  # type: ignore[misc,assignment]
        ids = sorted(m.decode() for m in members)
        for i in range(0, len(ids), chunk):
            part = ids[i:i + chunk]
            pipe = self.redis.pipeline(transaction=False)
            pipe.mget([keys.unit_registry(u) for u in part])
            for uid in part:
                pipe.hget(keys.unit_live(uid), "regv")
            raws, *versions = await pipe.execute()
            now = time.monotonic()
            for uid, raw, regv in zip(part, raws, versions, strict=True):
                self._cache(uid, regv or b"", raw, now)
        return len(ids)

    def cached_units(self) -> int:
        """How many units' registry entries are cached."""
        return len(self._registry_cache)

    async def registry_version(self) -> int:
        """The registry's version: a counter every registry change increments."""
        raw = await self.redis.get(keys.REGISTRY_VERSION)
        return int(raw or 0)

    async def available_counts(self) -> dict[tuple[str, str], int]:
        """Dispatchable units per (district, kind), from the counters the scripts keep."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.AVAILABLE_COUNTS)  # type: ignore[misc,assignment]
        out = {}
        for k, v in raw.items():
            district, _, kind = k.decode().rpartition("|")
            out[(district, kind)] = int(v)
        return out

    async def live(self, unit_id: str) -> dict[str, str]:
        """A unit's live hash, decoded (empty when unknown)."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.unit_live(unit_id))  # type: ignore[misc,assignment]
        return {k.decode(): v.decode() for k, v in raw.items()}
