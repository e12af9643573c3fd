"""kaifong.agents.flows.incidents — the incident flow: report → dispatch → ring clocks → escalations.

Layer: agents. Thin: read the stored incident document, call the pure functions in
``clock``/``dispatch``, write, send, count. Durable state lives in Redis (DESIGN.md §7):

- the incident document (``kf:inc:{id}``) holds the state, the decisions and the escalations;
  beside it, ``kf:inc:{id}:outbox`` holds the records a change must publish. The change and its
  outbox are written in one transaction; the records are then sent and the outbox deleted. A
  crash in between re-sends the outbox on the next touch of the incident, so a fact is never
  lost nor decided twice;
- ring deadlines, re-notifications and early-update expiries are timers in Redis
  (:mod:`kaifong.agents.store.timers`), fired by whichever worker owns the partition.

Events of one incident are serialised in-process by a lock per incident; across processes the
partition owner is the only writer (updates and reports are co-partitioned by incident_id).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import redis.asyncio as aioredis

from kaifong.agents.core import clock
from kaifong.agents.core.errors import Duplicate, Refused
from kaifong.agents.core.matching import IncidentView, RingDecision
from kaifong.agents.flows.dispatch import Dispatcher, assignment_body, outcome_of, view_of
from kaifong.agents.flows.intake import current_message
from kaifong.agents.store.timers import RingClock, member, parse_member
from kaifong.agents.store.units import CANDIDATES_FN, UnitStore
from kaifong.streams import metrics
from kaifong.streams.codec import Headers, cloudevent_headers, dead_letter
from kaifong.streams.settings import Settings

log = logging.getLogger(__name__)

#: (topic, key, value, headers) of one record to produce.
Record = tuple[str, bytes | None, bytes, Headers]

#: Applied update ids remembered per incident (idempotency beyond the dedupe window).
APPLIED_KEEP = 500


def incident_key(incident_id: str) -> str:
    """Redis key of an incident's stored document."""
    return f"kf:inc:{incident_id}"


def outbox_key(incident_id: str) -> str:
    """Redis key of the records an incident's last change has yet to see acknowledged."""
    return f"kf:inc:{incident_id}:outbox"


def _stored(doc: dict[str, Any]) -> bytes:
    """The document as stored: the outbox lives in its own key (see :func:`outbox_key`)."""
    return orjson.dumps({k: v for k, v in doc.items() if k != "outbox"})


def early_key(incident_id: str) -> str:
    """Redis list of updates that arrived before their incident's report."""
    return f"kf:early:{incident_id}"


#: Open an incident in one round trip: the stored document if there is one, else the fresh
#: document stored and the incident added to its open set; with the outbox, the units an
#: interrupted decision had reserved and whether updates were parked for it; and, for a fresh
#: incident, the candidates of its first decision (the search of ``unitstore.CANDIDATES_FN``),
#: so that the decision needs no round trip of its own to find them.
#: KEYS: document, outbox, units held, early updates, open set. ARGV: fresh document, id, the
#: report's dedupe key ('' = checked already), then the candidates search (none: no search).
#: Returns {document or false, outbox or false, held units, early exists, 1 if created,
#: candidates}, or {'dup'} when the report was processed before.
OPEN_SCRIPT = CANDIDATES_FN + """
if ARGV[3] ~= '' and redis.call('EXISTS', ARGV[3]) == 1 then return {'dup'} end
local doc = redis.call('GET', KEYS[1])
local created = 0
local found = {}
if not doc then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[5], ARGV[2])
  created = 1
  if ARGV[4] then found = candidates(4) end
end
return {doc or false, redis.call('GET', KEYS[2]) or false, redis.call('SMEMBERS', KEYS[3]),
        redis.call('EXISTS', KEYS[4]), created, found}
"""

#: When the current change was stored and its records handed to the producer, and when the
#: broker acknowledged them (perf_counter), for the decision-time metrics: received → stored
#: (the worker's own time) and received → acknowledged (housekeeping after it excluded).
STORED_AT: ContextVar[float | None] = ContextVar("kaifong_stored_at", default=None)
ACKED_AT: ContextVar[float | None] = ContextVar("kaifong_acked_at", default=None)


def _ms(t: datetime) -> int:
    # Rounded up: a timer claimed at its due millisecond must never fire before the deadline.
    return math.ceil(t.timestamp() * 1000)


