"""kaifong.agents.flows.intake — validation, duplicate detection and dead-lettering for every input.

Layer: agents/flows. ``Pipeline.process`` is the one way an input message enters kaifong: parse and
validate (compiled schema), drop duplicates by ``event_id``, run the handler, and send anything
refused to the dead-letter topic with its stage and reason. Infrastructure errors (Redis down)
are retried in place — the message is not acknowledged meanwhile — so nothing valid is lost;
unexpected handler errors dead-letter the message as ``internal_error`` and the worker goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kaifong.agents.core.errors import Duplicate, Refused
from kaifong.agents.store import keys
from kaifong.schemas.validation import InvalidEvent, parse
from kaifong.streams import metrics
from kaifong.streams.codec import Headers, dead_letter
from kaifong.streams.settings import Settings
from kaifong.streams.topics import TopicSpec

log = logging.getLogger(__name__)

#: Errors that mean "a dependency is down", not "this event is bad": retry, never skip.
INFRA_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)

#: Entity id field of each input event type (for logs: ids are not personal data).
ID_FIELD = {"incident-reported": "incident_id", "incident-update": "incident_id",
            "unit-registered": "unit_id", "unit-status": "unit_id", "drill-response": "drill_id"}


class Message(Protocol):
    """What the pipeline needs of a consumed message (Faust's and aiokafka's both fit)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Inbound:
    """The message being handled, visible to handlers through :data:`current_message`."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    received: float  # time.perf_counter() when the worker took it
    #: The dedupe key, when the handler checks the ledger itself (saving a round trip) and
    #: raises :class:`Duplicate`; None when the pipeline checked it before the handler ran.
    dedupe: str | None = None


#: Set by :meth:`Pipeline.process` for the duration of a handler (partition for timers, the
#: original bytes for late dead letters, the receive time for decision latency).
current_message: ContextVar[Inbound | None] = ContextVar("current_message", default=None)

Send = Callable[[str, bytes | None, bytes, Headers], Awaitable[None]]
Handler = Callable[[dict[str, Any]], Awaitable[None]]


def dedupe_key(event_type: str, data: dict[str, Any]) -> str:
    """Redis key remembering that an event was processed.

    The registry may omit ``event_id``: its content hash is the id then (the same upsert twice
    is a duplicate; a changed entry is not).
    """
    event_id = data.get("event_id")
    if not event_id:
        event_id = "h:" + hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    return keys.seen(event_type, event_id)


async def retry_infra(op: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``fn`` until it succeeds, backing off (50 ms → 2 s) while a dependency is down.

    The message being handled is not acknowledged meanwhile, so nothing is skipped; every
    failure is counted (``kaifong_redis_errors_total{op}``) and every success timed.
    """
    delay = 0.05
    while True:
        try:
            start = time.perf_counter()
            result = await fn()
            metrics.REDIS_CALL.labels(op).observe(time.perf_counter() - start)
            return result
        except INFRA_ERRORS as exc:
            metrics.REDIS_ERRORS.labels(op).inc()
            log.warning("%s failed (%s); retrying in %.2fs", op, type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


@dataclass
class Pipeline:
    """Intake for the Faust agents (one event at a time; the batch path lives in ``units``)."""

    settings: Settings
    redis: aioredis.Redis
    send: Send
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    async def dead_letter(self, msg: Message, stage: str, error_class: str, reason: str) -> None:
        """Send ``msg``'s original key and bytes to the dead-letter topic with the reason."""
        body, headers = dead_letter(key=msg.key, value=msg.value, topic=msg.topic, partition=msg.partition,
                                    offset=msg.offset, stage=stage, error_class=error_class, error=reason,
                                    now=self.clock())
        await self.send(self.settings.topic_prefix + "deadletter.v1", msg.key, orjson.dumps(body), headers)
        metrics.DEADLETTERS.labels(stage, error_class).inc()
        # Logged: where and why, never the payload (it may hold phone numbers or names).
        log.warning("dead-lettered %s[%d]@%d stage=%s class=%s", msg.topic, msg.partition, msg.offset,
                    stage, error_class)

    async def retrying(self, op: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``fn`` until it succeeds, backing off while Redis (or the network) is down."""
        return await retry_infra(op, fn)

    async def process(self, spec: TopicSpec, msg: Message, handler: Handler, agent: str, *,
                      self_dedupe: bool = False) -> str:
        """Validate, dedupe and handle one message; return its outcome.

        ``self_dedupe``: the handler checks the dedupe ledger in its own first round trip (the
        key is in :data:`current_message`) and raises :class:`Duplicate` — one round trip less
        on the incident path.
        """
        start = time.perf_counter()
        topic = msg.topic
        try:
            data = parse(spec.event_type, msg.value, max_bytes=self.settings.max_event_bytes)
        except InvalidEvent as exc:
            await self.dead_letter(msg, "intake", exc.error_class, "; ".join(exc.reasons))
            metrics.EVENTS_IN.labels(topic, "invalid").inc()
            return "invalid"
        seen = dedupe_key(spec.event_type, data)
        if not self_dedupe and await self.retrying("dedupe", lambda: self.redis.exists(seen)):
            metrics.EVENTS_IN.labels(topic, "duplicate").inc()
            return "duplicate"
        outcome = "ok"
        token = current_message.set(Inbound(topic, msg.partition, msg.offset, msg.key, msg.value, start,
                                            seen if self_dedupe else None))
        try:
            await self.retrying("handle", lambda: handler(data))
        except Duplicate:
            metrics.EVENTS_IN.labels(topic, "duplicate").inc()
            return "duplicate"
        except Refused as exc:
            await self.dead_letter(msg, exc.stage, exc.error_class, exc.reason)
            outcome = "refused"
        except OverflowError as exc:
            # A valid RFC 3339 time at an end of the calendar (e.g. 9999-12-31T23:59:59-14:00):
            # its UTC value, or a deadline after it, is past year 9999. Bad input, not a bug.
            await self.dead_letter(msg, agent, "time_out_of_range",
                                   f"a time of this event is so near year 1 or 9999 that its UTC value or "
                                   f"its deadlines leave the calendar: {exc}"[:500])
            outcome = "refused"
        except Exception as exc:
            metrics.INTERNAL_ERRORS.labels(agent).inc()
            log.exception("internal error in %s on %s[%d]@%d (%s=%s)", agent, topic, msg.partition,
                          msg.offset, ID_FIELD.get(spec.event_type, "id"),
                          data.get(ID_FIELD.get(spec.event_type, ""), "?"))
            await self.dead_letter(msg, agent, "internal_error", f"{type(exc).__name__}: {exc}"[:500])
            outcome = "refused"
        finally:
            current_message.reset(token)
        # Marked only after the effect: a crash in between replays the event, and handlers
        # are idempotent, so at-least-once delivery never loses nor doubles an effect.
        await self.retrying("dedupe", lambda: self.redis.set(seen, b"1", ex=self.settings.dedupe_ttl_s))
        metrics.EVENTS_IN.labels(topic, outcome).inc()
        metrics.PROCESSING.labels(agent).observe(time.perf_counter() - start)
        return outcome
