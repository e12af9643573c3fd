"""kaifong.agents.web.live — the live feed: output topics fanned out to browsers as Server-Sent Events.

Layer: agents/web. Each worker runs one aiokafka consumer **without a consumer group**: it is
assigned every partition of the incident state, escalation and assignment topics (and the
updates topic, for acknowledgements) and starts at their end, so every worker sees the whole
city and any worker's console shows all of it. Every record is pushed to every connected
client's bounded queue; a client whose queue is full is dropped (its browser reconnects and
reloads the snapshot) rather than slowing the others or the worker down.

``GET /api/stream`` (``text/event-stream``) sends ``event: ready`` once the consumer is
positioned, then ``state``, ``escalation``, ``assignment``, ``ack`` and ``summary`` events
with JSON data, and a comment line every 15 s so proxies keep the connection open.

A seat's stream is scoped to its jurisdiction (:meth:`Principal.covers`): a state or escalation
by its own district/street/grid, an assignment or acknowledgement by its incident's (remembered
from the states seen, else read from Redis once). The summary counters are city-wide. A stream
ends when its credential expires (the browser reconnects and signs in again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from kaifong.agents.store.views import Views
from kaifong.agents.web.auth import principal_of
from kaifong.agents.web.identity import Principal
from kaifong.schemas.validation import InvalidEvent, validate
from kaifong.streams import security
from kaifong.streams.settings import Settings
from kaifong.streams.topics import ASSIGNMENTS, ESCALATIONS, INCIDENTS_STATE, INCIDENTS_UPDATES

log = logging.getLogger(__name__)

#: Heartbeat comment interval: below the usual 30–60 s idle timeouts of proxies.
HEARTBEAT_S = 15.0
#: Messages a client may fall behind before it is dropped.
CLIENT_QUEUE = 1000
#: Concurrent live clients per worker (a wall screen and a few laptops per command centre).
MAX_CLIENTS = 200
#: How often the summary counters are recomputed and pushed (only while someone listens).
SUMMARY_S = 5.0
#: Pause between two reads of the followed topics. A person reading a wall screen does not see
#: 0.2 s; the embedded broker does: each read of 16 partitions full of small batches costs it
#: CPU that the incident flow's own fetches and produces then wait for (reading as fast as
#: records arrive made a second, busier consumer of every output topic).
POLL_S = 0.2
#: Records taken per read (a full read means the feed is behind: read again at once).
READ_MAX = 1000
#: How long a new client waits for the consumer to be positioned before it is told "ready"
#: anyway (it then reloads its snapshot, which covers anything missed).
READY_WAIT_S = 10.0
#: Incidents whose place (district, street, grid) the feed remembers for scoping.
PLACES_KEPT = 200_000

#: Where an incident is: (district, street, grid).
Place = tuple[str | None, str | None, str | None]


def sse(event: str, data: bytes) -> bytes:
    """One SSE message. ``data`` is compact JSON (orjson never writes a newline)."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


@dataclass(eq=False)
class Client:
    """One connected browser: its queue; ``None`` in the queue means "you were dropped"."""

    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(CLIENT_QUEUE))
    #: Whose stream it is (None or a city-wide caller: everything).
    principal: Principal | None = None

    @property
    def scoped(self) -> bool:
        """True when the client sees part of the city only."""
        return self.principal is not None and not self.principal.everywhere

    def wants(self, place: Place | None) -> bool:
        """True when a message about ``place`` (None: unknown) is for this client."""
        if not self.scoped:
            return True
        return place is not None and self.principal is not None and self.principal.covers(*place)

    def close(self) -> None:
        """Make the client's handler finish at its next read (emptying the queue if needed)."""
        while True:
            try:
                self.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.queue.get_nowait()


