"""The drills' store on a real Valkey, no broker: the issue and decide scripts, the lease, the plan.

Each drill script under agents/store/lua/ (drill_issue, drill_decide, drill_lease_renew,
drill_lease_release) is run through the store class that owns it, and what it left in Redis is
read back through kaifong.agents.store.keys.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import redis.asyncio as aioredis

from kaifong.agents.core import drills as core
from kaifong.agents.store import keys
from kaifong.agents.store.drills import KEEP_S, DrillStore, decision_timer
from kaifong.agents.store.scripts import source

PREFIX = "t."
ISSUED = "2026-11-29T06:00:00+00:00"
ISSUED_MS = 1_764_396_000_000
DAY = "2026-11-29"



def record(drill_id: str = "drl-1", unit_id: str = "u-1") -> dict[str, Any]:
    return {"drill_id": drill_id, "unit_id": unit_id, "channel": "radio", "issued_at": ISSUED,
            "ack_target_s": 60.0, "muster_target_s": 180.0, "expected_headcount": 4, "reason": "manual",
            "district": "越秀区", "grid": "G1"}


async def issue(store: DrillStore, rec: dict[str, Any], partition: int = 1) -> str:
    return str(await store.issue(rec, partition=partition, day=DAY, issued_ms=ISSUED_MS, decide_ms=ISSUED_MS + 180_000,
                                 issued=ISSUED, open_ttl_s=4680))


def test_the_issue_scripts_busy_table_is_core_busy() -> None:
    table = re.search(r"^local BUSY = \{(.*)\}$", source("drill_issue"), re.MULTILINE)
    assert table is not None
    lua = tuple(re.findall(r"([a-z_]+) = true", table.group(1)))
    assert lua == core.BUSY


def test_issue_creates_a_drill_once_and_only_for_an_idle_unit(with_store_redis: Any) -> None:
    async def body(r: aioredis.Redis) -> None:
        store = DrillStore(r, PREFIX)
        await r.hset(keys.drills_planner(PREFIX), "u-1", "2026-10-01T06:00:00+00:00")  # type: ignore[misc]
        assert await issue(store, record()) == "new"
        doc = orjson.loads(await r.hget(keys.drill("drl-1"), "doc") or b"")  # type: ignore[misc]
        assert doc == {"record": record(), "partition": 1, "day": DAY}
        assert await r.hget(keys.drill("drl-1"), "prev_last") == b"2026-10-01T06:00:00+00:00"  # type: ignore[misc]
        assert 0 < await r.ttl(keys.drill("drl-1")) <= KEEP_S
        assert await r.get(keys.unit_drill("u-1")) == b"drl-1"
        assert 0 < await r.ttl(keys.unit_drill("u-1")) <= 4680
        assert await r.hget(keys.drills_planner(PREFIX), "u-1") == ISSUED.encode()  # type: ignore[misc]
        assert await r.hgetall(keys.drills_open(PREFIX, 1)) == {b"drl-1": b"u-1"}  # type: ignore[misc]
        assert await r.zscore(store.timers.due_key(1), decision_timer("drl-1")) == ISSUED_MS + 180_000
        assert await r.zrange(keys.drills_of_day(DAY), 0, -1, withscores=True) == [(b"drl-1", ISSUED_MS)]
        # The same drill again: nothing changes.
        assert await issue(store, record()) == "dup"
        assert await store.issued("drl-1") == (record(), False)
        await store.mark_issued_sent("drl-1")
        assert await store.issued("drl-1") == (record(), True)
        # Another drill of a unit with an open drill.
        assert await issue(store, record("drl-2")) == "busy:drill_open"
        assert not await r.exists(keys.drill("drl-2"))

        # A unit never heard of is eligible; a reserved or busy one is not; an available one is.
        assert await issue(store, record("drl-3", "u-3")) == "new"
        await r.hset(keys.unit_live("u-4"), mapping={"status": "available", "reserved_by": "inc-1"})  # type: ignore[misc]
        assert await issue(store, record("drl-4", "u-4")) == "busy:reserved"
        for n, status in enumerate(core.BUSY):
            uid = f"u-busy-{n}"
            await r.hset(keys.unit_live(uid), "status", status)  # type: ignore[misc]
            assert await issue(store, record(f"drl-busy-{n}", uid)) == f"busy:{status}"
        await r.hset(keys.unit_live("u-5"), "status", "available")  # type: ignore[misc]
        assert await issue(store, record("drl-5", "u-5")) == "new"

    with_store_redis(body)


def test_decide_counts_a_drill_once_and_closes_it(with_store_redis: Any) -> None:
    async def body(r: aioredis.Redis) -> None:
        store = DrillStore(r, PREFIX)
        assert await issue(store, record()) == "new"
        drill = await store.load("drl-1")
        assert drill is not None and drill.result is None and drill.prev_last == ""
        assert await store.add_answer("drl-1", "acknowledged", {"at": ISSUED, "event_id": "e1"})
        assert not await store.add_answer("drl-1", "acknowledged", {"at": ISSUED, "event_id": "e2"})
        drill = await store.load("drl-1")
        assert drill is not None and drill.answers == {"acknowledged": {"at": ISSUED, "event_id": "e1"}}
        result = {"drill_id": "drl-1", "unit_id": "u-1", "outcome": "pass", "decided_at": ISSUED}
        entry = core.result_entry(result)
        assert await store.decide(drill, result, entry, ISSUED)
        assert not await store.decide(drill, {**result, "outcome": "fail"}, entry, ISSUED)
        assert await store.day_counts(DAY) == {"pass": 1}
        assert await store.rates("district") == {"越秀区": {"pass": 1}}
        assert await store.rates("grid") == {"G1": {"pass": 1}}
        assert await store.unit_results("u-1") == [{"at": ISSUED, "outcome": "pass"}]
        assert await store.open_drill_of(["u-1"]) == [None]
        assert await store.open_drills(1) == []
        decided = await store.load("drl-1")
        assert decided is not None and decided.result == result and not decided.result_sent
        assert await store.day_drills(DAY) == [(record(), result)]
        # A pass is the unit's drill: the planner keeps it.
        assert await r.hget(keys.drills_planner(PREFIX), "u-1") == ISSUED.encode()  # type: ignore[misc]

    with_store_redis(body)


def test_an_aborted_drill_gives_the_planner_the_previous_drill_back(with_store_redis: Any) -> None:
    async def body(r: aioredis.Redis) -> None:
        store = DrillStore(r, PREFIX)
        await r.hset(keys.drills_planner(PREFIX), "u-1", "2026-10-01T06:00:00+00:00")  # type: ignore[misc]
        assert await issue(store, record()) == "new"
        assert await issue(store, record("drl-2", "u-2")) == "new"
        await r.hset(keys.unit_live("u-1"), mapping={"reserved_by": "inc-1", "reserved_ms": ISSUED_MS + 5})  # type: ignore[misc]
        assert await store.reserved(["u-1", "u-2"]) == [True, False]
        assert await store.reservation("u-1") == ("inc-1", ISSUED_MS + 5)
        assert await store.reservation("u-2") == (None, None)
        await store.mark_aborted("drl-1", "2026-11-29T06:00:01+00:00")
        await store.mark_aborted("drl-1", "2026-11-29T06:09:00+00:00")  # the first abort time stays
        for drill_id in ("drl-1", "drl-2"):
            drill = await store.load(drill_id)
            assert drill is not None
            result = {"drill_id": drill_id, "unit_id": drill.record["unit_id"], "outcome": "aborted",
                      "decided_at": ISSUED}
            assert await store.decide(drill, result, core.result_entry(result), ISSUED)
        aborted = await store.load("drl-1")
        assert aborted is not None and aborted.aborted_at == "2026-11-29T06:00:01+00:00"
        planner = await store.planner_state()
        assert planner == {b"u-1": b"2026-10-01T06:00:00+00:00"}  # u-2 had none: deleted
        assert await store.unit_results("u-1") == []  # an aborted drill is not the unit's result
        assert await store.day_counts(DAY) == {"aborted": 2}

    with_store_redis(body)


def test_the_lease_is_held_by_one_holder_at_a_time(with_store_redis: Any) -> None:
    async def body(r: aioredis.Redis) -> None:
        store = DrillStore(r, PREFIX)
        a, b = store.lease("worker-a"), store.lease("worker-b")
        assert await a.take(15_000)
        assert not await b.take(15_000)
        assert await a.renew(15_000)
        assert not await b.renew(15_000)
        assert not await b.release()
        assert await r.get(keys.drills_leader(PREFIX)) == b"worker-a"
        await r.script_flush()  # NOSCRIPT: the runner loads the script again
        assert await a.release()
        assert not await r.exists(keys.drills_leader(PREFIX))
        assert not await a.renew(15_000)
        assert await b.take(15_000)

    with_store_redis(body)


def test_a_day_is_planned_once_and_issued_from_its_plan(with_store_redis: Any) -> None:
    async def body(r: aioredis.Redis) -> None:
        store = DrillStore(r, PREFIX)
        assert not await store.is_planned(DAY)
        assert await store.save_plan(DAY, [("u-1", 2000), ("u|2", 1000)], "worker-a", "2026-11-29")
        assert await store.is_planned(DAY)
        assert not await store.save_plan(DAY, [("u-3", 500)], "worker-b", "2026-11-30")
        assert await store.planner_state() == {b"@epoch": b"2026-11-29"}
        due = await store.due_planned(1500)
        assert [(p.unit_id, p.due_ms) for p in due] == [("u|2", 1000)]
        await store.drop_planned(due[0])
        assert [(p.unit_id, p.due_ms) for p in await store.due_planned(10_000)] == [("u-1", 2000)]

    with_store_redis(body)


def test_the_registry_as_orders_and_the_scheduler_read_it(with_store_redis: Any) -> None:
    async def body(r: aioredis.Redis) -> None:
        store = DrillStore(r, PREFIX)
        for uid, grid in (("u-2", "G2"), ("u-1", "G1"), ("u-3", "G1")):
            await r.sadd(keys.ALL_UNITS, uid)  # type: ignore[misc]
            await r.sadd(keys.district_units("越秀区"), uid)  # type: ignore[misc]
            await r.set(keys.unit_registry(uid), orjson.dumps({"unit_id": uid, "grid": grid}))
            await r.hset(keys.unit_live(uid), mapping={"grid": grid, "status": "available"})  # type: ignore[misc]
        await r.hset(keys.unit_live("u-3"), "reserved_by", "inc-9")  # type: ignore[misc]
        assert await store.registered_count() == 3
        assert await store.unit_ids() == ["u-1", "u-2", "u-3"]
        assert await store.registered("u-1") and not await store.registered("u-9")
        assert await store.district_units("越秀区") == ["u-1", "u-2", "u-3"]
        assert await store.district_units("海珠区") == []
        assert await store.grid_units("G1") == ["u-1", "u-3"]
        assert await store.live_field(["u-1", "u-9"], "status") == ["available", None]
        assert await store.registry("u-2") == {"unit_id": "u-2", "grid": "G2"}
        assert await store.registry("u-9") is None
        assert [orjson.loads(e) if e else None for e in await store.registry_entries(["u-1", "u-9"])] == [
            {"unit_id": "u-1", "grid": "G1"}, None]
        assert await issue(store, record("drl-2", "u-2")) == "new"
        assert await store.eligibility(["u-1", "u-2", "u-3", "u-9"]) == [
            ("available", False, False), ("available", False, True), ("available", True, False), (None, False, False)]
        await store.set_readiness("u-1", 0.123456)
        assert await r.hget(keys.READINESS, "u-1") == b"0.1235"  # type: ignore[misc]

    with_store_redis(body)
