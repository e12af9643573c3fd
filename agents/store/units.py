"""kaifong.agents.store.units — units in Redis: registry, live state, geo index, reservations.

Layer: agents (the Redis adapter of the unit model). Every write is one Lua script, atomic per
call, so that across partitions and worker processes:

- a status update checks its sequence number and its transition and re-indexes the unit in one
  step (no reader ever sees a unit "available" in the geo index that is not);
- a reservation of several units for one incident ring either takes all of them or none, and
  never takes a unit reserved by another incident (no unit is ever dispatched twice).

Keys (single Redis; the scripts touch keys they compute, so Redis Cluster would need hash tags):
``kf:unit:{id}:live`` (hash: status, seq, position, reservation, staleness),
``kf:unit:{id}:reg`` (registry JSON), ``kf:geo:{pool}:{kind}`` (GEO set of dispatchable units;
pool ``avail`` for real incidents, ``drill`` for units taking part in an exercise),
``kf:units:seen`` (sorted set: last arrival time per unit, for heartbeat staleness).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from kaifong.agents.core.matching import Candidate

KINDS = ("post", "unit", "grid_team", "street_force", "professional")
REGISTRY_CACHE_S = 30.0
#: Units read and parsed per step when a pass goes over the whole city: ~1 ms of the event loop
#: a step (1,000 held the incident flow up for ~6 ms a step).
READ_STEP = 200

#: Redis' geo index holds latitudes within ±85.05112878° (Web Mercator) only. A unit reporting from
#: beyond (a valid WGS-84 position, e.g. ±90) is kept but not indexed (not dispatchable by
#: distance), and an incident there finds no candidates, instead of a script error that would
#: stop the firehose on every replay of that event.
GEO_LAT_MAX = 85.05112878

# Shared Lua: put a unit in exactly the one geo set it belongs to (or none).
_REINDEX = """
local function reindex(live, uid)
  local h = redis.call('HMGET', live, 'kind', 'status', 'reserved_by', 'lat', 'lon', 'stale', 'indexed', 'district')
  local kind, status, reserved, lat, lon, stale, indexed = h[1], h[2], h[3], h[4], h[5], h[6], h[7]
  local district = h[8] or 'other'
  local want = false
  if kind and lat and lon and stale ~= '1' and not reserved and math.abs(tonumber(lat)) <= 85.05112878 then
    if status == 'available' then want = 'kf:geo:avail:' .. kind
    elseif status == 'drilling' then want = 'kf:geo:drill:' .. kind end
  end
  if indexed and indexed ~= want then
    redis.call('ZREM', indexed, uid)
    -- Dispatchable units per district and kind, kept as counters for the availability gauge.
    if string.sub(indexed, 1, 13) == 'kf:geo:avail:' then
      redis.call('HINCRBY', 'kf:units:avail', district .. '|' .. string.sub(indexed, 14), -1)
    end
  end
  if want and want ~= indexed and string.sub(want, 1, 13) == 'kf:geo:avail:' then
    redis.call('HINCRBY', 'kf:units:avail', district .. '|' .. kind, 1)
  end
  if want then
    redis.call('GEOADD', want, lon, lat, uid)
    redis.call('HSET', live, 'indexed', want)
  elseif indexed then
    redis.call('HDEL', live, 'indexed')
  end
