"""kaifong.agents.incidents — the incident flow: reports and updates → Redis → the state topic.

Layer: agents. Thin: read the stored state, call the pure functions in ``clock``, write,
send. Durable state lives in Redis (DESIGN.md §7) so a worker taking over a partition needs
no changelog replay. Handlers are idempotent: a replayed event republishes the same state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis

from kaifong.agents import clock
from kaifong.agents.dispatch import Dispatcher, assignment_body, view_of
from kaifong.agents.unitstore import UnitStore
from kaifong.streams import metrics
from kaifong.streams.codec import Headers, cloudevent_headers
from kaifong.streams.settings import Settings

log = logging.getLogger(__name__)

#: (topic, key, value, headers) of one record to produce.
Record = tuple[str, bytes | None, bytes, Headers]

#: Applied update ids remembered per incident (idempotency beyond the dedupe window).
APPLIED_KEEP = 500


def incident_key(incident_id: str) -> str:
    """Redis key of an incident's stored document."""
    return f"kf:inc:{incident_id}"


def early_key(incident_id: str) -> str:
    """Redis list of updates that arrived before their incident's report."""
    return f"kf:early:{incident_id}"


@dataclass
class Incidents:
    """Handlers for ``incidents.reported.v1`` and ``incidents.updates.v1``."""

    settings: Settings
    redis: aioredis.Redis
    send_all: Callable[[list[Record]], Awaitable[None]]
    clock: Callable[[], datetime]
    store: UnitStore
    dispatcher: Dispatcher

    @property
    def state_topic(self) -> str:
        """Full name of the incident state topic."""
        return self.settings.topic_prefix + "incidents.state.v1"

    async def load(self, incident_id: str) -> dict[str, Any] | None:
        """The stored document ``{"state": …, "applied": […]}`` or None."""
        raw = await self.redis.get(incident_key(incident_id))
        return None if raw is None else orjson.loads(raw)

    def state_record(self, state: dict[str, Any]) -> Record:
        """The state as a record for the compacted state topic (id: incident and version)."""
        headers = cloudevent_headers(f"{state['incident_id']}:v{state['version']}", "incident-state",
                                     self.clock(), subject=state["incident_id"])
        return (self.state_topic, state["incident_id"].encode(), orjson.dumps(state), headers)

    async def publish(self, state: dict[str, Any]) -> None:
        """Send the whole current picture to the compacted state topic."""
        await self.send_all([self.state_record(state)])

    async def save(self, doc: dict[str, Any]) -> None:
        """Write an incident's document back."""
        await self.redis.set(incident_key(doc["state"]["incident_id"]), orjson.dumps(doc))

    async def on_reported(self, report: dict[str, Any]) -> None:
        """Open the incident (once), dispatch rings 1–3 (1–5 for severity 1–2), publish.

        Replay-safe: a stored decision is republished under the same ids; a decision that was
        interrupted after reserving but before it was stored is released and made again.
        """
        started = time.perf_counter()
        incident_id = report["incident_id"]
        doc = await self.load(incident_id)
        if doc is None:
            state = clock.open_incident(report, self.settings.ring_table(), self.clock())
            # The caller's contact stays upstream: kaifong keeps no personal data it does not need.
            kept = {k: v for k, v in report.items() if k != "caller"}
            doc = {"state": state, "applied": [], "report": kept, "assignments": None}
            # SET NX: the first report wins; a second report of the same incident under another
            # event_id (two callers) does not open it twice.
            if not await self.redis.set(incident_key(incident_id), orjson.dumps(doc), nx=True):
                doc = await self.load(incident_id)
                assert doc is not None
        fresh = doc.get("assignments") is None
        if fresh:
            held = await self.store.held_by(incident_id)
            if held:
                await self.store.release(incident_id, held)
            view = view_of(doc["report"])
            rings = clock.initial_rings(view.severity, [r.number for r in self.settings.ring_table()])
            decisions = await self.dispatcher.decide(view, rings)
            now = self.clock()
            bodies = [assignment_body(incident_id, d, 0, now, view.exercise) for d in decisions]
            doc = {**doc, "assignments": bodies, "state": clock.with_assignments(doc["state"], bodies, now)}
            await self.save(doc)
        # Assignments and the new state go out together and are awaited together: one linger,
        # one round trip (same key, same partition: their order is kept).
        await self.send_all([*self.assignment_records(doc), self.state_record(doc["state"])])
        if fresh:
            self.count_decision(doc, started)
        early = await self.redis.lrange(early_key(incident_id), 0, -1)
        for raw in early:
            await self.on_update(orjson.loads(raw))
        if early:
            await self.redis.delete(early_key(incident_id))

    def assignment_records(self, doc: dict[str, Any]) -> list[Record]:
        """The stored assignments as records to send (the same ids on every replay)."""
        out = []
        for body in doc["assignments"] or []:
            decided = clock.parse_time(body["decided_at"])
            headers = cloudevent_headers(body["assignment_id"], "assignment", decided, subject=body["incident_id"])
            out.append((self.dispatcher.topic, body["incident_id"].encode(), orjson.dumps(body), headers))
        return out

    def count_decision(self, doc: dict[str, Any], started: float) -> None:
        """Metrics of a fresh decision (never of a replay)."""
        state = doc["state"]
        exercise = "true" if state["exercise"] else "false"
        for body in doc["assignments"] or []:
            outcome = ("no_candidate" if not body["units"] else "shortfall" if body.get("shortfall")
                       else "beyond_target" if body["reason"] == "beyond_target" else "ok")
            metrics.ASSIGNMENTS.labels(str(body["ring"]), outcome, exercise).inc()
        metrics.DECISION.observe(time.perf_counter() - started)
        age = time.time() - clock.parse_time(state["reported_at"]).timestamp()
        if age >= 0:
            metrics.REPORTED_TO_ASSIGNMENT.labels(exercise).observe(age)

    async def on_update(self, update: dict[str, Any]) -> None:
        """Apply a milestone; park it if its report has not arrived yet."""
        incident_id = update["incident_id"]
        doc = await self.load(incident_id)
        if doc is None:
            await self.redis.rpush(early_key(incident_id), orjson.dumps(update))
            await self.redis.expire(early_key(incident_id), 24 * 3600)
            return
        if update["event_id"] in doc["applied"]:
            await self.publish(doc["state"])  # replay: same state, same id
            return
        state = clock.apply_update(doc["state"], update, self.clock())
        doc = {**doc, "state": state, "applied": [*doc["applied"], update["event_id"]][-APPLIED_KEEP:]}
        await self.save(doc)
        if state["status"] in clock.TERMINAL:
            # Resolved or cancelled: every unit it still holds is free again.
            await self.store.release(incident_id, await self.store.held_by(incident_id))
        await self.publish(state)
