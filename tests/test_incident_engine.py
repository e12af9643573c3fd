"""The incident engine (reports, updates, durable timers, escalations) on a real Redis, with an
injected clock and the produced records captured: issue 4, must-show 1, the stateful half."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import redis

from kaifong.agents.core.errors import Refused
from kaifong.agents.flows.dispatch import Dispatcher
from kaifong.agents.flows.incidents import Incidents
from kaifong.agents.store.timers import RingClock
from kaifong.agents.store.units import UnitStore
from kaifong.streams.redisio import connect
from kaifong.streams.settings import Settings

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)


class Harness:
    def __init__(self, redis_port: int, db: int) -> None:
        self.now = T0
        self.settings = Settings(redis_url=f"redis://127.0.0.1:{redis_port}/{db}",
                                 topic_prefix=f"e{uuid.uuid4().hex[:6]}.", escalation_renotify_s=60,
                                 early_update_hold_s=30)
        self.redis = connect(self.settings)
        self.sent: list[tuple[str, dict[str, Any], dict[str, str]]] = []

        def clock() -> datetime:
            return self.now

        store = UnitStore(self.redis, 1e9)
        self.timers = RingClock(self.redis, self.settings.topic_prefix)
        self.inc = Incidents(self.settings, self.redis, self.send_all, clock, store,
                             Dispatcher.from_settings(self.settings, store, clock), self.timers)

    async def send_all(self, records: list[Any]) -> None:
        for topic, _key, value, headers in records:
            self.sent.append((topic.removeprefix(self.settings.topic_prefix), orjson.loads(value),
                              {k: v.decode() for k, v in headers}))

    async def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        ms = int(self.now.timestamp() * 1000)
        for p in range(self.settings.partitions):
            for timer, due in await self.timers.claim(p, ms):
                await self.inc.fire(p, timer, due)
                await self.timers.done(p, timer)

    def out(self, topic: str) -> list[dict[str, Any]]:
        return [v for t, v, _ in self.sent if t == topic]


@pytest.fixture
def h(stack) -> Harness:
    redis.Redis(port=stack.redis_port, db=15).flushdb()
    return Harness(stack.redis_port, 15)


def report(incident_id: str = "i1", **kw: Any) -> dict[str, Any]:
    return {"event_id": f"r-{incident_id}", "incident_id": incident_id, "category": "fire", "severity": 3,
            "reported_at": T0.isoformat(), "location": {"lat": 23.1, "lon": 113.3}, "source": "call_110",
            "exercise": False, "district": "越秀区", "grid": "G1", **kw}


def update(kind: str, at: datetime, incident_id: str = "i1", **kw: Any) -> dict[str, Any]:
    return {"event_id": f"{kind}-{at.timestamp()}-{kw.get('escalation_id', '')}", "incident_id": incident_id,
            "kind": kind, "at": at.isoformat(), **kw}


def test_no_candidate_escalates_at_once_renotifies_until_acknowledged(h: Harness) -> None:
    async def run() -> None:
        await h.inc.on_reported(report())
        first = h.out("incidents.escalations.v1")
        assert {e["reason"] for e in first} == {"no_candidate"}  # nobody at all is available
        esc_id = "i1:r1:no_candidate:0"
        assert esc_id in {e["escalation_id"] for e in first}
        for n in (1, 2, 3):
            await h.advance(60)
            notices = [e for e in h.out("incidents.escalations.v1") if e["escalation_id"] == esc_id]
            assert [e["notification"] for e in notices] == list(range(n + 1))
        await h.inc.on_update(update("escalation_acknowledged", h.now, escalation_id=esc_id, by="seat-3"))
        before = len([e for e in h.out("incidents.escalations.v1") if e["escalation_id"] == esc_id])
        for _ in range(3):
            await h.advance(60)
        after = len([e for e in h.out("incidents.escalations.v1") if e["escalation_id"] == esc_id])
        assert after == before, "acknowledged: no more re-notifications"
        # The acknowledgement is durable: it is on the stored incident, not in memory.
        doc = await h.inc.load("i1")
        assert doc is not None and doc["escalations"][esc_id]["acked_by"] == "seat-3"
        # An acknowledgement of an unknown escalation is refused with a reason.
        with pytest.raises(Refused):
            await h.inc.on_update(update("escalation_acknowledged", h.now, escalation_id="i1:r9:x:0"))

    asyncio.run(run())


def test_deadline_breach_escalates_once_with_a_wider_redispatch(h: Harness) -> None:
    async def run() -> None:
        await h.inc.on_reported(report())
        await h.advance(59)
        assert not [e for e in h.out("incidents.escalations.v1") if e["reason"] == "ring_deadline_missed"]
        await h.advance(1.05)  # ring 1 deadline passes
        missed = [e for e in h.out("incidents.escalations.v1") if e["reason"] == "ring_deadline_missed"]
        assert [(e["ring"], e["escalation_id"]) for e in missed] == [(1, "i1:r1:ring_deadline_missed:0")]
        assert missed[0]["breached_by_s"] == pytest.approx(0.05, abs=0.01)
        redispatch = [a for a in h.out("dispatch.assignments.v1") if a["attempt"] == 1]
        assert [a["assignment_id"] for a in redispatch] == ["i1:r1:a1"]
        states = h.out("incidents.state.v1")
        assert states[-1]["rings"][0]["state"] == "breached"
        await h.advance(1)
        assert len([e for e in h.out("incidents.escalations.v1") if e["reason"] == "ring_deadline_missed"]) == 1

    asyncio.run(run())


def test_resolved_before_deadline_fires_nothing(h: Harness) -> None:
    async def run() -> None:
        await h.inc.on_reported(report(severity=4))
        await h.inc.on_update(update("resolved", T0 + timedelta(seconds=20)))
        n_before = len(h.out("incidents.escalations.v1"))
        await h.advance(2000)
        assert len(h.out("incidents.escalations.v1")) == n_before
        assert h.out("incidents.state.v1")[-1]["status"] == "resolved"
        assert all(r["state"] == "stopped" for r in h.out("incidents.state.v1")[-1]["rings"])
        pending = await h.timers.pending(range(h.settings.partitions))
        assert pending == 0

    asyncio.run(run())


def test_late_report_escalates_at_once(h: Harness) -> None:
    async def run() -> None:
        h.now = T0 + timedelta(minutes=10, seconds=30)
        await h.inc.on_reported(report())
        await h.advance(0.1)  # the next tick
        missed = {e["ring"]: e for e in h.out("incidents.escalations.v1") if e["reason"] == "ring_deadline_missed"}
        assert sorted(missed) == [1, 2, 3, 4]
        assert missed[4]["breached_by_s"] == pytest.approx(30.1, abs=0.01)
        assert missed[1]["breached_by_s"] == pytest.approx(570.1, abs=0.01)

    asyncio.run(run())


def test_early_update_is_held_then_applied(h: Harness) -> None:
    async def run() -> None:
        await h.inc.on_update(update("acknowledged", T0 + timedelta(seconds=5)))
        assert not h.out("incidents.state.v1")
        await h.advance(10)
        await h.inc.on_reported(report())
        assert h.out("incidents.state.v1")[-1]["status"] == "acknowledged"
        await h.advance(60)
        assert not h.out("deadletter.v1")

    asyncio.run(run())


def test_early_update_without_report_is_dead_lettered_after_the_hold(h: Harness) -> None:
    async def run() -> None:
        await h.inc.on_update(update("acknowledged", T0, incident_id="ghost"))
        await h.advance(29)
        assert not h.out("deadletter.v1")
        await h.advance(2)
        dead = h.out("deadletter.v1")
        assert len(dead) == 1 and dead[0]["error_class"] == "no_report" and dead[0]["stage"] == "clock"
        assert "ghost" in dead[0]["error"]

    asyncio.run(run())


def test_on_scene_in_time_meets_the_ring_and_no_escalation_follows(h: Harness) -> None:
    async def run() -> None:
        r = h.redis
        # One available post at the venue, fresh heartbeat.
        reg = {"unit_id": "p1", "kind": "post", "name": "p", "district": "越秀区", "police_grid": "PG", "grid": "G1",
               "venue": {"id": "V1", "type": "mall"}, "home": {"lat": 23.1, "lon": 113.3}, "responders": 4,
               "equipment": []}
        await r.set("kf:unit:p1:reg", orjson.dumps(reg))
        await r.hset("kf:unit:p1:live", mapping={"status": "available", "kind": "post", "lat": 23.1, "lon": 113.3,
                                                 "seen_ms": int(T0.timestamp() * 1000), "district": "越秀区"})
        await r.geoadd("kf:geo:avail:post", (113.3, 23.1, "p1"))
        await h.inc.on_reported(report(venue_id="V1"))
        ring1 = next(a for a in h.out("dispatch.assignments.v1") if a["ring"] == 1)
        assert [u["unit_id"] for u in ring1["units"]] == ["p1"]
        await h.inc.on_update(update("on_scene", T0 + timedelta(seconds=40), unit_id="p1"))
        await h.advance(61)
        assert not [e for e in h.out("incidents.escalations.v1") if e["ring"] == 1]
        last = h.out("incidents.state.v1")[-1]
        assert last["rings"][0]["state"] == "met" and last["rings"][0]["seconds"] == 40

    asyncio.run(run())


def test_report_at_the_end_of_the_calendar_is_refused_not_an_internal_error(h: Harness) -> None:
    """A valid RFC 3339 time whose deadlines would pass year 9999 is bad input: dead-lettered
    ``time_out_of_range`` with the reason, no internal error counted, the next report handled."""
    from kaifong.agents.flows.intake import Inbound, Pipeline
    from kaifong.streams import metrics
    from kaifong.streams.topics import INCIDENTS_REPORTED

    async def send(topic: str, key: bytes | None, value: bytes, headers: Any) -> None:
        await h.send_all([(topic, key, value, headers)])

    pipeline = Pipeline(h.settings, h.redis, send, lambda: h.now)
    errors = metrics.INTERNAL_ERRORS.labels("incidents_reported")._value.get()

    async def run() -> None:
        outcomes = []
        for i, at in enumerate(["9999-12-31T23:59:59-14:00", "9999-12-31T23:50:00Z", T0.isoformat()]):
            raw = orjson.dumps(report(f"cal{i}", reported_at=at))
            msg = Inbound("t.incidents.reported.v1", 0, i, f"cal{i}".encode(), raw, 0.0)
            outcomes.append(await pipeline.process(INCIDENTS_REPORTED, msg, h.inc.on_reported,
                                                   "incidents_reported", self_dedupe=True))
        assert outcomes == ["refused", "refused", "ok"]

    asyncio.run(run())
    dead = h.out("deadletter.v1")
    assert [d["error_class"] for d in dead] == ["time_out_of_range"] * 2
    assert all(d["stage"] == "incidents_reported" and "9999" in d["error"] for d in dead)
    assert metrics.INTERNAL_ERRORS.labels("incidents_reported")._value.get() == errors
    # Nothing of the refused two was opened or published; the valid one after them was.
    assert {s["incident_id"] for s in h.out("incidents.state.v1")} == {"cal2"}
    assert {a["incident_id"] for a in h.out("dispatch.assignments.v1")} == {"cal2"}
