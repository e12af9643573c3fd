"""kaifong.agents.tools.bench_load — the bench's load generation: status events, producers, background traffic.

Layer: agents/tools. What the bench sends; nothing here measures (the phases do, in bench_phases).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from kaifong.streams import security
from kaifong.streams.settings import Settings


def status_event(unit_id: str, home: dict[str, float], event_id: str, seq: int, at: str) -> bytes:
    """One "available" status event of a unit at its home, encoded."""
    return orjson.dumps({"event_id": event_id, "unit_id": unit_id, "status": "available", "at": at, "seq": seq,
                         "location": home})


def status_events(units: list[dict[str, Any]], n: int, seq0: int) -> list[tuple[bytes, bytes]]:
    """``n`` keyed "available" events, the units taken in turn, their sequence numbers from ``seq0``."""
    now = datetime.now(UTC).isoformat()
    picked = [units[i % len(units)] for i in range(n)]
    return [(u["unit_id"].encode(), status_event(u["unit_id"], u["home"], f"s{seq0}-{i}", seq0 + i, now))
            for i, u in enumerate(picked)]


async def start_producer(settings: Settings, linger_ms: int = 50) -> AIOKafkaProducer:
    """A started producer with the bench's batching (large batches, leader acks)."""
    p = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=linger_ms,
                         max_batch_size=1 << 20, acks=1, max_request_size=4 << 20,
                         **security.aiokafka_kwargs(settings))
    await p.start()
    return p


async def produce_all(settings: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    """Send every ``(key, value)`` record and wait for all acks; the seconds it took."""
    p = await start_producer(settings)
    started = time.perf_counter()
    try:
        futures = [await p.send(topic, v, key=k) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await p.stop()
    return time.perf_counter() - started


async def fill_open_incidents(settings: Settings, topic: str, units: list[dict[str, Any]], n: int) -> None:
    """Open ``n`` more incidents (far-off deadlines) so the worker holds a city's worth."""
    tag = uuid.uuid4().hex[:6]
    producer = await start_producer(settings, linger_ms=20)
    now = datetime.now(UTC).isoformat()
    rng = random.Random(3)
    for i in range(n):
        u = rng.choice(units)
        iid = f"o{tag}-{i}"
        await producer.send(topic, orjson.dumps({
            "event_id": f"oe{tag}-{i}", "incident_id": iid, "category": "other", "severity": 4,
            "reported_at": now, "location": u["home"], "district": u["district"], "source": "sensor",
            "exercise": False}), key=iid.encode())
    await producer.flush()
    await producer.stop()


def status_traffic(settings: Settings, topic: str, units: list[tuple[str, dict[str, float]]], rate: float,
                   stop: Any, sent: Any) -> None:
    """Background unit-status traffic at ``rate`` events/s until ``stop`` is set (own process)."""

    with contextlib.suppress(OSError):
        # A load generator, not the system measured: when the cores are contended the
        # processes under measurement run first (the achieved rate is reported).
        os.nice(10)

    async def main() -> None:
        producer = await start_producer(settings, linger_ms=50)
        # Upstream systems run on machines of their own; this one shares the cores with what
        # it loads. So it builds each tick's record batches itself, one per partition (keyed
        # like the default partitioner: a unit's events stay in order), instead of paying
        # aiokafka's per-record send() (futures, accumulator): ~4x less CPU for the same load.
        parts = sorted(await producer.partitions_for(topic))
        keyed = [(uid, uid.encode(), home, DefaultPartitioner()(uid.encode(), parts, parts)) for uid, home in units]
        seq = int(time.time() * 1000)
        i = 0
        now = datetime.now(UTC).isoformat()
        tick = 0.05
        per_tick = max(1, int(rate * tick))
        started = time.perf_counter()
        sends: list[Any] = []
        try:
            while not stop.is_set():
                batches: dict[int, Any] = {}
                for _ in range(per_tick):
                    uid, key, home, part = keyed[i % len(keyed)]
                    i += 1
                    value = status_event(uid, home, f"bg{seq}-{i}", seq + i, now)
                    batch = batches.get(part)
                    if batch is None or batch.append(key=key, value=value, timestamp=None) is None:
                        if batch is not None:
                            sends.append(await producer.send_batch(batch, topic, partition=part))
                        batch = batches[part] = producer.create_batch()
                        batch.append(key=key, value=value, timestamp=None)
                for part, batch in batches.items():
                    sends.append(await producer.send_batch(batch, topic, partition=part))
                # Acknowledgements are awaited a few ticks behind: the broker's ack time must
                # not slow the rate down, and a failed send still ends the traffic loudly.
                while len(sends) > 8 * len(parts):
                    await sends.pop(0)
                sent.value = i
                await asyncio.sleep(max(0.0, started + (i / per_tick) * tick - time.perf_counter()))
            await asyncio.gather(*sends)
        finally:
            await producer.stop()

    asyncio.run(main())
