"""kaifong.streams.admin — create the topic catalogue and read topic offsets (kafka-python).

Layer: streams. Synchronous on purpose: used by the CLI and before the worker starts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from kaifong.streams import security
from kaifong.streams.settings import Settings
from kaifong.streams.topics import CATALOGUE, TopicSpec

log = logging.getLogger(__name__)


def wait_for_broker(settings: Settings, timeout: float = 30.0) -> None:
    """Block until the broker answers metadata requests, or raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                     request_timeout_ms=3000, client_id="kaifong-admin",
                                     **security.kafka_python_kwargs(settings))
            admin.close()
            return
        except (KafkaError, OSError) as exc:
            last = exc
            time.sleep(0.2)
    raise ConnectionError(f"broker {settings.broker_url} not reachable within {timeout}s: {last}")


def ensure_topics(settings: Settings, specs: tuple[TopicSpec, ...] = CATALOGUE) -> dict[str, str]:
    """Create every topic of ``specs`` that is missing; return ``{name: created|exists}``.

    An existing topic with a different partition count is an error: keys would move between
    partitions and the one-key-one-owner rule would break.
    """
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="kaifong-admin",
                             **security.kafka_python_kwargs(settings))
    try:
        result: dict[str, str] = {}
        for spec in specs:
            name = spec.name(settings)
            try:
                admin.create_topics([NewTopic(name, spec.partitions(settings), settings.replication_factor,
                                              topic_configs=spec.configs())])
                result[name] = "created"
            except TopicAlreadyExistsError:
                result[name] = "exists"
        described = {d.get("topic", d.get("name")): len(d["partitions"]) for d in admin.describe_topics(list(result))}
        for spec in specs:
            name = spec.name(settings)
            want = spec.partitions(settings)
            if described.get(name) != want:
                raise RuntimeError(f"topic {name} has {described.get(name)} partitions, expected {want}; "
                                   "fix KAIFONG_PARTITIONS or recreate the topic")
        return result
    finally:
        admin.close()


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition's offsets as the broker reports them and as found by reading."""

    topic: str
    partition: int
    beginning: int
    end: int  # true end offset (next offset to be written)
    reported_end: int  # what ListOffsets said; differs on Tansu's memory engine


def true_end_offsets(consumer: KafkaConsumer, parts: list[TopicPartition]) -> dict[TopicPartition, int]:
    """End offsets, corrected for Tansu's memory engine.

    Tansu (memory storage) reports "latest" as the first offset of the last write batch + 1
    when that batch held several records (DESIGN.md §6). We seek to the reported end and read
    forward until nothing more comes back, which is exact on any broker.
    """
    reported = consumer.end_offsets(parts)
    consumer.assign(parts)
    ends = dict(reported)
    for tp in parts:
        consumer.seek(tp, max(reported[tp] - 1, 0))
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 0.3:
        batch = consumer.poll(timeout_ms=100, max_records=10000)
        if not batch:
            continue
        quiet_since = time.monotonic()
        for tp, records in batch.items():
            ends[tp] = max(ends[tp], records[-1].offset + 1)
    consumer.unsubscribe()
    return ends


def describe(settings: Settings, names: list[str] | None = None) -> list[PartitionInfo]:
    """Partitions and offsets of ``names`` (default: the whole catalogue)."""
    names = names or [spec.name(settings) for spec in CATALOGUE]
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             client_id="kaifong-topics", fetch_max_wait_ms=50,
                             **security.kafka_python_kwargs(settings))
    try:
        parts = [TopicPartition(name, p) for name in names for p in sorted(consumer.partitions_for_topic(name) or ())]
        if not parts:
            return []
        begin = consumer.beginning_offsets(parts)
        reported = consumer.end_offsets(parts)
        ends = true_end_offsets(consumer, parts)
        return [PartitionInfo(tp.topic, tp.partition, begin[tp], ends[tp], reported[tp]) for tp in parts]
    finally:
        consumer.close()