end
"""

# Transitions a unit may not report (prev → next). Everything else is allowed: a unit may
# always report available, off duty or out of service, and a post may self-dispatch on scene.
_ILLEGAL = {
    "off_duty": ("dispatched", "en_route", "on_scene"),
    "out_of_service": ("dispatched", "en_route", "on_scene", "drilling"),
    "on_scene": ("dispatched", "en_route"),
    "en_route": ("dispatched",),
}
_ILLEGAL_LUA = "local ILLEGAL = {" + ", ".join(
    f"{prev} = {{" + ", ".join(f"{n} = true" for n in nexts) + "}" for prev, nexts in _ILLEGAL.items()
) + "}\n"

# One call per batch (the firehose path): ARGV[1] = now_ms, ARGV[2] = JSON array of
# [event_id, unit_id, seq, status, at, lat|false, lon|false, on_duty|false, incident|false]
# (seq, lat and lon as strings: compared with what the hash holds, never reformatted).
# Returns one code per event: ok | dup | stale:<seq> | illegal:<prev>.
# Duplicates are recognised by the unit's last 8 event ids (kept on its live hash), so the
# firehose needs no per-event dedupe keys: memory stays bounded by the number of units.
STATUS_LUA = _ILLEGAL_LUA + """
local now = ARGV[1]
local events = cjson.decode(ARGV[2])
local out = {}
for i, e in ipairs(events) do
  local eid, uid, seq, nxt = e[1], e[2], tonumber(e[3]), e[4]
  local live = 'kf:unit:' .. uid .. ':live'
  -- One read of everything this update needs (the reindex below is inlined for the same reason).
  local h = redis.call('HMGET', live, 'seq', 'status', 'reserved_by', 'recent', 'kind', 'lat', 'lon',
                       'indexed', 'district', 'incident_id')
  local cur, prev, reserved, recent = h[1], h[2], h[3], h[4] or ''
  if string.find('\\n' .. recent .. '\\n', '\\n' .. eid .. '\\n', 1, true) then
    out[i] = 'dup'
  elseif cur and seq <= tonumber(cur) then
    out[i] = 'stale:' .. cur
  elseif prev and ILLEGAL[prev] and ILLEGAL[prev][nxt] then
    out[i] = 'illegal:' .. prev
  else
    -- Remember the last 8 event ids: enough to recognise a batch replayed after a crash; an
    -- older duplicate is refused as stale_seq (dead-lettered with the reason, never applied).
    local kept = {eid}
    for id in string.gmatch(recent, '[^\\n]+') do
      if #kept < 8 then table.insert(kept, id) end
    end
    local fields = {'seq', e[3], 'status', nxt, 'at', e[5], 'seen_ms', now, 'stale', '0',
                    'recent', table.concat(kept, '\\n')}
    local lat, lon, moved = h[6], h[7], false
    if e[6] and (e[6] ~= lat or e[7] ~= lon) then
      lat, lon, moved = e[6], e[7], true
      table.insert(fields, 'lat'); table.insert(fields, lat)
      table.insert(fields, 'lon'); table.insert(fields, lon)
    end
    -- Released when it reports available after having worked (dispatched/en route/on scene):
    -- a plain "available" heartbeat sent before it heard of its dispatch keeps the reservation.
    if reserved and nxt == 'available' and (prev == 'dispatched' or prev == 'en_route' or prev == 'on_scene') then
      redis.call('HDEL', live, 'reserved_by', 'reserved_ring', 'reserved_ms')
      reserved = false
    end
    local kind, indexed, district = h[5], h[8], h[9] or 'other'
    local want = false
    if kind and lat and lon and not reserved and math.abs(tonumber(lat)) <= 85.05112878 then
      if nxt == 'available' then want = 'kf:geo:avail:' .. kind
      elseif nxt == 'drilling' then want = 'kf:geo:drill:' .. kind end
    end
    if indexed and indexed ~= want then
      redis.call('ZREM', indexed, uid)
      if string.sub(indexed, 1, 13) == 'kf:geo:avail:' then
        redis.call('HINCRBY', 'kf:units:avail', district .. '|' .. string.sub(indexed, 14), -1)
      end
    end
    if want then
      -- A heartbeat from the same spot changes nothing in the index: no GEOADD.
      if want ~= indexed or moved then redis.call('GEOADD', want, lon, lat, uid) end
      if want ~= indexed then
        if string.sub(want, 1, 13) == 'kf:geo:avail:' then
          redis.call('HINCRBY', 'kf:units:avail', district .. '|' .. kind, 1)
        end
        table.insert(fields, 'indexed'); table.insert(fields, want)
      end
    elseif indexed then
      redis.call('HDEL', live, 'indexed')
    end
    if e[8] then table.insert(fields, 'on_duty'); table.insert(fields, e[8]) end
    if e[9] then
      table.insert(fields, 'incident_id'); table.insert(fields, e[9])
    elseif h[10] then
      redis.call('HDEL', live, 'incident_id')
    end
    redis.call('HSET', live, unpack(fields))
    redis.call('ZADD', 'kf:units:seen', now, uid)
    out[i] = 'ok'
  end
