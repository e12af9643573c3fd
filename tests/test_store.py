"""The store's Lua scripts on a real Valkey, no broker: units, incidents, timers, the runner.

Each script under agents/store/lua/ is run here through the store class that owns it, and what
it left in Redis is read back (through kaifong.agents.store.keys, as the store names it).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis

from kaifong.agents.core import incident as core
from kaifong.agents.core import units
from kaifong.agents.store import keys
from kaifong.agents.store.incidents import IncidentStore, pack, unpack
from kaifong.agents.store.scripts import Scripts, source
from kaifong.agents.store.timers import RingClock
from kaifong.agents.store.units import UnitStore

NOW_MS = 1_764_403_200_000
STALE_S = 60.0



async def register(r: aioredis.Redis, uid: str, kind: str = "post", lat: float = 23.1, lon: float = 113.3,
                   district: str = "越秀区") -> None:
    """A unit as the firehose registers it, then reports available (fresh)."""
    store = UnitStore(r, STALE_S)
    entry = {"unit_id": uid, "kind": kind, "name": "单元", "district": district, "police_grid": "PG", "grid": "G1",
             "venue": {"id": "V1", "type": "mall"}, "home": {"lat": lat, "lon": lon}, "responders": 4,
             "equipment": []}
    got = await store.run.run("units_registry", [keys.seen("unit-registered", uid), keys.unit_registry(uid),
                                                 keys.unit_live(uid)],
                              [3600, orjson.dumps(entry), uid, kind, lat, lon, district, "G1"])
    assert got == b"ok"
    await status(r, uid, "available", seq=1)


async def status(r: aioredis.Redis, uid: str, value: str, seq: int, lat: float | None = None,
                 eid: str | None = None) -> str:
    row = [eid or f"{uid}-{seq}", uid, str(seq), value, "2026-11-29T14:00:00+08:00",
           *((str(lat), "113.3") if lat is not None else (False, False)), False, False]
    [out] = await UnitStore(r, STALE_S).run.run("units_status", [], [NOW_MS, orjson.dumps([row])])
    return str(out.decode())


async def indexed(r: aioredis.Redis, uid: str, pool: str = "avail", kind: str = "post") -> bool:
    return await r.zscore(keys.geo(pool, kind), uid) is not None


# -- the runner ----------------------------------------------------------------------------------
def test_every_lua_file_loads_and_includes_resolve(with_store_redis: Any) -> None:
    folder = resources.files("kaifong.agents.store").joinpath("lua")
    names = sorted(p.name.removesuffix(".lua") for p in folder.iterdir() if p.name.endswith(".lua"))
    assert {"units_status", "incident_apply", "timers_claim"} <= set(names)

    async def body(r: aioredis.Redis) -> None:
        for name in names:
            text = source(name)
            assert "--! include" not in text
            assert await r.script_load(text)  # compiles

    with_store_redis(body)


def test_the_runner_reloads_a_script_redis_forgot(with_store_redis: Any) -> None:
    async def body(r: aioredis.Redis) -> None:
        scripts = Scripts(r, {"probe": "return ARGV[1]"})
        assert await scripts.run("probe", [], ["a"]) == b"a"
        await r.script_flush()
        assert await scripts.run("probe", [], ["b"]) == b"b"  # NOSCRIPT → loaded again, once

    with_store_redis(body)


# -- units -----------------------------------------------------------------------------------------
def test_status_script_applies_in_order_and_refuses_stale_duplicate_and_illegal(with_store_redis: Any) -> None:
    async def body(r: aioredis.Redis) -> None:
        await register(r, "u1")
        assert await indexed(r, "u1")
        assert await r.hget(keys.AVAILABLE_COUNTS, "越秀区|post") == b"1"
        assert await status(r, "u1", "available", seq=1, eid="u1-1") == "dup"
        assert await status(r, "u1", "available", seq=1, eid="other") == "stale:1"
        assert await status(r, "u1", "off_duty", seq=2) == "ok"
        assert not await indexed(r, "u1") and await r.hget(keys.AVAILABLE_COUNTS, "越秀区|post") == b"0"
        assert await status(r, "u1", "en_route", seq=3) == "illegal:off_duty"
        assert await status(r, "u1", "drilling", seq=4) == "ok"
        assert await indexed(r, "u1", "drill") and not await indexed(r, "u1")
        # Beyond the latitudes the geo index holds: kept, not indexed.
        assert await status(r, "u1", "available", seq=5, lat=89.5) == "ok"
        assert not await indexed(r, "u1") and not await indexed(r, "u1", "drill")
        assert (await r.hget(keys.unit_live("u1"), "lat")) == b"89.5"

    with_store_redis(body)


def test_candidates_release_and_sweep(with_store_redis: Any) -> None:
    async def body(r: aioredis.Redis) -> None:
        store = UnitStore(r, STALE_S)
        await register(r, "near", lat=23.1001)
        await register(r, "far", lat=23.13)  # ~3.3 km: beyond the first 1 km, within 4x
        found = await store.candidates(23.1, 113.3, [("post", 1000.0, 5)], pool="avail")
        assert [c.unit_id for c in found] == ["near"]
        await r.zrem(keys.geo("avail", "post"), "near")
        found = await store.candidates(23.1, 113.3, [("post", 1000.0, 5)], pool="avail")
        assert [c.unit_id for c in found] == ["far"]  # the wider search
        assert await store.candidates(89.9, 113.3, [("post", 1000.0, 5)], pool="avail") == []
        # A unit reserved by another incident is not released by this one.
        await r.hset(keys.unit_live("far"), "reserved_by", "other")
        assert await store.release("mine", ["far"]) == 0
        assert await store.release("other", ["far"]) == 1 and await indexed(r, "far")
        # Heartbeats stopped: marked stale and out of the index.
        assert await store.sweep_stale(NOW_MS + int(STALE_S * 1000) + 1) == 2
        assert not await indexed(r, "far") and await r.hget(keys.unit_live("far"), "stale") == b"1"

    with_store_redis(body)


def test_the_dispatchable_rule_is_the_same_in_lua_and_python(with_store_redis: Any) -> None:
    """lua/lib/dispatchable.lua's geo_set_of and core.units.geo_pool, over every combination."""
    lua = source("units_status").split("local now = ARGV[1]")[0]  # the library, no body
    probe = lua + "\nreturn geo_set_of(ARGV[1] ~= '' and ARGV[1] or nil, ARGV[2], ARGV[3] ~= '' and ARGV[3] or nil," \
                  " ARGV[4] ~= '' and ARGV[4] or nil, ARGV[5] ~= '' and ARGV[5] or nil, ARGV[6])"

    async def body(r: aioredis.Redis) -> None:
        scripts = Scripts(r, {"probe": probe})
        for kind in ("post", ""):
            for value in ("available", "drilling", "on_scene"):
                for reserved in ("", "inc-1"):
                    for lat in ("23.1", "85.06", ""):
                        for stale in ("0", "1"):
                            got = await scripts.run("probe", [], [kind, value, reserved, lat, "113.3" if lat else "",
                                                                  stale])
                            pool = units.geo_pool(kind or None, value, reserved or None,
                                                  float(lat) if lat else None, 113.3 if lat else None, stale == "1")
                            want = f"kf:geo:{pool}:{kind}".encode() if pool else None
                            assert got == want, (kind, value, reserved, lat, stale)

    with_store_redis(body)


