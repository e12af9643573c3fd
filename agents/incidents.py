"""kaifong.agents.incidents — the incident flow: reports and updates → Redis → the state topic.

Layer: agents. Thin: read the stored state, call the pure functions in ``clock``, write,
send. Durable state lives in Redis (DESIGN.md §7) so a worker taking over a partition needs
no changelog replay. Handlers are idempotent: a replayed event republishes the same state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis

from kaifong.agents import clock
from kaifong.streams import metrics
from kaifong.streams.codec import Headers, cloudevent_headers
from kaifong.streams.settings import Settings

log = logging.getLogger(__name__)

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
    send: Callable[[str, bytes | None, bytes, Headers], Any]
    clock: Callable[[], datetime]

    @property
    def state_topic(self) -> str:
        """Full name of the incident state topic."""
        return self.settings.topic_prefix + "incidents.state.v1"

    async def load(self, incident_id: str) -> dict[str, Any] | None:
        """The stored document ``{"state": …, "applied": […]}`` or None."""
        raw = await self.redis.get(incident_key(incident_id))
        return None if raw is None else orjson.loads(raw)

    async def publish(self, state: dict[str, Any]) -> None:
        """Send the whole current picture to the compacted state topic."""
        now = self.clock()
        headers = cloudevent_headers(f"{state['incident_id']}:v{state['version']}", "incident-state", now,
                                     subject=state["incident_id"])
        await self.send(self.state_topic, state["incident_id"].encode(), orjson.dumps(state), headers)
        metrics.EVENTS_OUT.labels(self.state_topic).inc()
        age = (now - clock.parse_time(state["reported_at"])).total_seconds()
        if state["version"] == 1 and age >= 0:
            metrics.EVENT_AGE.labels(self.settings.topic_prefix + "incidents.reported.v1").observe(age)

    async def on_reported(self, report: dict[str, Any]) -> None:
        """Open the incident (once), publish its state, then apply any early updates."""
        incident_id = report["incident_id"]
        doc = await self.load(incident_id)
        if doc is None:
            state = clock.open_incident(report, self.settings.ring_table(), self.clock())
            doc = {"state": state, "applied": [], "report_event_id": report["event_id"]}
            # SET NX: the first report wins; a second report of the same incident under
            # another event_id (two callers) is recorded on the first, not opened twice.
            if not await self.redis.set(incident_key(incident_id), orjson.dumps(doc), nx=True):
                doc = await self.load(incident_id)
                assert doc is not None
        await self.publish(doc["state"])
        early = await self.redis.lrange(early_key(incident_id), 0, -1)
        for raw in early:
            await self.on_update(orjson.loads(raw))
        if early:
            await self.redis.delete(early_key(incident_id))

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
        await self.redis.set(incident_key(incident_id), orjson.dumps(doc))
        await self.publish(state)