end
return out
"""

#: Redis set of every registered unit id (REGISTRY_LUA adds to it).
ALL_UNITS_KEY = "kf:units:all"

# KEYS: seen-key, reg, live. ARGV: ttl, json, unit_id, kind, home_lat, home_lon, district, grid
REGISTRY_LUA = _REINDEX + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'dup' end
redis.call('SET', KEYS[2], ARGV[2])
-- regv: the registry entry's version, so that a worker's cache of entries is never stale.
redis.call('HSET', KEYS[3], 'kind', ARGV[4], 'district', ARGV[7], 'grid', ARGV[8],
           'regv', redis.call('INCR', 'kf:units:regver'))
if not redis.call('HGET', KEYS[3], 'lat') then redis.call('HSET', KEYS[3], 'lat', ARGV[5], 'lon', ARGV[6]) end
redis.call('SADD', 'kf:units:all', ARGV[3])
redis.call('SADD', 'kf:units:district:' .. ARGV[7], ARGV[3])
reindex(KEYS[3], ARGV[3])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return 'ok'
"""

# ARGV: incident_id, pool, now_ms, stale_ms, n, unit ids (n), rings (n), then optionally the
# writes that go with the reservation: a count of commands, then each as (argc, args…) → {}
# when all n are reserved (and the writes done, in the same atomic step), else the units that
# could not be (and nothing is reserved or written). Reserving again for the same incident is a
# no-op (replay-safe). Every reservation is also recorded in the incident's set
# ``kf:inc:{id}:units`` so a replay can find what an interrupted decision held.
RESERVE_LUA = _REINDEX + """
local inc, pool, now, stale_ms, n = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local want = pool == 'drill' and 'drilling' or 'available'
local failed = {}
for i = 6, 5 + n do
  local live = 'kf:unit:' .. ARGV[i] .. ':live'
  local h = redis.call('HMGET', live, 'status', 'reserved_by', 'stale', 'seen_ms')
  if h[2] ~= inc then
    if h[2] or h[1] ~= want or h[3] == '1' or not h[4] or now - tonumber(h[4]) > stale_ms then
      table.insert(failed, ARGV[i])
    end
  end
end
if #failed > 0 then return failed end
for i = 6, 5 + n do
  local live = 'kf:unit:' .. ARGV[i] .. ':live'
  redis.call('HSET', live, 'reserved_by', inc, 'reserved_ring', ARGV[i + n], 'reserved_ms', ARGV[3])
  redis.call('SADD', 'kf:inc:' .. inc .. ':units', ARGV[i])
  reindex(live, ARGV[i])
end
local j = 6 + 2 * n
if ARGV[j] then
  j = j + 1
  for _ = 1, tonumber(ARGV[j - 1]) do
    local argc = tonumber(ARGV[j])
    redis.call(unpack(ARGV, j + 1, j + argc))
    j = j + argc + 1
  end
end
return {}
"""

# ARGV: incident_id, unit ids… → number released (only units reserved by that incident).
RELEASE_LUA = _REINDEX + """
local n = 0
for i = 2, #ARGV do
  local live = 'kf:unit:' .. ARGV[i] .. ':live'
  redis.call('SREM', 'kf:inc:' .. ARGV[1] .. ':units', ARGV[i])
  if redis.call('HGET', live, 'reserved_by') == ARGV[1] then
    redis.call('HDEL', live, 'reserved_by', 'reserved_ring', 'reserved_ms')
    reindex(live, ARGV[i])
    n = n + 1
  end
end
return n
"""

