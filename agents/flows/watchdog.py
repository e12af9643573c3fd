"""kaifong.agents.flows.watchdog — the embedded broker's cliff: tail-fetch latency per partition.

Layer: agents/flows. The embedded broker (Tansu, memory storage) slows down as record batches pile up
in a partition and stops answering fetches near ~40,000 batches (DESIGN.md §6). Every
``interval`` the watchdog fetches the newest record of every partition of the catalogue with
its own consumer (no group) and exports the time it took; past ``warn_s`` it logs an ERROR
naming the partition, so an operator moves the run to Kafka/Redpanda before fetches stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from kaifong.streams import metrics, security
from kaifong.streams.settings import Settings
from kaifong.streams.topics import CATALOGUE

log = logging.getLogger(__name__)


async def probe(consumer: AIOKafkaConsumer, parts: list[TopicPartition],
                timeout_s: float) -> dict[TopicPartition, float]:
    """Seconds to fetch the last record of each partition (``timeout_s`` when it never came)."""
    ends = await consumer.end_offsets(parts)
    out: dict[TopicPartition, float] = {}
    for tp in parts:
        if ends[tp] == 0:
            continue
        consumer.assign([tp])
        consumer.seek(tp, ends[tp] - 1)
        started = time.perf_counter()
        try:
            await asyncio.wait_for(consumer.getmany(tp, timeout_ms=int(timeout_s * 1000), max_records=1), timeout_s)
            out[tp] = time.perf_counter() - started
        except TimeoutError:
            out[tp] = timeout_s
    return out


async def run(settings: Settings, interval_s: float = 60.0, warn_s: float = 0.5, timeout_s: float = 5.0) -> None:
    """Probe forever (a worker task)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                                fetch_max_wait_ms=settings.fetch_max_wait_ms, client_id=f"{settings.app_id}-watchdog",
                                **security.aiokafka_kwargs(settings))
    await consumer.start()
    try:
        while True:
            await asyncio.sleep(interval_s)
            parts = [TopicPartition(spec.name(settings), p) for spec in CATALOGUE
                     for p in range(spec.partitions(settings))]
            try:
                timings = await probe(consumer, parts, timeout_s)
            except Exception as exc:  # noqa: BLE001 - a probe failure is itself worth a warning, not a crash
                log.warning("broker watchdog: probe failed (%s)", type(exc).__name__)
                continue
            for tp, seconds in timings.items():
                metrics.BROKER_TAIL_FETCH.labels(tp.topic, str(tp.partition)).set(seconds)
                if seconds >= warn_s:
                    log.error("BROKER SLOWING DOWN: fetching the newest record of %s[%d] took %.2fs. The embedded "
                              "broker degrades with record batches per partition and stops answering near 40,000; "
                              "move this run to Kafka/Redpanda (deploy/compose) before it does.",
                              tp.topic, tp.partition, seconds)
    finally:
        await consumer.stop()


def register(app: Any, settings: Settings) -> None:
    """Start the watchdog with the app (only useful against the embedded broker, harmless elsewhere)."""
    app.early_tasks.append(lambda: run(settings, interval_s=settings.watchdog_interval_s))