# -- incidents --------------------------------------------------------------------------------------
def _doc(incident_id: str = "i1", partition: int = 1, exercise: bool = False) -> dict[str, Any]:
    return {"state": {"incident_id": incident_id, "exercise": exercise, "version": 1}, "partition": partition,
            "assignments": None, "escalations": {}, "applied": [], "report": {}}


def test_open_creates_once_searches_and_recognises_a_processed_report(with_store_redis: Any) -> None:
    async def body(r: aioredis.Redis) -> None:
        await register(r, "u1")
        store = IncidentStore(r, "t.", STALE_S, Scripts(r))
        fresh = _doc()
        first = await store.open(fresh, None, ["avail", 113.3, 23.1, "post", 1000.0, 5])
        assert first is not None and first.created and first.found[0] == b"u1"
        assert await r.sismember(keys.open_incidents("t.", False), "i1")
        again = await store.open({**fresh, "partition": 3}, None, ["avail", 113.3, 23.1, "post", 1000.0, 5])
        assert again is not None and not again.created and again.doc["partition"] == 1 and again.found == []
        await r.set(keys.seen("incident-reported", "r-i1"), "1")
        assert await store.open(fresh, keys.seen("incident-reported", "r-i1"), []) is None

    with_store_redis(body)


def test_apply_reserves_all_or_nothing_and_stores_the_whole_change(with_store_redis: Any) -> None:
    async def body(r: aioredis.Redis) -> None:
        for uid in ("a", "b"):
            await register(r, uid)
        await r.hset(keys.unit_live("b"), "reserved_by", "other")
        store = IncidentStore(r, "t.", STALE_S, Scripts(r))
        doc = _doc()
        change = core.Change(doc=doc, publish=(("state", doc["state"]),), reserve=(("a", 1), ("b", 1)),
                             timers_set=(("d|i1|1", NOW_MS + 60_000),), escalations_opened=(("e1", "grid"),))
        records = [("t.incidents.state.v1", b"i1", b"{}", [("ce_id", b"i1:v1")])]
        assert await store.apply(change, records, NOW_MS) == ["b"]
        # Nothing of a change whose reservation failed is written.
        assert await r.get(keys.incident("i1")) is None and await r.zcard(keys.timers_due("t.", 1)) == 0
        assert await r.hget(keys.unit_live("a"), "reserved_by") is None and await indexed(r, "a")
        await r.hdel(keys.unit_live("b"), "reserved_by")
        assert await store.apply(change, records, NOW_MS) == []
        assert await store.apply(change, records, NOW_MS) == []  # a replay: this incident holds them already
        assert not await indexed(r, "a") and await r.hget(keys.unit_live("a"), "reserved_ring") == b"1"
        assert await r.smembers(keys.incident_units("i1")) == {b"a", b"b"}
        loaded = await store.load("i1")
        assert loaded is not None and loaded[0] == doc and loaded[1] == records
        assert await r.zscore(keys.timers_due("t.", 1), "d|i1|1") == NOW_MS + 60_000
        assert await r.hget(keys.open_escalations("t."), "e1") == b"grid"
        await store.sent("i1")
        assert (await store.load("i1")) == (doc, [])
        # Closing: timers cleared (pending and in flight), units freed, escalation closed.
        await r.hset(keys.timers_inflight("t.", 1), "n|i1|e1", NOW_MS)
        closing = core.Change(doc=doc, timers_clear=("d|i1|1", "n|i1|e1"), escalations_closed=("e1",),
                              release_all=True, close=True)
        assert await store.apply(closing, [], NOW_MS) == []
        assert await r.zcard(keys.timers_due("t.", 1)) == 0 and await r.hlen(keys.timers_inflight("t.", 1)) == 0
        assert await r.hlen(keys.open_escalations("t.")) == 0
        assert await r.scard(keys.incident_units("i1")) == 0 and await indexed(r, "a") and await indexed(r, "b")
        assert not await r.sismember(keys.open_incidents("t.", False), "i1")

    with_store_redis(body)