# ARGV: cutoff_ms, limit → units marked stale (heartbeats stopped), taken out of the geo index.
SWEEP_LUA = _REINDEX + """
local ids = redis.call('ZRANGEBYSCORE', 'kf:units:seen', '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, uid in ipairs(ids) do
  local live = 'kf:unit:' .. uid .. ':live'
  redis.call('HSET', live, 'stale', '1')
  redis.call('ZREM', 'kf:units:seen', uid)
  reindex(live, uid)
end
return #ids
"""

#: Shared Lua: every kind's search in one call. ARGV from ``first``: pool, lon, lat, then
#: (kind, radius_m, count) triples. A kind that finds nobody is searched 4× wider. Returns flat
#: {uid, lon, lat, regv, …} (regv: the version of the unit's registry entry, '' for an entry
#: older than versions). Other scripts (the incident's opening) run it in their own round trip.
CANDIDATES_FN = """
local function candidates(first)
  local out = {}
  local pool, lon, lat = ARGV[first], ARGV[first + 1], ARGV[first + 2]
  for i = first + 3, #ARGV, 3 do
    local key = 'kf:geo:' .. pool .. ':' .. ARGV[i]
    local rows = redis.call('GEOSEARCH', key, 'FROMLONLAT', lon, lat, 'BYRADIUS', ARGV[i + 1], 'm',
                            'ASC', 'COUNT', ARGV[i + 2], 'WITHCOORD')
    if #rows == 0 then
      rows = redis.call('GEOSEARCH', key, 'FROMLONLAT', lon, lat, 'BYRADIUS', tonumber(ARGV[i + 1]) * 4,
                        'm', 'ASC', 'COUNT', ARGV[i + 2], 'WITHCOORD')
    end
    for _, r in ipairs(rows) do
      table.insert(out, r[1]); table.insert(out, r[2][1]); table.insert(out, r[2][2])
      table.insert(out, redis.call('HGET', 'kf:unit:' .. r[1] .. ':live', 'regv') or '')
    end
  end
  return out
end
"""

# ARGV: see CANDIDATES_FN (from ARGV[1]).
CANDIDATES_LUA = CANDIDATES_FN + "return candidates(1)\n"

SCRIPTS = {"status": STATUS_LUA, "candidates": CANDIDATES_LUA, "registry": REGISTRY_LUA, "reserve": RESERVE_LUA,
           "release": RELEASE_LUA, "sweep": SWEEP_LUA}


def live_key(unit_id: str) -> str:
    """Redis hash of a unit's live state."""
    return f"kf:unit:{unit_id}:live"


def registry_key(unit_id: str) -> str:
    """Redis key of a unit's registry entry (JSON)."""
    return f"kf:unit:{unit_id}:reg"


def geo_key(pool: str, kind: str) -> str:
    """GEO set of dispatchable units of ``kind`` in ``pool`` (avail or drill)."""
    return f"kf:geo:{pool}:{kind}"