@dataclass
class LiveFeed:
    """The per-worker consumer of the output topics and its SSE clients."""

    settings: Settings
    summary: Callable[[], Awaitable[dict[str, Any]]] | None = None
    clients: set[Client] = field(default_factory=set)
    positioned: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0
    #: Where an assignment's or acknowledgement's incident is, when no state of it was seen.
    views: Views | None = None
    places: OrderedDict[str, Place] = field(default_factory=OrderedDict)
    _last_summary: bytes = b""

    def topics(self) -> dict[str, str]:
        """Topic name → SSE event name."""
        s = self.settings
        return {INCIDENTS_STATE.name(s): "state", ESCALATIONS.name(s): "escalation",
                ASSIGNMENTS.name(s): "assignment", INCIDENTS_UPDATES.name(s): "ack"}

    # -- fan-out ---------------------------------------------------------------------------
    def subscribe(self, principal: Principal | None = None) -> Client | None:
        """A new client (of ``principal``), or None when the worker already serves :data:`MAX_CLIENTS`."""
        if len(self.clients) >= MAX_CLIENTS:
            return None
        client = Client(principal=principal)
        self.clients.add(client)
        return client

    def unsubscribe(self, client: Client) -> None:
        """Forget a client (its handler ended)."""
        self.clients.discard(client)

    def publish(self, message: bytes, place: Place | None = None, *, everyone: bool = True) -> None:
        """Put one SSE message on every client's queue (``everyone`` False: only on those whose
        jurisdiction holds ``place``); drop the clients that are full."""
        for client in list(self.clients):
            if not everyone and not client.wants(place):
                continue
            try:
                client.queue.put_nowait(message)
            except asyncio.QueueFull:
                self.clients.discard(client)
                client.close()
                self.dropped += 1
                log.info("live feed: a slow client was dropped (%d behind)", CLIENT_QUEUE)

    def close_all(self) -> None:
        """End every client's stream (at shutdown, so the web server need not wait for them)."""
        for client in list(self.clients):
            client.close()
        self.clients.clear()

    def message(self, topic: str, value: bytes | None) -> bytes | None:
        """The SSE message for one record, or None when it is not for the console."""
        found = self.placed(topic, value)
        return found[0] if found is not None else None

    def remember(self, incident_id: str, place: Place) -> None:
        """Keep an incident's place (the oldest forgotten past :data:`PLACES_KEPT`)."""
        self.places[incident_id] = place
        self.places.move_to_end(incident_id)
        while len(self.places) > PLACES_KEPT:
            self.places.popitem(last=False)

    async def locate(self, incident_id: str) -> Place | None:
        """An incident's place: remembered, else read from its stored state (then remembered)."""
        if incident_id in self.places or self.views is None:
            return self.places.get(incident_id)
        try:
            doc = await self.views.incident(incident_id)
        except Exception as exc:  # noqa: BLE001 - Redis away: scoped clients miss this one message
            log.warning("live feed: cannot place an incident (%s)", type(exc).__name__)
            return None
        if doc is None:
            return None
        state = doc.get("state") or {}
        place = (state.get("district"), state.get("street"), state.get("grid"))
        self.remember(incident_id, place)
        return place

    def placed(self, topic: str, value: bytes | None) -> tuple[bytes, Place | None, str | None] | None:
        """(SSE message, the place it is about when the record says, its incident id), or None
        when the record is not for the console."""
        event = self.topics().get(topic)
        if event is None or not value:
            return None
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        if event == "ack":
            # The updates topic is an input: only well-formed acknowledgements go to browsers.
            if data.get("kind") != "escalation_acknowledged":
                return None
            try:
                validate("incident-update", data)
            except InvalidEvent:
                return None
            data = {k: data.get(k) for k in ("escalation_id", "incident_id", "by", "at")}
        incident_id = data.get("incident_id") if isinstance(data.get("incident_id"), str) else None
        place: Place | None = None
        if event in ("state", "escalation"):
            place = (data.get("district"), data.get("street"), data.get("grid"))
            if incident_id is not None and event == "state":
                self.remember(incident_id, place)
        return sse(event, orjson.dumps(data)), place, incident_id

    # -- the consumer ------------------------------------------------------------------------
    async def run(self) -> None:
        """Consume the output topics from their end until cancelled (started with the app)."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._consume_forever())
            if self.summary is not None:
                group.create_task(self._summaries())

    async def _consume_forever(self) -> None:
        delay = 1.0
        while True:
            try:
                await self._consume()
            except Exception as exc:  # noqa: BLE001 - broker trouble must not end the feed for good
                log.warning("live feed: consumer failed (%s); restarting in %.0fs", type(exc).__name__, delay)
                # Records may be missed until the restart: end every stream so that browsers
                # reconnect and reload their snapshot.
                self.close_all()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _consume(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers, group_id=None, enable_auto_commit=False,
            client_id=f"{s.app_id}-live", fetch_max_wait_ms=s.firehose_fetch_wait_ms,
            max_partition_fetch_bytes=8 << 20, **security.aiokafka_kwargs(s))
        await consumer.start()
        try:
            parts = await self._partitions(consumer)
            consumer.assign(parts)
            # The true end is not needed: Tansu reports an end that is too low after a
            # multi-record batch, which only replays a few records the browser ignores by version.
            await consumer.seek_to_end(*parts)
            for tp in parts:
                await consumer.position(tp)  # resolve the end now, not at the first fetch
            self.positioned.set()
            log.info("live feed: following %d partitions", len(parts))
            while True:
                batch = await consumer.getmany(timeout_ms=1000, max_records=READ_MAX)
                if self.clients:
                    scoped = any(c.scoped for c in self.clients)
                    for tp, records in batch.items():
                        for record in records:
                            found = self.placed(tp.topic, record.value)
                            if found is None:
                                continue
                            message, place, incident_id = found
                            if scoped and place is None and incident_id is not None:
                                place = await self.locate(incident_id)
                            self.publish(message, place, everyone=not scoped)
                if sum(map(len, batch.values())) < READ_MAX:  # caught up: let records gather
                    await asyncio.sleep(POLL_S)
        finally:
            self.positioned.clear()
            await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        """Every partition of the followed topics (they are created before workers start;
        this waits, with a warning, while one is still missing)."""
        delay = 0.2
        while True:
            await consumer.topics()  # refresh the metadata
            parts = [TopicPartition(t, p) for t in self.topics()
                     for p in sorted(consumer.partitions_for_topic(t) or ())]
            missing = [t for t in self.topics() if not consumer.partitions_for_topic(t)]
            if not missing:
                return parts
            log.warning("live feed: waiting for topics %s", ", ".join(missing))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _summaries(self) -> None:
        assert self.summary is not None
        while True:
            await asyncio.sleep(SUMMARY_S)
            if not self.clients:
                continue
            try:
                doc = await self.summary()
            except Exception as exc:  # noqa: BLE001 - Redis away: skip this push, try again later
                log.warning("live feed: summary failed (%s)", type(exc).__name__)
                continue
            doc.pop("now", None)  # changes every time; the clients keep their own clock
            data = orjson.dumps(doc)
            if data != self._last_summary:
                self._last_summary = data
                self.publish(sse("summary", data))

    # -- the HTTP handler ---------------------------------------------------------------------
    async def stream(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/stream``: the SSE response of one client (a seat's: its jurisdiction)."""
        principal = principal_of(request)
        client = self.subscribe(principal)
        if client is None:
            return web.json_response({"error": "busy", "message": "too many live clients on this worker"},
                                     status=503, headers={"Retry-After": "10"})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        try:
            await response.prepare(request)
            # Browsers retry after this many ms when the stream ends; then they reload the snapshot.
            await response.write(b"retry: 2000\n: kaifong live feed\n\n")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.positioned.wait(), READY_WAIT_S)
            await response.write(sse("ready", orjson.dumps({"positioned": self.positioned.is_set()})))
            while True:
                wait = HEARTBEAT_S
                if principal.expires_at is not None:
                    left = (principal.expires_at - datetime.now(UTC)).total_seconds()
                    if left <= 0:
                        break  # the credential expired: the browser reconnects and signs in again
                    wait = min(wait, left)
                try:
                    message = await asyncio.wait_for(client.queue.get(), wait)
                except TimeoutError:
                    await response.write(b": heartbeat\n\n")
                    continue
                if message is None:
                    break  # dropped, or the worker is stopping
                await response.write(message)
        except (ConnectionResetError, ConnectionError):
            pass  # the browser went away
        finally:
            self.unsubscribe(client)
        return response


def register(web_app: web.Application, app: Any, settings: Settings,
             summary: Callable[[], Awaitable[dict[str, Any]]] | None = None, views: Views | None = None) -> LiveFeed:
    """Add ``GET /api/stream`` and start the feed's consumer with the app (an early task)."""
    feed = LiveFeed(settings, summary, views=views)
    web_app.router.add_get("/api/stream", feed.stream)

    async def closing(_: web.Application) -> None:
        feed.close_all()

    # aiohttp waits for running handlers at shutdown; open streams would hold a stop for a minute.
    web_app.on_shutdown.append(closing)
    app.early_tasks.append(feed.run)
    return feed
