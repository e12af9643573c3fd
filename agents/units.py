"""kaifong.agents.units — the unit firehose: registry and live status, in batches.

Layer: agents. Unit status is the high-volume input (23,000 units every 10 s is ~2,300/s;
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
from redis.exceptions import NoScriptError

from kaifong.agents.intake import INFRA_ERRORS, dedupe_key
from kaifong.agents.unitstore import UnitStore, live_key, registry_key
from kaifong.schemas.validation import InvalidEvent, parse
from kaifong.streams import metrics
from kaifong.streams.codec import dead_letter
from kaifong.streams.settings import Settings
from kaifong.streams.topics import UNITS_REGISTRY, UNITS_STATUS

log = logging.getLogger(__name__)

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
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=s.fetch_max_wait_ms,
            max_poll_records=s.status_batch_max, session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval_s * 1000), max_partition_fetch_bytes=8 << 20,
            fetch_max_bytes=32 << 20,
            group_instance_id=f"{s.instance_id}-units" if s.instance_id else None,
        )
        producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, linger_ms=20,
                                    acks=-1 if s.producer_acks == "all" else int(s.producer_acks),
                                    max_request_size=4 << 20, client_id=f"{s.app_id}-units-dl")
        consumer.subscribe(list(self.topics()), listener=_Assigned(self))
        await producer.start()
        await consumer.start()
        try:
            await self._retry(self.store.load_scripts)
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=s.status_batch_max)
                if not batches:
                    continue
                for tp, records in batches.items():
                    await self.process(tp, records, producer)
                await consumer.commit()
        finally:
            await consumer.stop()
            await producer.stop()

    async def _retry(self, fn: Callable[[], Any]) -> Any:
        delay = 0.05
        while True:
            try:
                return await fn()
            except INFRA_ERRORS as exc:
                metrics.REDIS_ERRORS.labels("units_batch").inc()
                log.warning("redis units batch failed (%s); retrying in %.2fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def process(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]],
                      producer: AIOKafkaProducer) -> dict[str, int]:
        """Validate and apply one partition's batch; return counts by outcome."""
        start = time.perf_counter()
        s = self.settings
        is_status = tp.topic == UNITS_STATUS.name(s)
        event_type = UNITS_STATUS.event_type if is_status else UNITS_REGISTRY.event_type
        valid: list[tuple[ConsumerRecord[Any, Any], dict[str, Any]]] = []
        refusals: list[tuple[ConsumerRecord[Any, Any], str, str, str]] = []
        for rec in records:
            try:
                valid.append((rec, parse(event_type, rec.value, max_bytes=s.max_event_bytes)))
            except InvalidEvent as exc:
                refusals.append((rec, "intake", exc.error_class, "; ".join(exc.reasons)))
        counts = {"ok": 0, "invalid": len(refusals), "duplicate": 0, "refused": 0}

        now_ms = int(self.clock().timestamp() * 1000)

        async def apply() -> list[Any]:
            try:
                if is_status:
                    # The firehose: the whole batch in one script call, decoded by Lua.
                    packed = orjson.dumps([
                        [d["event_id"], d["unit_id"], str(d["seq"]), d["status"], d["at"],
                         (d.get("location") or {}).get("lat", False), (d.get("location") or {}).get("lon", False),
                         d.get("responders_on_duty", False), d.get("incident_id", False)] for _, d in valid])
                    sha = await self.store.sha("status")
                    return list(await self.redis.evalsha(sha, 0, now_ms, packed))
                registry_sha = await self.store.sha("registry")
                pipe = self.redis.pipeline(transaction=False)
                for _, d in valid:
                    uid = d["unit_id"]
                    pipe.evalsha(registry_sha, 3, dedupe_key(event_type, d), registry_key(uid), live_key(uid),
                                 s.dedupe_ttl_s, orjson.dumps(d), uid, d["kind"], d["home"]["lat"],
                                 d["home"]["lon"], d["district"], d["grid"])
                return list(await pipe.execute())
            except NoScriptError:  # Redis restarted: reload and redo the (idempotent) batch
                await self.store.load_scripts()
                raise ConnectionError("redis lost its scripts") from None

        results = await self._retry(apply) if valid else []
        for (rec, _d), result in zip(valid, results, strict=True):
            text = result.decode() if isinstance(result, bytes) else str(result)
            if text == "ok":
                counts["ok"] += 1
            elif text == "dup":
                counts["duplicate"] += 1
            elif text.startswith("stale:"):
                counts["refused"] += 1
                refusals.append((rec, "units", "stale_seq",
                                 f"seq {_d['seq']} is not newer than seq {text.split(':', 1)[1]} already applied"))
            else:
                counts["refused"] += 1
                refusals.append((rec, "units", "illegal_transition",
                                 f"{text.split(':', 1)[1]} → {_d['status']} is not a legal transition"))
        now = self.clock()
        futures = []
        for rec, stage, error_class, reason in refusals:
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
            log.warning("dead-lettered %d of %d from %s[%d]", len(futures), len(records), tp.topic, tp.partition)
        for outcome, n in counts.items():
            if n:
                metrics.EVENTS_IN.labels(tp.topic, outcome).inc(n)
        metrics.BATCH_SIZE.labels("units").observe(len(records))
        metrics.PROCESSING.labels("units").observe(time.perf_counter() - start)
        return counts