def _pack(records: list[Record]) -> list[dict[str, Any]]:
    """Records as JSON-able outbox entries."""
    return [{"t": t, "k": None if k is None else k.decode(), "v": v.decode(),
             "h": [[hk, hv.decode()] for hk, hv in h]} for t, k, v, h in records]


def _unpack(entries: list[dict[str, Any]]) -> list[Record]:
    return [(e["t"], None if e["k"] is None else e["k"].encode(), e["v"].encode(),
             [(hk, hv.encode()) for hk, hv in e["h"]]) for e in entries]


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
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    #: Whether updates were parked for an incident, learnt in the report's first round trip.
    _early_waiting: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._open = self.redis.register_script(OPEN_SCRIPT)

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
        """The stored document (with any pending outbox) or None."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(incident_key(incident_id))
        pipe.get(outbox_key(incident_id))
        raw, outbox = await pipe.execute()
        return self._doc(raw, outbox)

    @staticmethod
    def _doc(raw: bytes | None, outbox: bytes | None) -> dict[str, Any] | None:
        if raw is None:
            return None
        doc: dict[str, Any] = orjson.loads(raw)
        doc["outbox"] = orjson.loads(outbox) if outbox else []
        return doc

    async def save(self, doc: dict[str, Any]) -> None:
        """Write an incident's document back."""
        await self.redis.set(incident_key(doc["state"]["incident_id"]), _stored(doc))

    def state_record(self, state: dict[str, Any]) -> Record:
        """The state for the compacted state topic (CloudEvents id: incident and version)."""
        headers = cloudevent_headers(f"{state['incident_id']}:v{state['version']}", "incident-state",
                                     self.clock(), subject=state["incident_id"])
        return (self.state_topic, state["incident_id"].encode(), orjson.dumps(state), headers)

    def assignment_record(self, body: dict[str, Any]) -> Record:
        """One assignment for the assignments topic."""
        headers = cloudevent_headers(body["assignment_id"], "assignment", clock.parse_time(body["decided_at"]),
                                     subject=body["incident_id"])
        return (self.dispatcher.topic, body["incident_id"].encode(), orjson.dumps(body), headers)

    def escalation_record(self, body: dict[str, Any]) -> Record:
        """One escalation (or re-notification). Exercise escalations carry their own CloudEvents
        type so that no router that pages real escalation targets ever matches them."""
        kind = "escalation.exercise" if body["exercise"] else "escalation"
        headers = cloudevent_headers(f"{body['escalation_id']}:n{body['notification']}", kind,
                                     clock.parse_time(body["raised_at"]), subject=body["incident_id"])
        return (self.escalation_topic, body["incident_id"].encode(), orjson.dumps(body), headers)

    def writes(self, doc: dict[str, Any], records: list[Record], timers: list[tuple[str, int]] | None = None,
               open_escalations: dict[str, str] | None = None) -> list[tuple[Any, ...]]:
        """The Redis commands that store a change: document, outbox, timers, open escalations."""
        incident_id = doc["state"]["incident_id"]
        commands: list[tuple[Any, ...]] = [("SET", incident_key(incident_id), _stored(doc))]
        if records:
            commands.append(("SET", outbox_key(incident_id), orjson.dumps(_pack(records))))
        if timers:
            commands.append(("ZADD", self.timers.due_key(int(doc["partition"])),
                             *(x for name, due in timers for x in (due, name))))
        if open_escalations:
            commands.append(("HSET", self._esc_open_key(), *(x for kv in open_escalations.items() for x in kv)))
        return commands

    async def commit(self, doc: dict[str, Any], records: list[Record],
                     timers: list[tuple[str, int]] | None = None, open_escalations: dict[str, str] | None = None,
                     *, written: bool = False) -> dict[str, Any]:
        """Store the change with its outbox (and its timers), send the outbox, clear it.

        The outbox pattern: the change and what it must publish are written in one transaction
        (``written``: already done, in the reservation's atomic step); a crash before the outbox
        is deleted re-sends it on the next touch of the incident. The document is encoded once
        per change; clearing the outbox is a DEL, not a rewrite.
        """
        if not written:
            pipe = self.redis.pipeline(transaction=True)
            for command in self.writes(doc, records, timers, open_escalations):
                pipe.execute_command(*command)
            await pipe.execute()
        incident_id = doc["state"]["incident_id"]
        if records:
            STORED_AT.set(time.perf_counter())
            await self.send_all(records)
            ACKED_AT.set(time.perf_counter())
            await self.redis.delete(outbox_key(incident_id))
        return {**doc, "outbox": []}

    async def flush_outbox(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Re-send what an interrupted change left in the outbox."""
        if doc.get("outbox"):
            await self.send_all(_unpack(doc["outbox"]))
            await self.redis.delete(outbox_key(doc["state"]["incident_id"]))
        return {**doc, "outbox": []}

    def _partition(self, doc: dict[str, Any] | None = None) -> int:
        msg = current_message.get(None)
        if msg is not None:
            return int(msg.partition)
        return int(doc["partition"]) if doc else 0

    def _exercise(self, state: dict[str, Any]) -> str:
        return "true" if state["exercise"] else "false"

    def _district(self, state: dict[str, Any]) -> str:
        return metrics.district_label(self.settings, state.get("district"))

    # -- reports -----------------------------------------------------------------------------
    async def on_reported(self, report: dict[str, Any]) -> None:
        """Open the incident once, dispatch its first rings, start its clocks, publish."""
        started = current_message.get(None)
        t0 = getattr(started, "received", None) or time.perf_counter()
        incident_id = report["incident_id"]
        STORED_AT.set(None)
        ACKED_AT.set(None)
        try:
            async with self.lock(incident_id):
                fresh = await self._on_reported(report)
        finally:
            self._unlock(incident_id)
        if fresh is not None:
            now = time.perf_counter()
            metrics.DECISION_STORED.observe((STORED_AT.get() or now) - t0)
            metrics.DECISION.observe((ACKED_AT.get() or now) - t0)
            age = (self.clock() - clock.parse_time(fresh["state"]["reported_at"])).total_seconds()
            if age >= 0:
                metrics.REPORTED_TO_ASSIGNMENT.labels(self._exercise(fresh["state"])).observe(age)
        if self._early_waiting.pop(incident_id, 1):
            await self.apply_early(incident_id)

    async def _on_reported(self, report: dict[str, Any]) -> dict[str, Any] | None:
        incident_id = report["incident_id"]
        # One round trip for everything the decision may need to know first, and the opening
        # itself: the first report wins; a second report of the same incident under another
        # event_id (two callers) does not open it twice.
        now = self.clock()
        state = clock.open_incident(report, self.settings.ring_table(), now)
        # The caller's contact stays upstream: kaifong keeps no personal data it does not need.
        kept = {k: v for k, v in report.items() if k != "caller"}
        fresh: dict[str, Any] = {"state": state, "applied": [], "report": kept, "assignments": None,
                                 "escalations": {}, "partition": self._partition(), "outbox": []}
        view = view_of(kept)
        rings = self._first_rings(view)
        inbound = current_message.get(None)
        opened = await self._open(
            keys=[incident_key(incident_id), outbox_key(incident_id), f"kf:inc:{incident_id}:units",
                  early_key(incident_id), self._open_key(state["exercise"])],
            args=[_stored(fresh), incident_id, (inbound.dedupe if inbound else None) or "",
                  *self.dispatcher.search_args(view, rings)])
        if len(opened) == 1:
            raise Duplicate
        raw_doc, raw_outbox, held_raw, self._early_waiting[incident_id], created, found = opened
        doc: dict[str, Any] | None = fresh if created else self._doc(raw_doc, raw_outbox)
        assert doc is not None
        candidates = await self.store.found(found) if created else None
        if not created:
            await self.flush_outbox(doc)  # replay: finish what was interrupted, decide nothing new
            if doc.get("assignments") is not None:
                return None
            view = view_of(doc["report"])
            rings = self._first_rings(view)
        held = {m.decode() for m in held_raw}
        if held:  # reserved by a decision that was interrupted before it was stored
            await self.store.release(incident_id, held)
            candidates = None  # search again: the released units are candidates too
        built: dict[str, Any] = {}
        base: dict[str, Any] = doc

        def writes(decisions: list[RingDecision]) -> list[tuple[Any, ...]]:
            # Built for each candidate decision; stored by the reservation that succeeds.
            built.clear()
            built.update(self._decided(base, view, decisions), decisions=decisions)
            return self.writes(built["doc"], built["records"], built["timers"], built["open"])

        decisions = await self.dispatcher.decide(view, rings, writes=writes, candidates=candidates)
        written = built.get("decisions") is decisions
        if not written:  # every reservation lost its race: the empty decision is stored here
            built.update(self._decided(base, view, decisions))
        doc = await self.commit(built["doc"], built["records"], built["timers"], built["open"], written=written)
        bodies, escalations = built["bodies"], built["escalations"]
        if self.on_dispatched is not None:
            await self.on_dispatched([u["unit_id"] for b in bodies for u in b["units"]])
        self._count_decision(doc, escalations)
        return doc

    def _first_rings(self, view: IncidentView) -> list[int]:
        """The rings decided when an incident is reported (by severity)."""
        return clock.initial_rings(view.severity, [r.number for r in self.settings.ring_table()])

    def _decided(self, doc: dict[str, Any], view: IncidentView, decisions: list[RingDecision]) -> dict[str, Any]:
        """A report's first decision as a change: document, records, timers, open escalations."""
        incident_id = view.incident_id
        now = self.clock()
        bodies = [assignment_body(incident_id, d, 0, now, view.exercise) for d in decisions]
        state = clock.with_assignments(doc["state"], bodies, now)
        escalations: list[dict[str, Any]] = []
        if view.severity == 1:
            state, body = clock.escalate(state, 1, "severity", now)
            escalations.append(body)
        for d in decisions:
            if not d.units and d.reason != "needs_met":
                state, body = clock.escalate(state, d.ring, "no_candidate", now)
                escalations.append(body)
        doc = {**doc, "state": state, "assignments": bodies,
               "escalations": {**doc["escalations"], **{e["escalation_id"]: self._esc_entry(e) for e in escalations}}}
        timers = [(member("d", incident_id, str(r["ring"])), _ms(clock.parse_time(r["deadline_at"])))
                  for r in state["rings"] if r["state"] == "pending"]
        timers += [(member("n", incident_id, e["escalation_id"]), _ms(now) + self._renotify_ms())
                   for e in escalations]
        records = ([self.assignment_record(b) for b in bodies] + [self.escalation_record(e) for e in escalations]
                   + [self.state_record(state)])
        return {"doc": doc, "records": records, "timers": timers, "bodies": bodies, "escalations": escalations,
                "open": {e["escalation_id"]: e["level"] for e in escalations if not e["exercise"]}}

    def _renotify_ms(self) -> int:
        return int(self.settings.escalation_renotify_s * 1000)

    def _open_key(self, exercise: bool) -> str:
        return f"kf:inc:open:{self.settings.topic_prefix}{'exercise' if exercise else 'real'}"

    def _esc_open_key(self) -> str:
        return f"kf:esc:open:{self.settings.topic_prefix}"

    @staticmethod
    def _esc_entry(body: dict[str, Any]) -> dict[str, Any]:
        return {"body": body, "acked_at": None, "acked_by": None, "notifications": 0}

    def _count_decision(self, doc: dict[str, Any], escalations: list[dict[str, Any]]) -> None:
        state = doc["state"]
        exercise = self._exercise(state)
        for body in doc["assignments"] or []:
            metrics.ASSIGNMENTS.labels(str(body["ring"]), outcome_of(body), exercise).inc()
        for e in escalations:
            self._count_escalation(e)

    def _count_escalation(self, body: dict[str, Any]) -> None:
        metrics.ESCALATIONS.labels(body["level"], body["reason"], "true" if body["exercise"] else "false").inc()
        if body["reason"] == "ring_deadline_missed" and not body["exercise"]:
            metrics.ESCALATION_LATENESS.observe(max(0.0, body["breached_by_s"]))

    # -- updates -----------------------------------------------------------------------------
    async def on_update(self, update: dict[str, Any]) -> None:
        """Apply a milestone or an escalation acknowledgement; park it if the report is late."""
        incident_id = update["incident_id"]
        async with self.lock(incident_id):
            await self._on_update(update)
        self._unlock(incident_id)

    async def _on_update(self, update: dict[str, Any], parked: bool = False) -> None:
        incident_id = update["incident_id"]
        doc = await self.load(incident_id)
        if doc is None:
            if parked:
                return
            await self.park(update)
            return
        doc = await self.flush_outbox(doc)
        if update["event_id"] in doc["applied"]:
            return  # replay of an update already applied
        now = self.clock()
        if update["kind"] == "escalation_acknowledged":
            await self._acknowledge(doc, update, now)
            return
        state, changes = clock.apply_update(doc["state"], update, now)
        doc = {**doc, "state": state, "applied": [*doc["applied"], update["event_id"]][-APPLIED_KEEP:]}
        exercise, district = self._exercise(state), self._district(state)
        for ch in changes:
            if ch.seconds is not None:
                metrics.RESPONSE.labels(str(ch.ring), district, exercise).observe(ch.seconds)
            if ch.outcome in ("met", "breached"):
                metrics.RING_OUTCOMES.labels(str(ch.ring), district, ch.outcome, exercise).inc()
        if state["status"] in clock.TERMINAL:
            await self._close(doc)
        await self.commit(doc, [self.state_record(state)])

    async def _close(self, doc: dict[str, Any]) -> None:
        """Stop every clock of a resolved/cancelled incident and free its units."""
        state = doc["state"]
        incident_id = state["incident_id"]
        members = [member("d", incident_id, str(r["ring"])) for r in state["rings"]]
        members += [member("n", incident_id, e) for e in doc["escalations"]]
        await self.timers.cancel(doc["partition"], members)
        await self.store.release(incident_id, await self.store.held_by(incident_id))
        await self.redis.srem(self._open_key(state["exercise"]), incident_id)

    async def _acknowledge(self, doc: dict[str, Any], update: dict[str, Any], now: datetime) -> None:
        esc_id = str(update.get("escalation_id") or "")
        entry = doc["escalations"].get(esc_id)
        if entry is None:
            raise Refused("clock", "unknown_escalation",
                          f"no escalation {esc_id!r} on incident {update['incident_id']}")
        doc = {**doc, "applied": [*doc["applied"], update["event_id"]][-APPLIED_KEEP:]}
        if entry["acked_at"] is None:
            at = clock.parse_time(update["at"])
            entry = {**entry, "acked_at": update["at"], "acked_by": update.get("by")}
            doc["escalations"] = {**doc["escalations"], esc_id: entry}
            await self.timers.cancel(doc["partition"], [member("n", update["incident_id"], esc_id)])
            raised = clock.parse_time(entry["body"]["raised_at"])
            metrics.ESCALATION_ACK.labels(entry["body"]["level"]).observe(max(0.0, (at - raised).total_seconds()))
        await self.redis.hdel(self._esc_open_key(), esc_id)
        await self.commit(doc, [])

    async def park(self, update: dict[str, Any]) -> None:
        """Hold an update whose report has not arrived, with its original bytes, for a while."""
        msg = current_message.get(None)
        entry: dict[str, Any] = {"update": update}
        if msg is not None:
            entry.update(topic=msg.topic, partition=msg.partition, offset=msg.offset,
                         key=None if msg.key is None else base64.b64encode(msg.key).decode(),
                         value=base64.b64encode(msg.value or b"").decode())
        await self.redis.rpush(early_key(update["incident_id"]), orjson.dumps(entry))
        await self.redis.expire(early_key(update["incident_id"]), 24 * 3600)
        due = self.clock() + timedelta(seconds=self.settings.early_update_hold_s)
        await self.timers.schedule(self._partition(), [(member("e", update["incident_id"]), _ms(due))])

    async def apply_early(self, incident_id: str) -> None:
        """Apply the updates that waited for this report, in arrival order."""
        raw = await self.redis.lrange(early_key(incident_id), 0, -1)
        if not raw:
            return
        for item in raw:
            entry = orjson.loads(item)
            try:
                async with self.lock(incident_id):
                    await self._on_update(entry["update"], parked=True)
            except Refused as exc:
                await self._dead_letter_parked(entry, exc.stage, exc.error_class, exc.reason)
        self._unlock(incident_id)
        await self.redis.delete(early_key(incident_id))

    async def _dead_letter_parked(self, entry: dict[str, Any], stage: str, error_class: str, reason: str) -> None:
        body, headers = dead_letter(
            key=base64.b64decode(entry["key"]) if entry.get("key") else None,
            value=base64.b64decode(entry.get("value", "")), topic=entry.get("topic", "?"),
            partition=int(entry.get("partition", -1)), offset=int(entry.get("offset", -1)),
            stage=stage, error_class=error_class, error=reason, now=self.clock())
        await self.send_all([(self.settings.topic_prefix + "deadletter.v1",
                              base64.b64decode(entry["key"]) if entry.get("key") else None,
                              orjson.dumps(body), headers)])
        metrics.DEADLETTERS.labels(stage, error_class).inc()

    # -- timers ------------------------------------------------------------------------------
    async def fire(self, partition: int, timer: str, due_ms: int) -> None:
        """Fire one timer claimed from ``partition``."""
        kind, incident_id, arg = parse_member(timer)
        if kind == "e":
            await self._expire_early(incident_id)
            return
        async with self.lock(incident_id):
            doc = await self.load(incident_id)
            if doc is not None:
                doc = await self.flush_outbox(doc)
                if kind == "d":
                    await self._deadline(doc, int(arg))
                elif kind == "n":
                    await self._renotify(doc, arg)
        self._unlock(incident_id)

    async def _expire_early(self, incident_id: str) -> None:
        if await self.load(incident_id) is not None:
            return  # the report came: its handler applied the parked updates
        raw = await self.redis.lrange(early_key(incident_id), 0, -1)
        for item in raw:
            await self._dead_letter_parked(
                orjson.loads(item), "clock", "no_report",
                f"no report of incident {incident_id} within {self.settings.early_update_hold_s:g}s of this update")
        await self.redis.delete(early_key(incident_id))

    async def _deadline(self, doc: dict[str, Any], ring: int) -> None:
        now = self.clock()
        state = clock.breach(doc["state"], ring, now)
        if state is None:
            return  # met, stopped or already breached: nothing to fire
        incident_id = state["incident_id"]
        exercise, district = self._exercise(state), self._district(state)
        metrics.RING_OUTCOMES.labels(str(ring), district, "breached", exercise).inc()
        attempt = sum(1 for e in doc["escalations"].values()
                      if e["body"]["ring"] == ring and e["body"]["reason"] == "ring_deadline_missed")
        state, esc = clock.escalate(state, ring, "ring_deadline_missed", now, attempt)
        # A wider re-dispatch for the ring: the next candidates, never a unit already tried.
        tried = frozenset(u["unit_id"] for b in doc["assignments"] or [] for u in b["units"])
        re_attempt = 1 + max((b["attempt"] for b in doc["assignments"] or [] if b["ring"] == ring), default=0)
        decisions = await self.dispatcher.decide(view_of(doc["report"], state["severity"]), [ring],
                                                 exclude=tried, attempt=re_attempt)
        bodies = [assignment_body(incident_id, d, re_attempt, now, state["exercise"]) for d in decisions]
        state = clock.with_assignments(state, bodies, now)
        doc = {**doc, "state": state, "assignments": [*(doc["assignments"] or []), *bodies],
               "escalations": {**doc["escalations"], esc["escalation_id"]: self._esc_entry(esc)}}
        await self.timers.schedule(doc["partition"], [(member("n", incident_id, esc["escalation_id"]),
                                                       _ms(now) + self._renotify_ms())])
        await self.commit(doc, [self.escalation_record(esc), *[self.assignment_record(b) for b in bodies],
                                self.state_record(state)],
                          open_escalations=None if state["exercise"] else {esc["escalation_id"]: esc["level"]})
        self._count_escalation(esc)
        if self.on_dispatched is not None:
            await self.on_dispatched([u["unit_id"] for b in bodies for u in b["units"]])
        for b in bodies:
            metrics.ASSIGNMENTS.labels(str(ring), outcome_of(b), exercise).inc()

    async def _renotify(self, doc: dict[str, Any], esc_id: str) -> None:
        entry = doc["escalations"].get(esc_id)
        if entry is None or entry["acked_at"] is not None or doc["state"]["status"] in clock.TERMINAL:
            return
        now = self.clock()
        n = entry["notifications"] + 1
        body = {**entry["body"], "notification": n}
        doc = {**doc, "escalations": {**doc["escalations"], esc_id: {**entry, "notifications": n}}}
        await self.timers.schedule(doc["partition"], [(member("n", doc["state"]["incident_id"], esc_id),
                                                       _ms(now) + self._renotify_ms())])
        await self.commit(doc, [self.escalation_record({**body, "raised_at": now.isoformat()})])
        metrics.RENOTIFICATIONS.labels(body["level"]).inc()