@dataclass
class UnitStore:
    """The unit model in Redis, script by script."""

    redis: aioredis.Redis
    stale_after_s: float = 60.0
    _sha: dict[str, str] | None = None
    #: Parsed registry entries of recently seen candidates (the registry changes rarely; its
    #: dispatch attributes may lag an update by at most REGISTRY_CACHE_S).
    _registry_cache: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    async def load_scripts(self) -> dict[str, str]:
        """Load (or reload after a Redis restart) every script; return name → sha."""
        self._sha = {name: await self.redis.script_load(text) for name, text in SCRIPTS.items()}
        return self._sha

    async def sha(self, name: str) -> str:
        """The sha of script ``name``, loading scripts when needed."""
        if self._sha is None:
            await self.load_scripts()
        assert self._sha is not None
        return self._sha[name]

    async def _eval(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        from redis.exceptions import NoScriptError

        try:
            return await self.redis.evalsha(await self.sha(name), len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted and lost its script cache
            await self.load_scripts()
            return await self.redis.evalsha(await self.sha(name), len(keys), *keys, *args)

    async def reserve(self, incident_id: str, units: Sequence[tuple[str, int]], *, pool: str,
                      now_ms: int, writes: Sequence[Sequence[Any]] | None = None) -> list[str]:
        """Reserve every ``(unit_id, ring)`` for the incident, or none; return those that failed.

        ``writes`` (Redis commands, e.g. ``("SET", key, value)``) are done in the same atomic
        step when — and only when — every unit is reserved: the decision and its record are
        stored together, in one round trip.
        """
        if not units and not writes:
            return []
        ids = [u for u, _ in units]
        rings = [r for _, r in units]
        tail: list[Any] = []
        if writes:
            tail.append(len(writes))
            for command in writes:
                tail += [len(command), *command]
        failed = await self._eval("reserve", (), (incident_id, pool, now_ms, int(self.stale_after_s * 1000),
                                                   len(units), *ids, *rings, *tail))
        return [f.decode() if isinstance(f, bytes) else str(f) for f in failed]

    async def held_by(self, incident_id: str) -> set[str]:
        """Units currently recorded as reserved for the incident."""
        members: set[bytes] = await self.redis.smembers(f"kf:inc:{incident_id}:units")  # type: ignore[misc,assignment]
        return {m.decode() for m in members}

    async def release(self, incident_id: str, unit_ids: Iterable[str]) -> int:
        """Release the units the incident holds; return how many were released."""
        ids = list(unit_ids)
        if not ids:
            return 0
        return int(await self._eval("release", (), (incident_id, *ids)))

    async def sweep_stale(self, now_ms: int, limit: int = 5000) -> int:
        """Mark units whose last heartbeat is older than ``stale_after_s`` unavailable."""
        return int(await self._eval("sweep", (), (now_ms - int(self.stale_after_s * 1000), limit)))

    @staticmethod
    def search_args(lat: float, lon: float, searches: Sequence[tuple[str, float, int]], *, pool: str) -> list[Any]:
        """The arguments of :data:`CANDIDATES_FN` for ``searches`` (``[(kind, radius_m, count)]``)
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
        return await self.found(await self._eval("candidates", (), args)) if args else []

    async def found(self, flat: Sequence[Any]) -> list[Candidate]:
        """Candidates from what :data:`CANDIDATES_FN` returned, with their registry entries (one
        MGET for the entries not already cached)."""
        hits = [(flat[i].decode(), float(flat[i + 2]), float(flat[i + 1]), flat[i + 3])
                for i in range(0, len(flat), 4)]
        if not hits:
            return []
        now = time.monotonic()
        missing = [(uid, regv) for uid, _, _, regv in hits if not self._cached(uid, regv, now)]
        if missing:
            ids = [uid for uid, _ in missing]
            for (uid, regv), raw in zip(missing, await self.redis.mget([registry_key(u) for u in ids]), strict=True):
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
        members: set[bytes] = await self.redis.smembers(ALL_UNITS_KEY)  # type: ignore[misc,assignment]
        ids = sorted(m.decode() for m in members)
        for i in range(0, len(ids), chunk):
            part = ids[i:i + chunk]
            pipe = self.redis.pipeline(transaction=False)
            pipe.mget([registry_key(u) for u in part])
            for uid in part:
                pipe.hget(live_key(uid), "regv")
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
        raw = await self.redis.get("kf:units:regver")
        return int(raw or 0)

    async def available_counts(self) -> dict[tuple[str, str], int]:
        """Dispatchable units per (district, kind), from the counters the scripts keep."""
        raw: dict[bytes, bytes] = await self.redis.hgetall("kf:units:avail")  # type: ignore[misc,assignment]
        out = {}
        for k, v in raw.items():
            district, _, kind = k.decode().rpartition("|")
            out[(district, kind)] = int(v)
        return out

    async def live(self, unit_id: str) -> dict[str, str]:
        """A unit's live hash, decoded (empty when unknown)."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(live_key(unit_id))  # type: ignore[misc,assignment]
        return {k.decode(): v.decode() for k, v in raw.items()}
