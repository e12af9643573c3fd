"""kaifong.agents.flows.units — the unit firehose: registry and live status, in batches.

Layer: agents/flows. Unit status is the high-volume input (23,000 units every 10 s is ~2,300/s;
290,000 responders every 30 s ~9,700/s), so it bypasses Faust's per-event stream machinery
(~200 µs an event): a plain aiokafka consumer takes a batch, validates it with the compiled
schema, applies it to Redis in one pipeline of Lua calls (dedupe + sequence check + state +
geo index, atomic per unit), dead-letters refusals, waits for the broker to take them, and
only then commits. At-least-once, idempotent, one Redis round trip per batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.structs import ConsumerRecord, TopicPartition
from redis.exceptions import NoScriptError, ResponseError

from kaifong.agents.flows.intake import dedupe_key, retry_infra
from kaifong.agents.store import keys
from kaifong.agents.store.units import UnitStore
from kaifong.schemas.validation import InvalidEvent, parse
from kaifong.streams import metrics, security
from kaifong.streams.codec import dead_letter
from kaifong.streams.settings import Settings
from kaifong.streams.topics import UNITS_REGISTRY, UNITS_STATUS

log = logging.getLogger(__name__)

#: Status events per Lua call (see ``run_status``): short calls keep Redis fair to the incident flow.
STATUS_CHUNK = 32
#: Records validated between two yields to the event loop (see ``prepare``).
YIELD_EVERY = 64

class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: UnitsIntake) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.owner.joined.set()


@dataclass
class UnitsIntake:
    """The batch consumer of ``units.registry.v1`` and ``units.status.v1``."""

    settings: Settings
    redis: aioredis.Redis
    store: UnitStore
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    joined: asyncio.Event = field(default_factory=asyncio.Event)

    def topics(self) -> tuple[str, str]:
        """Full names of the two topics this consumer reads."""
        return UNITS_REGISTRY.name(self.settings), UNITS_STATUS.name(self.settings)

    async def run(self) -> None:
        """Consume forever (until cancelled)."""
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers, group_id=f"{s.app_id}-units", client_id=f"{s.app_id}-units",
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=s.firehose_fetch_wait_ms,
            max_poll_records=s.status_batch_max, session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval_s * 1000), max_partition_fetch_bytes=8 << 20,
            fetch_max_bytes=32 << 20,
            group_instance_id=f"{s.instance_id}-units" if s.instance_id else None,
            **security.aiokafka_kwargs(s),
        )
        producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, linger_ms=20,
                                    acks=-1 if s.producer_acks == "all" else int(s.producer_acks),
                                    max_request_size=4 << 20, client_id=f"{s.app_id}-units-dl",
                                    **security.aiokafka_kwargs(s))
        self.consumer = consumer
        consumer.subscribe(list(self.topics()), listener=_Assigned(self))
        await producer.start()
        await consumer.start()
        # Two stages joined by a short queue: while Redis applies batch k (on the other core),
        # this loop fetches and validates batch k+1. Offsets are committed by the apply stage,
        # in order, only after a batch's effects and dead letters are durable.
        queue: asyncio.Queue[Prepared | None] = asyncio.Queue(maxsize=2)
        applier = asyncio.ensure_future(self._apply_stage(queue, consumer, producer))
        try:
            await self._retry(self.store.load_scripts)
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=s.status_batch_max)
                if applier.done():
                    applier.result()  # re-raise what stopped the apply stage
                if batches:
                    await queue.put(await self.prepare(batches))
        finally:
            applier.cancel()
            await consumer.stop()
            await producer.stop()

    async def lag(self) -> dict[tuple[str, int], int]:
        """Messages behind the end of each partition this consumer owns."""
        consumer = getattr(self, "consumer", None)
        out: dict[tuple[str, int], int] = {}
        if consumer is None:
            return out
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                # The embedded broker can report a high-water mark below the truth: clamp at 0.
                out[(tp.topic, tp.partition)] = max(0, high - await consumer.position(tp))
        return out

    async def _apply_stage(self, queue: asyncio.Queue[Prepared | None], consumer: AIOKafkaConsumer,
                           producer: AIOKafkaProducer) -> None:
        while True:
            prepared = await queue.get()
            if prepared is None:
                return
            await self.apply(prepared, producer)
            await consumer.commit(prepared.offsets)

    async def _retry(self, fn: Callable[[], Any]) -> Any:
        return await retry_infra("units_batch", fn)

    async def prepare(self, batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> Prepared:
        """Stage 1 (CPU): parse and validate every record of a fetch, across partitions.

        Yields to the event loop every ``YIELD_EVERY`` records: a 2,000-record fetch is ~20 ms of
        CPU, and the incident flow shares this loop — it must never wait behind a whole fetch.
        """
        s = self.settings
        status_topic = UNITS_STATUS.name(s)
        out = Prepared(started=time.perf_counter())
        for tp, records in batches.items():
            is_status = tp.topic == status_topic
            event_type = UNITS_STATUS.event_type if is_status else UNITS_REGISTRY.event_type
            target = out.status if is_status else out.registry
            for n, rec in enumerate(records, 1):
                if n % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                try:
                    target.append((rec, parse(event_type, rec.value, max_bytes=s.max_event_bytes)))
                except InvalidEvent as exc:
                    out.refusals.append((rec, "intake", exc.error_class, "; ".join(exc.reasons)))
                    out.count(rec.topic, "invalid")
            out.offsets[tp] = records[-1].offset + 1
            out.size += len(records)
        return out

    async def apply(self, prepared: Prepared, producer: AIOKafkaProducer) -> None:
        """Stage 2 (Redis + broker): apply, dead-letter refusals, count."""
        s = self.settings
        now_ms = int(self.clock().timestamp() * 1000)
        status, registry = prepared.status, prepared.registry

        status_done: list[Any] = []

        async def run_status() -> list[Any]:
            # The firehose in chunks of STATUS_CHUNK events, one script call each. A Lua call
            # blocks Redis for every other client while it runs, so a 2,000-event call would
            # stall the incident flow's round trips for tens of ms; 32 events is ~0.4 ms, measured
            # to halve the decision-time p99 under firehose load against 128 (~1.5 ms).
            # A retry (Redis was down) resumes at the first chunk that did not go through.
            sha = self.store.run.sha("units_status")
            out = status_done
            for i in range(len(out), len(status), STATUS_CHUNK):
                rows = [[d["event_id"], d["unit_id"], str(d["seq"]), d["status"], d["at"],
                         *((str(d["location"]["lat"]), str(d["location"]["lon"])) if "location" in d
                           else (False, False)),
                         d.get("responders_on_duty", False), d.get("incident_id", False)]
                        for _, d in status[i:i + STATUS_CHUNK]]
                try:
                    out += await self.redis.evalsha(sha, 0, now_ms, orjson.dumps(rows))
                except NoScriptError:  # Redis restarted: reload and redo the (idempotent) batch
                    await self.store.load_scripts()
                    raise ConnectionError("redis lost its scripts") from None
                except ResponseError:
                    out += await self.one_by_one(sha, now_ms, rows)
            return out

        async def run_registry() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            sha = self.store.run.sha("units_registry")
            for _, d in registry:
                uid = d["unit_id"]
                pipe.evalsha(sha, 3, dedupe_key(UNITS_REGISTRY.event_type, d), keys.unit_registry(uid),
                             keys.unit_live(uid), s.dedupe_ttl_s, orjson.dumps(d), uid, d["kind"],
                             d["home"]["lat"], d["home"]["lon"], d["district"], d["grid"])
            # Per-entry results (errors returned, not raised): an entry the script fails on (a
            # bug the schema does not catch) is refused alone, dead-lettered, instead of failing
            # the whole batch — and the firehose with it — on every retry.
            results = list(await pipe.execute(raise_on_error=False))
            if any(isinstance(r, NoScriptError) for r in results):
                await self.store.load_scripts()
                raise ConnectionError("redis lost its scripts")
            return [_script_failed("registry", r) if isinstance(r, ResponseError) else r for r in results]

        # Registry first: a unit registered and reporting in the same fetch gets indexed.
        reg_results = await self._retry(run_registry) if registry else []
        status_results = await self._retry(run_status) if status else []
        for (rec, d), result in [*zip(registry, reg_results, strict=True), *zip(status, status_results, strict=True)]:
            text = result.decode() if isinstance(result, bytes) else str(result)
            if text == "ok":
                prepared.count(rec.topic, "ok")
            elif text == "dup":
                prepared.count(rec.topic, "duplicate")
            elif text.startswith("stale:"):
                prepared.count(rec.topic, "refused")
                prepared.refusals.append((rec, "units", "stale_seq",
                                          f"seq {d['seq']} is not newer than seq {text.split(':', 1)[1]} "
                                          "already applied"))
            elif text.startswith("error:"):
                prepared.count(rec.topic, "refused")
                prepared.refusals.append((rec, "units", "internal_error",
                                          f"redis refused the update: {text.split(':', 1)[1]}"))
            else:
                prepared.count(rec.topic, "refused")
                prepared.refusals.append((rec, "units", "illegal_transition",
                                          f"{text.split(':', 1)[1]} → {d['status']} is not a legal transition"))
        now = self.clock()
        futures = []
        for rec, stage, error_class, reason in prepared.refusals:
            body, headers = dead_letter(key=rec.key, value=rec.value, topic=rec.topic, partition=rec.partition,
                                        offset=rec.offset, stage=stage, error_class=error_class, error=reason,
                                        now=now)
            futures.append(await producer.send(s.topic_prefix + "deadletter.v1", orjson.dumps(body),
                                               key=rec.key, headers=headers))
            metrics.DEADLETTERS.labels(stage, error_class).inc()
        if futures:
            # The commit that follows must not run ahead of the dead letters reaching the broker.
            await asyncio.gather(*futures)
            metrics.EVENTS_OUT.labels(s.topic_prefix + "deadletter.v1").inc(len(futures))
            log.warning("dead-lettered %d of %d unit events", len(futures), prepared.size)
        for (topic, outcome), n in prepared.counts.items():
            metrics.EVENTS_IN.labels(topic, outcome).inc(n)
        metrics.BATCH_SIZE.labels("units").observe(prepared.size)
        metrics.PROCESSING.labels("units").observe(time.perf_counter() - prepared.started)


    async def one_by_one(self, sha: str, now_ms: int, rows: list[list[Any]]) -> list[Any]:
        """A chunk the status script failed on (an event it cannot apply — a bug, not bad input:
        the schema let it through): apply its events one at a time, so that only the event that
        fails is refused (``error:…``, dead-lettered) and the firehose keeps going instead of
        failing the same batch forever. Events of the chunk applied before the failure come
        back as duplicates (the script knows the unit's recent event ids)."""
        out: list[Any] = []
        for row in rows:
            try:
                out += await self.redis.evalsha(sha, 0, now_ms, orjson.dumps([row]))
            except NoScriptError:
                raise
            except ResponseError as exc:
                out.append(_script_failed("status", exc))
        return out


def _script_failed(script: str, exc: ResponseError) -> str:
    """Count and log a unit script that failed on one event; the result that dead-letters it."""
    metrics.INTERNAL_ERRORS.labels("units").inc()
    log.error("unit %s script failed on one event (dead-lettered): %s", script, str(exc)[:200])
    return "error:" + str(exc)[:200]


@dataclass
class Prepared:
    """One fetch, validated: what to apply, what to refuse, where to commit."""

    started: float
    status: list[tuple[ConsumerRecord[Any, Any], dict[str, Any]]] = field(default_factory=list)
    registry: list[tuple[ConsumerRecord[Any, Any], dict[str, Any]]] = field(default_factory=list)
    refusals: list[tuple[ConsumerRecord[Any, Any], str, str, str]] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    size: int = 0

    def count(self, topic: str, outcome: str) -> None:
        """One more event of ``topic`` with ``outcome``."""
        self.counts[(topic, outcome)] = self.counts.get((topic, outcome), 0) + 1
