"""kaifong.agents.flows.drills — pull-test drills end to end: issuing, answers, results, and the facade.

Layer: agents/flows. Every decision is core's (:mod:`kaifong.agents.core.drills`: how an answer is
scored; :mod:`kaifong.agents.core.drillplan`: who is drilled when; :mod:`kaifong.agents.core.drillorders`:
what a manual order may say); every Redis read and write is :mod:`kaifong.agents.store.drills`'
(which also says what is stored where). This module keeps the lifecycle around those decisions
and publishes what they produce; :mod:`kaifong.agents.flows.drillschedule` plans and issues the
day's drills, :mod:`kaifong.agents.flows.drillorders` serves the operators' orders and queries,
and :class:`Drills` composes them for the worker. Nothing here changes a unit's live status: a
drilled unit stays exactly as dispatchable as it reports itself to be, and a real dispatch
aborts its drill.

**Lifecycle.** Issue (scheduled or manual, one path: :meth:`DrillResponses.issue`) → answers on
``drills.responses.v1`` are folded in with :func:`~kaifong.agents.core.drills.apply_response` →
the result is decided by :func:`~kaifong.agents.core.drills.score` when both stages are in or
when the decision timer fires at :func:`~kaifong.agents.core.drills.decide_at`. Decision timers
are a :class:`~kaifong.agents.store.timers.RingClock` of their own, sharded by the partition the
drill id's responses go to, and fired by whichever worker owns that partition
(:class:`~kaifong.agents.flows.timers.TimerLoop`), so they survive a crash exactly like ring
deadlines do. Records are written before they are sent and flagged after (an outbox): a crash in
between re-sends them on the next touch (a replayed answer, the timer, the scheduler's replay of
its plan).

**Abort.** A unit with an open drill that is reserved for an incident (its live hash gets
``reserved_by``) has its drill aborted as of the reservation time: checked when an answer
arrives, when the decision is due, every second for the open drills of owned partitions, and at
once when the incident flow calls :meth:`Drills.abort_for_units` after a dispatch. Any
reservation counts (an exercise dispatch takes the unit away from the pull test just as much).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka.partitioner import murmur2

from kaifong.agents.core import drills as core
from kaifong.agents.core.drillplan import drill_id as new_drill_id
from kaifong.agents.core.errors import Refused
from kaifong.agents.flows.drillorders import DrillOrders
from kaifong.agents.flows.drillschedule import DrillScheduler, new_worker_id
from kaifong.agents.flows.timers import TimerLoop
from kaifong.agents.store.drills import KEEP_S, DrillStore, StoredDrill, decision_timer
from kaifong.agents.store.timers import parse_member
from kaifong.streams import metrics
from kaifong.streams.codec import Headers, cloudevent_headers
from kaifong.streams.settings import Settings
from kaifong.streams.topics import DRILLS_ISSUED, DRILLS_RESULTS

log = logging.getLogger(__name__)

#: (topic, key, value, headers) of one record to produce.
Record = tuple[str, bytes | None, bytes, Headers]

#: The decision clock's tick, and how often open drills are checked for a reservation.
CLOCK_TICK_S = 0.25
SWEEP_S = 1.0


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _own_nothing() -> set[int]:
    return set()


def _always_ready() -> bool:
    return True


@dataclass
class DrillResponses:
    """Issuing a drill, folding its answers in, deciding it, aborting it (``drills.responses.v1``)."""

    settings: Settings
    store: DrillStore
    send_all: Callable[[list[Record]], Awaitable[None]]
    clock: Callable[[], datetime]
    policy: core.DrillPolicy
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict, init=False)

    def partition_of(self, drill_id: str) -> int:
        """The partition a drill's responses are keyed to (Kafka's default partitioner), which
        shards its decision timer: the worker that handles its answers also fires its timer."""
        return int(murmur2(drill_id.encode()) & 0x7FFFFFFF) % max(1, self.settings.partitions)

    # -- records ----------------------------------------------------------------------------
    def _issued_out(self, record: dict[str, Any]) -> Record:
        headers = cloudevent_headers(record["drill_id"], "drill-issued", _parse(record["issued_at"]),
                                     subject=record["unit_id"])
        return (DRILLS_ISSUED.name(self.settings), record["drill_id"].encode(), orjson.dumps(record), headers)

    def _result_out(self, result: dict[str, Any]) -> Record:
        headers = cloudevent_headers(f"{result['drill_id']}:result", "drill-result", _parse(result["decided_at"]),
                                     subject=result["unit_id"])
        return (DRILLS_RESULTS.name(self.settings), result["drill_id"].encode(), orjson.dumps(result), headers)

    async def _send_issued(self, record: dict[str, Any]) -> None:
        await self.send_all([self._issued_out(record)])
        await self.store.mark_issued_sent(record["drill_id"])

    async def _send_result(self, drill: StoredDrill, result: dict[str, Any]) -> None:
        drill_id = result["drill_id"]
        await self.send_all([self._result_out(result)])
        await self.store.mark_result_sent(drill_id)
        await self.store.timers.cancel(drill.partition, [decision_timer(drill_id)])

    # -- issuing ----------------------------------------------------------------------------
    async def issue(self, unit_id: str, at: datetime, reason: str, channel: str = "radio") -> core.Issued:
        """Issue a drill of ``unit_id`` at ``at`` — the one path of scheduled and manual drills.

        Idempotent: the drill id is a function of the unit and ``at``; a second call creates
        nothing and re-sends the record only if the first call did not get it to the broker.
        The unit must be registered, not reserved, not busy (dispatched, en route, on scene,
        drilling, off duty, out of service) and without an open drill, else nothing is issued.
        """
        reg = await self.store.registry(unit_id)
        if reg is None:
            return core.Issued("unknown", why=f"unit {unit_id} is not registered")
        state = core.DrillState(new_drill_id(unit_id, at), unit_id, channel, at.astimezone(UTC),
                                int(reg.get("responders") or 0))
        record = core.issued_record(state, self.policy, reason=reason, district=reg.get("district") or None,
                                    grid=reg.get("grid") or None)
        verdict = await self.store.issue(
            record, partition=self.partition_of(state.drill_id), day=core.local_day(at, self.policy).isoformat(),
            issued_ms=core.to_ms(at), decide_ms=core.to_ms(core.decide_at(state, self.policy)),
            issued=state.issued_at.isoformat(), open_ttl_s=core.open_drill_ttl_s(self.policy))
        if verdict.startswith("busy:"):
            return core.Issued("busy", why=core.busy_why(unit_id, verdict))
        if verdict == "new":
            metrics.DRILLS_ISSUED.labels(reason).inc()
            log.info("drill %s issued to unit %s (%s, %s)", state.drill_id, unit_id, reason, channel)
            await self._send_issued(record)
            return core.Issued("issued", record)
        # A replay: the stored document is the truth (a manual order in the same millisecond as
        # a scheduled drill of the same unit keeps the first one's reason).
        stored, sent = await self.store.issued(state.drill_id)
        if stored is None:
            return core.Issued("unknown", why=f"drill {state.drill_id} expired")
        if not sent:
            await self._send_issued(stored)
        return core.Issued("duplicate", stored)

    # -- answers and decisions --------------------------------------------------------------
    async def on_response(self, response: dict[str, Any]) -> None:
        """Fold a unit's answer into its drill; decide the drill if it is decidable now.

        Refuses (dead-letters) an answer to a drill that was never issued (or was issued to
        another unit) and an answer stamped before the drill was issued. The first answer of
        each stage counts; a later one of the same stage changes nothing.
        """
        drill_id, stage = response["drill_id"], response["stage"]
        record = await self.store.record(drill_id)
        if record is None:
            raise Refused("drills", "unknown_drill", f"no drill {drill_id} was issued (or it ended more than "
                          f"{KEEP_S // 86400} days ago)")
        if response["unit_id"] != record["unit_id"]:
            raise Refused("drills", "unknown_drill", f"drill {drill_id} was issued to another unit, not to "
                          f"{response['unit_id']}")
        issued, at = _parse(record["issued_at"]), _parse(response["at"])
        try:
            core.apply_response(core.fresh_state(record), stage, at, response.get("headcount"))
        except ValueError as exc:
            raise Refused("drills", "before_issue", str(exc)) from None
        answer = {"at": response["at"], "event_id": response["event_id"]}
        if "headcount" in response:
            answer["headcount"] = response["headcount"]
        if await self.store.add_answer(drill_id, stage, answer):
            metrics.DRILL_RESPONSE.labels(stage).observe(max(0.0, (at - issued).total_seconds()))
        await self.decide(drill_id)

    def _lock(self, drill_id: str) -> asyncio.Lock:
        lk = self._locks.get(drill_id)
        if lk is None:
            lk = self._locks[drill_id] = asyncio.Lock()
        return lk

    async def decide(self, drill_id: str) -> str | None:
        """Decide the drill if it is decidable now (publishing its result once); else move its
        timer to when it will be. Returns the outcome once decided, else None. Serialised per
        drill in this process; across processes the decided flag makes the first decision win."""
        lk = self._lock(drill_id)
        try:
            async with lk:
                return await self._decide(drill_id)
        finally:
            if not lk.locked() and not getattr(lk, "_waiters", None):
                self._locks.pop(drill_id, None)

    async def _decide(self, drill_id: str) -> str | None:
        drill = await self.store.load(drill_id)
        if drill is None:
            return None  # expired long ago: nothing left to decide
        record = drill.record
        if not drill.issued_sent:
            await self._send_issued(record)  # the issuer crashed before the broker had it
        if drill.result is not None:
            if not drill.result_sent:
                await self._send_result(drill, drill.result)
            return str(drill.result["outcome"])
        state = core.stored_state(record, drill.answers, drill.aborted_at)
        unit_id = record["unit_id"]
        if state.aborted_at is None:
            reserved_by, reserved_ms = await self.store.reservation(unit_id)
            if reserved_by is not None:
                at = core.abort_time(state, reserved_ms, self.clock())
                await self.store.mark_aborted(drill_id, at.isoformat())
                state = core.abort(state, at)
        now = self.clock()
        district, grid = record.get("district"), record.get("grid")
        result = core.result_record(state, now, self.policy, district=district, grid=grid)
        if result is None:
            await self.store.timers.schedule(drill.partition, [(decision_timer(drill_id),
                                                                core.to_ms(core.decide_at(state, self.policy)))])
            return None
        outcome = result["outcome"]
        if not await self.store.decide(drill, result, core.result_entry(result), state.issued_at.isoformat()):
            return None  # decided a moment ago by another worker, which publishes it
        metrics.DRILLS.labels(outcome, metrics.district_label(self.settings, district)).inc()
        if outcome != "aborted":
            # Time-invariant between results: ageing every result by the same Δ scales every
            # weight of the weighted mean by the same factor, so it only changes when one lands.
            await self.store.set_readiness(unit_id, core.readiness_of(await self.store.unit_results(unit_id), now))
        log.info("drill %s of unit %s: %s", drill_id, unit_id, outcome)
        await self._send_result(drill, result)
        return str(outcome)

    async def count_no_shows(self, unit_ids: Iterable[str], at: datetime) -> None:
        """Units released as no-shows from a real or exercise incident: each counts in its
        readiness as an unanswered drill would (``no_answer``). Never fails the incident flow."""
        for unit_id in unit_ids:
            try:
                await self.store.add_unit_result(unit_id, {"at": at.isoformat(), "outcome": "no_answer"})
                await self.store.set_readiness(unit_id, core.readiness_of(await self.store.unit_results(unit_id), at))
            except Exception:
                log.exception("no-show of unit %s not counted in its readiness", unit_id)

    async def abort_for_units(self, unit_ids: Iterable[str]) -> None:
        """Abort the open drills of units just reserved for an incident (the incident flow calls
        this after a dispatch). Never fails the dispatch: an error here is logged and the
        once-a-second sweep aborts the drill instead."""
        ids = list(dict.fromkeys(unit_ids))
        if not ids:
            return
        try:
            for drill_id in await self.store.open_drill_of(ids):
                if drill_id:
                    await self.decide(drill_id)
        except Exception:  # a drill must never break a real dispatch
            metrics.INTERNAL_ERRORS.labels("drills_abort").inc()
            log.exception("could not abort the drills of %d dispatched units (the sweep will)", len(ids))

    async def sweep(self, partitions: Iterable[int]) -> int:
        """Decide the open drills of ``partitions`` whose unit got reserved; return how many."""
        n = 0
        for p in sorted(partitions):
            drills = await self.store.open_drills(p)
            if not drills:
                continue
            reserved = await self.store.reserved([unit_id for _, unit_id in drills])
            for (drill_id, _), is_reserved in zip(drills, reserved, strict=True):
                if is_reserved:
                    n += await self.decide(drill_id) is not None
        return n

    async def fire(self, partition: int, timer: str, due_ms: int) -> None:
        """A decision timer is due: decide its drill (or move the timer on)."""
        _, drill_id, _ = parse_member(timer)
        await self.decide(drill_id)


@dataclass
class Drills:
    """Everything drills, for the worker: the handler of ``drills.responses.v1``, the decision
    clock, the scheduler and the operators' orders and queries."""

    settings: Settings
    redis: aioredis.Redis
    send_all: Callable[[list[Record]], Awaitable[None]]
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    #: Partitions of the (co-partitioned) input topics this worker owns: whose timers it fires.
    owned_partitions: Callable[[], set[int]] = _own_nothing
    #: The worker's readiness: the first plan waits for it (and for the registry to settle), so
    #: it sees the consumed registry.
    ready: Callable[[], bool] = _always_ready
    worker_id: str = field(default_factory=new_worker_id)
    policy: core.DrillPolicy = field(init=False)
    store: DrillStore = field(init=False)
    responses: DrillResponses = field(init=False)
    scheduler: DrillScheduler = field(init=False)
    orders: DrillOrders = field(init=False)
    decisions: TimerLoop = field(init=False)
    _last_sweep: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.policy = core.policy_from_settings(self.settings)  # refuses bad figures at start
        self.store = DrillStore(self.redis, self.settings.topic_prefix)
        self.responses = DrillResponses(self.settings, self.store, self.send_all, self.clock, self.policy)
        self.scheduler = DrillScheduler(self.settings, self.store, self.responses.issue, self.clock, self.policy,
                                        self.ready, self.worker_id)
        self.orders = DrillOrders(self.store, self.responses.issue, self.clock, self.policy)
        self.decisions = TimerLoop("drill clock", self.store.timers, self.owned_partitions, self.clock,
                                   self.responses.fire, CLOCK_TICK_S, redis_label="drills", error_label="drill_clock",
                                   survive=True, each_tick=self._sweep_now_and_then)

    @property
    def leader(self) -> bool:
        """Whether this worker holds the scheduler's lease."""
        return self.scheduler.leader

    async def on_response(self, response: dict[str, Any]) -> None:
        """Handle one ``drill-response`` (see :meth:`DrillResponses.on_response`)."""
        await self.responses.on_response(response)

    async def count_no_shows(self, unit_ids: Iterable[str], at: datetime) -> None:
        """Units released as no-shows count in their readiness (see :class:`DrillResponses`)."""
        await self.responses.count_no_shows(unit_ids, at)

    async def abort_for_units(self, unit_ids: Iterable[str]) -> None:
        """Abort the open drills of units just reserved for an incident."""
        await self.responses.abort_for_units(unit_ids)

    async def _sweep_now_and_then(self, owned: set[int]) -> None:
        if time.monotonic() - self._last_sweep >= SWEEP_S:
            self._last_sweep = time.monotonic()
            await self.responses.sweep(owned)

    async def run(self) -> None:
        """Everything this worker runs for drills: the decision clock and the scheduler."""
        await asyncio.gather(self.decisions.run(), self.scheduler.run())

    async def order(self, body: bytes) -> dict[str, Any]:
        """``POST /api/drills`` (see :meth:`DrillOrders.order`)."""
        return await self.orders.order(body)

    async def listing(self, day_text: str | None = None) -> dict[str, Any]:
        """``GET /api/drills[?date=YYYY-MM-DD]`` (see :meth:`DrillOrders.listing`)."""
        return await self.orders.listing(day_text)

    async def rates(self, by: str | None) -> dict[str, Any]:
        """``GET /api/drills/rates?by=district|grid`` (see :meth:`DrillOrders.rates`)."""
        return await self.orders.rates(by)
