"""kaifong.agents.flows.incidents — the incident flow: report → dispatch → ring clocks → escalations.

Layer: agents/flows. Thin: load the stored incident, ask :mod:`kaifong.agents.core.incident`
what the event changes, have the store apply that change atomically
(:meth:`~kaifong.agents.store.incidents.IncidentStore.apply`: reservation, document, outbox,
timers, escalations in one script call), send the outbox, count. Durable state lives in Redis
(DESIGN.md §7): a crash between storing a change and sending its records re-sends the outbox on
the next touch of the incident, so a fact is never lost nor decided twice. Ring deadlines,
re-notifications and early-update expiries are timers in Redis
(:mod:`kaifong.agents.store.timers`), fired by whichever worker owns the partition.

A report takes two Redis round trips before its records go out: open (with the candidates
search) and apply (reservation and storage together).

Events of one incident are serialised in-process by a lock per incident; across processes the
partition owner is the only writer (updates and reports are co-partitioned by incident_id).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import redis.asyncio as aioredis

from kaifong.agents.core import clock, responders
from kaifong.agents.core import incident as core
from kaifong.agents.core.dispatch import MAX_CONFLICT_RETRIES, Plan, nobody, outcome_of, view_of
from kaifong.agents.core.errors import Duplicate, Refused
from kaifong.agents.core.matching import Candidate, IncidentView, RingDecision
from kaifong.agents.core.seats import SeatBook, address_change
from kaifong.agents.flows.dispatch import Dispatcher
from kaifong.agents.flows.intake import current_message
from kaifong.agents.store.incidents import IncidentStore, Record, origin_of
from kaifong.agents.store.timers import RingClock
from kaifong.agents.store.units import UnitStore
from kaifong.streams import metrics
from kaifong.streams.codec import cloudevent_headers, dead_letter
from kaifong.streams.settings import Settings

log = logging.getLogger(__name__)


def _exercise(state: dict[str, Any]) -> str:
    return "true" if state["exercise"] else "false"


def count(settings: Settings, change: core.Change) -> None:
    """The metrics of a stored change, from the facts it carries."""
    state = change.doc["state"]
    exercise, district = _exercise(state), metrics.district_label(settings, state.get("district"))
    for body in change.assignments:
        metrics.ASSIGNMENTS.labels(str(body["ring"]), outcome_of(body), exercise).inc()
        if body["units"]:
            metrics.UNITS_ASSIGNED.labels(str(body["ring"]), district, exercise).inc(len(body["units"]))
    for e in change.escalations:
        metrics.ESCALATIONS.labels(e["level"], e["reason"], "true" if e["exercise"] else "false").inc()
        if e["reason"] == "ring_deadline_missed" and not e["exercise"]:
            metrics.ESCALATION_LATENESS.observe(max(0.0, e["breached_by_s"]))
    for ch in change.ring_changes:
        if ch.seconds is not None:
            metrics.RESPONSE.labels(str(ch.ring), district, exercise).observe(ch.seconds)
        if ch.outcome in ("met", "breached"):
            metrics.RING_OUTCOMES.labels(str(ch.ring), district, ch.outcome, exercise).inc()
    if change.acknowledged is not None:
        metrics.ESCALATION_ACK.labels(change.acknowledged[0]).observe(change.acknowledged[1])
    if change.renotified is not None:
        metrics.RENOTIFICATIONS.labels(change.renotified["level"]).inc()
    real = not state["exercise"]
    for segment, ring, kind, seconds in change.segments:
        if real:  # exercises never count in the real SLA figures
            metrics.SEGMENT.labels(segment, str(ring), kind, district).observe(seconds)
    if change.needs_met_s is not None and real:
        metrics.NEEDS_MET.labels(district).observe(change.needs_met_s)
    for released in change.released:
        if released.cause == "no_show":
            metrics.NO_SHOWS.labels(str(released.ring), district, exercise).inc()
        else:
            reason = released.reason if released.reason in metrics.DECLINE_REASONS else "other"
            metrics.DECLINES.labels(str(released.ring), district, reason, exercise).inc()
    for _, ring in change.stuck:
        metrics.STUCK.labels(str(ring), district, exercise).inc()
    for ring, cause in change.redispatched:
        metrics.REDISPATCHES.labels(str(ring), cause, exercise).inc()


def encode(kind: str, body: dict[str, Any], topics: tuple[str, str, str], now: datetime) -> Record:
    """One thing a change publishes, for its topic (state, assignment, escalation), with
    CloudEvents headers."""
    state_topic, assignment_topic, escalation_topic = topics
    incident_id = body["incident_id"]
    if kind == "state":
        headers = cloudevent_headers(f"{incident_id}:v{body['version']}", "incident-state", now, subject=incident_id)
        return (state_topic, incident_id.encode(), orjson.dumps(body), headers)
    if kind == "assignment":
        headers = cloudevent_headers(body["assignment_id"], "assignment", clock.parse_time(body["decided_at"]),
                                     subject=incident_id)
        return (assignment_topic, incident_id.encode(), orjson.dumps(body), headers)
    # Exercise escalations carry their own CloudEvents type so that no router that pages
    # real escalation targets ever matches them.
    ce_type = "escalation.exercise" if body["exercise"] else "escalation"
    headers = cloudevent_headers(f"{body['escalation_id']}:n{body['notification']}", ce_type,
                                 clock.parse_time(body["raised_at"]), subject=incident_id)
    return (escalation_topic, incident_id.encode(), orjson.dumps(body), headers)


def stored(change: core.Change, on_escalations: Callable[[], None] | None) -> None:
    """After a change is stored: count escalations told above their level; wake the notifier
    when escalations were raised, acknowledged or closed."""
    for kind, body in change.publish:
        if kind == "escalation" and not body["notification"] and body.get("seat_level", body["level"]) != body["level"]:
            metrics.ESCALATIONS_UNROUTED.labels(body["level"], body["seat_level"]).inc()
    if on_escalations is not None and (change.escalations or change.escalations_closed or
                                       change.acknowledged is not None or change.close):
        on_escalations()


@dataclass
class Incidents:
    """Handlers for reports, updates and timers of incidents."""

    settings: Settings
    redis: aioredis.Redis
    send_all: Callable[[list[Record]], Awaitable[None]]
    clock: Callable[[], datetime]
    store: UnitStore
    dispatcher: Dispatcher
    timers: RingClock
    #: Called with the units of every fresh dispatch (the drill scheduler aborts their open
    #: drills at once: a drilled unit stays fully available for real incidents).
    on_dispatched: Callable[[list[str]], Awaitable[None]] | None = None
    #: Called with the units released as no-shows (the drills flow counts them in readiness).
    on_no_show: Callable[[list[str], datetime], Awaitable[None]] | None = None
    #: The duty seats in use (None: no seats file, escalations are not addressed).
    seats: Callable[[], SeatBook | None] = lambda: None
    #: Called after a stored change raised, acknowledged or closed escalations (the notifier
    #: pushes to Alertmanager at once instead of at its next round).
    on_escalations: Callable[[], None] | None = None
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    incidents: IncidentStore = field(init=False)
    policy: core.Policy = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.policy = core.Policy(renotify_s=s.escalation_renotify_s, ack_windows=s.ack_window_table(),
                                  stuck_factor=s.stuck_factor, rings=tuple(r.number for r in s.ring_table()),
                                  run_cards=self.dispatcher.run_cards)
        self.incidents = IncidentStore(self.redis, self.settings.topic_prefix, self.store.stale_after_s,
                                       self.store.run)

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def state_topic(self) -> str:
        """Full name of the incident state topic."""
        return self.settings.topic_prefix + "incidents.state.v1"

    @property
    def escalation_topic(self) -> str:
        """Full name of the escalations topic."""
        return self.settings.topic_prefix + "incidents.escalations.v1"

    def lock(self, incident_id: str) -> asyncio.Lock:
        """The in-process lock of one incident (dropped when nobody holds or waits for it)."""
        lk = self._locks.get(incident_id)
        if lk is None:
            lk = self._locks[incident_id] = asyncio.Lock()
        return lk

    def _unlock(self, incident_id: str) -> None:
        lk = self._locks.get(incident_id)
        if lk is not None and not lk.locked() and not getattr(lk, "_waiters", None):
            self._locks.pop(incident_id, None)

    async def load(self, incident_id: str) -> dict[str, Any] | None:
        """The stored document (with any pending outbox as ``outbox``) or None."""
        got = await self.incidents.load(incident_id)
        return None if got is None else {**got[0], "outbox": got[1]}

    def _now_ms(self) -> int:
        return int(self.clock().timestamp() * 1000)

    async def _apply(self, change: core.Change) -> tuple[list[str], list[Record]]:
        """Store ``change`` with its encoded records; the units that could not be reserved."""
        topics = (self.state_topic, self.dispatcher.topic, self.escalation_topic)
        now = self.clock()
        change = address_change(change, self.seats(), now)  # escalations name their duty seats
        records = [encode(kind, body, topics, now) for kind, body in change.publish]
        failed = await self.incidents.apply(change, records, self._now_ms())
        if not failed:
            stored(change, self.on_escalations)
        return failed, records

    async def _send(self, incident_id: str, records: list[Record]) -> None:
        """Send a stored change's records, then forget its outbox."""
        if records:
            await self.send_all(records)
            await self.incidents.sent(incident_id)

    async def _commit(self, change: core.Change) -> None:
        """A change that reserves nothing: store it, send it, count it."""
        failed, records = await self._apply(change)
        assert not failed
        await self._send(change.doc["state"]["incident_id"], records)
        count(self.settings, change)

    async def _decide(self, view: IncidentView, p: Plan, candidates: list[Candidate], exclude: frozenset[str],
                      build: Callable[[list[RingDecision]], core.Change]) -> tuple[core.Change, list[Record]]:
        """Choose, reserve and store in one step; on a lost race (another incident took a unit)
        exclude the lost units and decide again. When every retry lost, decide with nobody
        rather than loop forever: the clock escalates an empty ring at once."""
        lost: set[str] = set()
        for _ in range(MAX_CONFLICT_RETRIES):
            pool = [c for c in candidates if c.unit_id not in lost]
            change = build(self.dispatcher.choose(view, pool, p, exclude | lost))
            failed, records = await self._apply(change)
            if not failed:
                return change, records
            metrics.RESERVATION_CONFLICTS.inc(len(failed))
            lost |= set(failed)
        log.warning("incident %s: gave up reserving after %d conflicts", view.incident_id, MAX_CONFLICT_RETRIES)
        change = build(nobody(p))
        failed, records = await self._apply(change)
        assert not failed  # reserves nobody
        return change, records

    def _partition(self, doc: dict[str, Any] | None = None) -> int:
        msg = current_message.get(None)
        if msg is not None:
            return int(msg.partition)
        return int(doc["partition"]) if doc else 0

    # -- reports -----------------------------------------------------------------------------
    async def on_reported(self, report: dict[str, Any]) -> None:
        """Open the incident once, dispatch its first rings, start its clocks, publish."""
        started = current_message.get(None)
        t0 = getattr(started, "received", None) or time.perf_counter()
        incident_id = report["incident_id"]
        try:
            async with self.lock(incident_id):
                fresh, early, stored_at, acked_at = await self._on_reported(report)
        finally:
            self._unlock(incident_id)
        if fresh is not None:
            metrics.DECISION_STORED.observe(stored_at - t0)
            metrics.DECISION.observe(acked_at - t0)
            age = (self.clock() - clock.parse_time(fresh["state"]["reported_at"])).total_seconds()
            if age >= 0:
                metrics.REPORTED_TO_ASSIGNMENT.labels(_exercise(fresh["state"])).observe(age)
        if early:
            await self.apply_early(incident_id)

    async def _on_reported(self, report: dict[str, Any]) -> tuple[dict[str, Any] | None, bool, float, float]:
        """The first decision, or None for a replay; whether updates wait for this report; when
        the decision was stored and handed to the producer, and when the broker acknowledged it."""
        incident_id = report["incident_id"]
        ring_table = self.settings.ring_table()
        # One round trip for everything the decision may need to know first, and the opening
        # itself: the first report wins; a second report of the same incident under another
        # event_id (two callers) does not open it twice.
        fresh = core.fresh_document(report, ring_table, self.clock(), self._partition())
        view = view_of(fresh["report"])
        p = self.dispatcher.plan(view, core.first_rings(view.severity, ring_table))
        inbound = current_message.get(None)
        opened = await self.incidents.open(fresh, inbound.dedupe if inbound else None,
                                           self.dispatcher.search_args(view, p))
        if opened is None:
            raise Duplicate
        doc = opened.doc
        if opened.created:
            candidates: list[Candidate] | None = await self.store.found(opened.found)
        else:
            await self._send(incident_id, opened.outbox)  # replay: finish what was interrupted
            if doc.get("assignments") is not None:
                now = time.perf_counter()
                return None, opened.early, now, now  # decided before: decide nothing new
            view = view_of(doc["report"])
            p = self.dispatcher.plan(view, core.first_rings(view.severity, ring_table))
            candidates = None
        if opened.held:  # reserved by a decision that was interrupted before it was stored
            await self.store.release(incident_id, opened.held)
            candidates = None  # search again: the released units are candidates too
        if candidates is None:
            candidates = await self.dispatcher.find(view, p)
        now_t = self.clock()
        change, records = await self._decide(
            view, p, candidates, frozenset(),
            lambda decisions: core.reported(doc, view, decisions, now_t, self.policy))
        stored_at = time.perf_counter()
        await self._send(incident_id, records)
        acked_at = time.perf_counter()
        if self.on_dispatched is not None:
            await self.on_dispatched(change.dispatched)
        count(self.settings, change)
        return change.doc, opened.early, stored_at, acked_at

    # -- updates -----------------------------------------------------------------------------
    async def on_update(self, update: dict[str, Any]) -> None:
        """Apply a milestone or an escalation acknowledgement; park it if the report is late."""
        incident_id = update["incident_id"]
        async with self.lock(incident_id):
            await self._on_update(update)
        self._unlock(incident_id)

    async def _on_update(self, update: dict[str, Any], parked: bool = False) -> None:
        incident_id = update["incident_id"]
        got = await self.incidents.load(incident_id)
        if got is None:
            if not parked:
                await self.park(update)
            return
        doc, outbox = got
        await self._send(incident_id, outbox)  # what an interrupted change left
        # None: a replay of an update already applied.
        await self._settle(core.updated(doc, update, self.clock(), self.policy))

    async def _settle(self, outcome: core.Change | core.Redispatch | None) -> None:
        """Store, send and count what an event decided; first decide the rings it re-opened."""
        if outcome is None:
            return
        if isinstance(outcome, core.Change):
            await self._commit(outcome)
            change = outcome
        else:
            r = outcome
            now = self.clock()
            p = self.dispatcher.plan(r.view, list(r.rings))
            candidates = await self.dispatcher.find(r.view, p)
            change, records = await self._decide(r.view, p, candidates, r.exclude,
                                                 lambda decisions: core.redispatched(r, decisions, now, self.policy))
            await self._send(change.doc["state"]["incident_id"], records)
            count(self.settings, change)
            if self.on_dispatched is not None and change.dispatched:
                await self.on_dispatched(change.dispatched)
        no_shows = [x.unit_id for x in change.released if x.cause == "no_show"]
        if no_shows and self.on_no_show is not None:
            await self.on_no_show(no_shows, self.clock())

    async def park(self, update: dict[str, Any]) -> None:
        """Hold an update whose report has not arrived, with its original bytes, for a while."""
        msg = current_message.get(None)
        due = self.clock() + timedelta(seconds=self.settings.early_update_hold_s)
        await self.incidents.park(update, origin_of(msg) if msg is not None else None, self._partition(),
                                  core.timer("e", update["incident_id"]), core.due_ms(due))

    async def apply_early(self, incident_id: str) -> None:
        """Apply the updates that waited for this report, in arrival order."""
        entries = await self.incidents.parked(incident_id)
        if not entries:
            return
        for entry in entries:
            try:
                async with self.lock(incident_id):
                    await self._on_update(entry["update"], parked=True)
            except Refused as exc:
                await self._dead_letter_parked(entry, exc.stage, exc.error_class, exc.reason)
        self._unlock(incident_id)
        await self.incidents.drop_parked(incident_id)

    async def _dead_letter_parked(self, entry: dict[str, Any], stage: str, error_class: str, reason: str) -> None:
        key = base64.b64decode(entry["key"]) if entry.get("key") else None
        body, headers = dead_letter(
            key=key, value=base64.b64decode(entry.get("value", "")), topic=entry.get("topic", "?"),
            partition=int(entry.get("partition", -1)), offset=int(entry.get("offset", -1)),
            stage=stage, error_class=error_class, error=reason, now=self.clock())
        await self.send_all([(self.settings.topic_prefix + "deadletter.v1", key, orjson.dumps(body), headers)])
        metrics.DEADLETTERS.labels(stage, error_class).inc()

    # -- timers ------------------------------------------------------------------------------
    async def fire(self, partition: int, timer: str, due_ms: int) -> None:
        """Fire one timer claimed from ``partition``."""
        kind, incident_id, arg = core.parse_timer(timer)
        if kind == "e":
            await self._expire_early(incident_id)
            return
        async with self.lock(incident_id):
            got = await self.incidents.load(incident_id)
            if got is not None:
                doc, outbox = got
                await self._send(incident_id, outbox)  # what an interrupted change left
                if kind == "d":
                    await self._deadline(doc, int(arg))
                elif kind == "n":
                    await self._settle(core.renotify(doc, arg, self.clock(), self.policy))
                elif kind == "w":  # a unit's acknowledgement window ended
                    await self._settle(responders.window_closed(doc, arg, self.clock(), self.policy))
                elif kind == "s":  # a unit en route long past its ETA
                    await self._settle(responders.stuck_check(doc, arg, self.clock(), self.policy))
        self._unlock(incident_id)

    async def _expire_early(self, incident_id: str) -> None:
        if await self.incidents.exists(incident_id):
            return  # the report came: its handler applied the parked updates
        for entry in await self.incidents.parked(incident_id):
            await self._dead_letter_parked(
                entry, "clock", "no_report",
                f"no report of incident {incident_id} within {self.settings.early_update_hold_s:g}s of this update")
        await self.incidents.drop_parked(incident_id)

    async def _deadline(self, doc: dict[str, Any], ring: int) -> None:
        """A ring deadline: breach, escalate, and re-dispatch the ring wider — the next
        candidates, never a unit already tried — in one stored change."""
        now = self.clock()
        b = core.breach(doc, ring, now, view_of(doc["report"], doc["state"]["severity"]))
        if b is None:
            return  # met, stopped or already breached: nothing to fire
        p = self.dispatcher.plan(b.view, [ring])
        candidates = await self.dispatcher.find(b.view, p)
        change, records = await self._decide(
            b.view, p, candidates, b.exclude,
            lambda decisions: core.breached(doc, b, decisions, now, self.policy))
        await self._send(b.state["incident_id"], records)
        count(self.settings, change)
        if self.on_dispatched is not None:
            await self.on_dispatched(change.dispatched)
