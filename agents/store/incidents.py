"""kaifong.agents.store.incidents — incidents in Redis: open, load, apply a change, the outbox.

Layer: agents/store. The incident document (:func:`keys.incident`) holds the state, the
decisions and the escalations; beside it the outbox (:func:`keys.incident_outbox`) holds the
records a change must publish. :meth:`IncidentStore.apply` stores a
:class:`~kaifong.agents.core.incident.Change` — reservation, document, outbox, timers, open
escalations, release, closing — in one script call (``lua/incident_apply.lua``), with explicit
arguments; the flow then sends the outbox and :meth:`IncidentStore.sent` deletes it. A crash in
between re-sends the outbox on the next touch of the incident, so a fact is never lost nor
decided twice.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from kaifong.agents.core.change import Change
from kaifong.agents.store import keys
from kaifong.agents.store.scripts import Scripts

#: (topic, key, value, headers) of one record to produce (headers as ``kaifong.streams.codec.Headers``).
Record = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]

#: How long updates that came before their report are kept at most (the hold timer fires first).
EARLY_KEEP_S = 24 * 3600


def pack(records: Sequence[Record]) -> bytes:
    """Records as the JSON the outbox holds."""
    return orjson.dumps([{"t": t, "k": None if k is None else k.decode(), "v": v.decode(),
                          "h": [[hk, hv.decode()] for hk, hv in h]} for t, k, v, h in records])


def unpack(raw: bytes) -> list[Record]:
    """The records of an outbox."""
    return [(e["t"], None if e["k"] is None else e["k"].encode(), e["v"].encode(),
             [(hk, hv.encode()) for hk, hv in e["h"]]) for e in orjson.loads(raw)]


def stored(doc: dict[str, Any]) -> bytes:
    """The document as stored: the outbox lives in its own key."""
    return orjson.dumps({k: v for k, v in doc.items() if k != "outbox"})


@dataclass(frozen=True)
class Opened:
    """What opening an incident found (see ``lua/incident_open.lua``)."""

    doc: dict[str, Any]
    outbox: list[Record]
    #: Units reserved by a decision that was interrupted before it was stored.
    held: set[str]
    #: Whether updates were parked for the incident before its report.
    early: bool
    created: bool
    #: The raw candidates search result (for :meth:`kaifong.agents.store.units.UnitStore.found`).
    found: list[Any]


@dataclass
class IncidentStore:
    """Incident documents, their outboxes, their parked updates, and applying a change."""

    redis: aioredis.Redis
    prefix: str
    stale_after_s: float
    scripts: Scripts

    def _timer_keys(self, partition: int) -> list[str]:
        return [keys.timers_due(self.prefix, partition), keys.timers_inflight(self.prefix, partition)]

    async def open(self, fresh: dict[str, Any], dedupe: str | None, search_args: Sequence[Any]) -> Opened | None:
        """The stored document, or ``fresh`` stored (and the first candidates searched) when
        there is none, in one round trip; None when the report was processed before (its
        ``dedupe`` key is set)."""
        state = fresh["state"]
        incident_id = state["incident_id"]
        got = await self.scripts.run(
            "incident_open",
            [keys.incident(incident_id), keys.incident_outbox(incident_id), keys.incident_units(incident_id),
             keys.early_updates(incident_id), keys.open_incidents(self.prefix, bool(state["exercise"]))],
            [stored(fresh), incident_id, dedupe or "", *search_args])
        if len(got) == 1:
            return None
        raw_doc, raw_outbox, held, early, created, found = got
        doc = fresh if created else orjson.loads(raw_doc)
        return Opened({k: v for k, v in doc.items() if k != "outbox"}, unpack(raw_outbox) if raw_outbox else [],
                      {m.decode() for m in held}, bool(early), bool(created), list(found))

    async def load(self, incident_id: str) -> tuple[dict[str, Any], list[Record]] | None:
        """The stored document and any records its last change did not see sent, or None."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(keys.incident(incident_id))
        pipe.get(keys.incident_outbox(incident_id))
        raw, outbox = await pipe.execute()
        if raw is None:
            return None
        return orjson.loads(raw), unpack(outbox) if outbox else []

    async def exists(self, incident_id: str) -> bool:
        """Whether the incident was reported."""
        return bool(await self.redis.exists(keys.incident(incident_id)))

    async def apply(self, change: Change, records: Sequence[Record], now_ms: int) -> list[str]:
        """Store ``change`` with ``records`` as its outbox, atomically; return the units that
        could not be reserved (then nothing at all was stored)."""
        doc = change.doc
        state = doc["state"]
        incident_id = state["incident_id"]
        rest = {"reserve": [[u, r] for u, r in change.reserve],
                "timers_set": [[m, str(due)] for m, due in change.timers_set],
                "timers_clear": list(change.timers_clear),
                "esc_open": [[e, level] for e, level in change.escalations_opened],
                "esc_closed": list(change.escalations_closed),
                "release": list(change.release), "release_all": change.release_all, "close": change.close}
        failed = await self.scripts.run(
            "incident_apply",
            [keys.incident(incident_id), keys.incident_outbox(incident_id), keys.incident_units(incident_id),
             *self._timer_keys(int(doc["partition"])), keys.open_escalations(self.prefix),
             keys.open_incidents(self.prefix, bool(state["exercise"]))],
            [incident_id, change.pool, now_ms, int(self.stale_after_s * 1000), stored(doc),
             pack(records) if records else "", orjson.dumps(rest)])
        return [f.decode() if isinstance(f, bytes) else str(f) for f in failed]

    async def sent(self, incident_id: str) -> None:
        """The outbox was sent and acknowledged: forget it."""
        await self.redis.delete(keys.incident_outbox(incident_id))

    async def open_counts(self) -> tuple[dict[bool, int], list[str]]:
        """Open incidents by exercise flag, and the levels of the open real escalations."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.scard(keys.open_incidents(self.prefix, False))
        pipe.scard(keys.open_incidents(self.prefix, True))
        pipe.hvals(keys.open_escalations(self.prefix))
        real, exercise, levels = await pipe.execute()
        return {False: int(real), True: int(exercise)}, [raw.decode() for raw in levels]

    # -- updates that came before their report ------------------------------------------------
    async def park(self, update: dict[str, Any], origin: dict[str, Any] | None, partition: int,
                   timer: str, due_ms: int) -> None:
        """Hold an update (with where it came from and its original bytes) until its report
        comes or the hold timer fires."""
        entry: dict[str, Any] = {"update": update}
        if origin is not None:
            entry.update(origin)
        key = keys.early_updates(update["incident_id"])
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, orjson.dumps(entry))
        pipe.expire(key, EARLY_KEEP_S)
        pipe.zadd(keys.timers_due(self.prefix, partition), {timer: due_ms})
        await pipe.execute()

    async def parked(self, incident_id: str) -> list[dict[str, Any]]:
        """The updates parked for an incident, in arrival order."""
        raw: list[bytes] = await self.redis.lrange(keys.early_updates(incident_id), 0, -1)  # type: ignore[misc,assignment]
        return [orjson.loads(item) for item in raw]

    async def drop_parked(self, incident_id: str) -> None:
        """Forget the updates parked for an incident."""
        await self.redis.delete(keys.early_updates(incident_id))


def origin_of(msg: Any) -> dict[str, Any]:
    """Where a consumed message came from, with its original key and bytes (for a dead letter
    of an update that waited in vain)."""
    return {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset,
            "key": None if msg.key is None else base64.b64encode(msg.key).decode(),
            "value": base64.b64encode(msg.value or b"").decode()}