def test_apply_refuses_a_stale_unit_and_one_of_the_wrong_pool(with_store_redis: Any) -> None:
    async def body(r: aioredis.Redis) -> None:
        await register(r, "a")
        await register(r, "d")
        await status(r, "d", "drilling", seq=2)
        store = IncidentStore(r, "t.", STALE_S, Scripts(r))
        real = core.Change(doc=_doc(), reserve=(("a", 1), ("d", 1)))
        assert await store.apply(real, [], NOW_MS) == ["d"]  # drilling: not for a real incident
        exercise = core.Change(doc=_doc("x1", exercise=True), reserve=(("d", 1),), pool="drill")
        assert await store.apply(exercise, [], NOW_MS) == []
        late = NOW_MS + int(STALE_S * 1000) + 1
        assert await store.apply(core.Change(doc=_doc("i2"), reserve=(("a", 1),)), [], late) == ["a"]

    with_store_redis(body)


def test_outbox_round_trip_and_parked_updates(with_store_redis: Any) -> None:
    records = [("t.x", None, b"\xe4\xb8\xad", [("ce_id", b"1")]), ("t.y", b"k", b"{}", [])]
    assert unpack(pack(records)) == records

    async def body(r: aioredis.Redis) -> None:
        store = IncidentStore(r, "t.", STALE_S, Scripts(r))
        update = {"incident_id": "ghost", "event_id": "u1"}
        await store.park(update, {"topic": "t.u", "partition": 0, "offset": 7, "key": None, "value": ""}, 2,
                         "e|ghost|", NOW_MS)
        assert [e["update"] for e in await store.parked("ghost")] == [update]
        assert await r.ttl(keys.early_updates("ghost")) > 0
        assert await r.zscore(keys.timers_due("t.", 2), "e|ghost|") == NOW_MS
        await store.drop_parked("ghost")
        assert await store.parked("ghost") == []

    with_store_redis(body)


# -- timers --------------------------------------------------------------------------------------
def test_timers_claim_what_is_due_and_reclaim_what_was_in_flight(with_store_redis: Any) -> None:
    async def body(r: aioredis.Redis) -> None:
        clock = RingClock(r, "t.")
        await clock.schedule(0, [("d|i1|1", NOW_MS), ("d|i1|2", NOW_MS + 1000)])
        assert await clock.claim(0, NOW_MS) == [("d|i1|1", NOW_MS)]
        assert await clock.claim(0, NOW_MS) == []  # claimed once
        assert await clock.pending([0]) == 1
        assert await clock.reclaim(0) == 1  # its owner died mid-fire: due again
        assert [m for m, _ in await clock.claim(0, NOW_MS + 1000)] == ["d|i1|1", "d|i1|2"]
        await clock.done(0, "d|i1|1")
        await clock.cancel(0, ["d|i1|2"])
        assert await r.hlen(keys.timers_inflight("t.", 0)) == 0

    with_store_redis(body)
