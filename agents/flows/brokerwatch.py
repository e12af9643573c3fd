"""kaifong.agents.flows.brokerwatch — notice that the broker lost data, say so loudly, and carry on.

Layer: agents/flows. The embedded broker (Tansu, memory storage) keeps every record, topic and
committed offset in memory: when it restarts, the topics come back empty (or not at all), and a
worker that kept running would otherwise go on as if nothing happened. A real Kafka can lose
data too (a topic deleted and recreated, an unclean leader election).

:class:`BrokerWatch` asks the broker every ``interval_s`` for the topic list and the end offset of
every partition of the catalogue, and remembers the highest end offset it has seen of each. A
partition whose end offset went backwards, a topic that vanished or whose partition count
changed means data was lost. Then it

- logs an ERROR ``broker lost data: …`` naming what was lost,
- sets the gauge ``kaifong_broker_data_loss`` to 1 (it stays 1 until the worker restarts),
- recreates the topic catalogue (:func:`kaifong.streams.admin.ensure_topics`), and
- forgets the worker's in-memory read positions of the lost partitions, so records written to
  the new, empty partitions are not skipped as "already read" (Faust drops a record whose offset
  is below the last offset it read from that partition).

Redis (the durable state) is untouched: incidents decided before the loss stay decided, and a
replayed event is still a duplicate.

While the broker does not answer, the worker reports not ready (``/ready`` 503): readiness means
"consumes its inputs", which it cannot do without a broker.

Wiring: ``brokerwatch.register(app, settings, is_ready)`` in ``Worker._register``; it returns the
readiness the web port reports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from kaifong.streams import metrics, security
from kaifong.streams.settings import Settings
from kaifong.streams.topics import CATALOGUE

log = logging.getLogger(__name__)

#: Seconds between two checks.
INTERVAL_S = 1.0
#: Consecutive failed checks after which the broker counts as unreachable (not ready).
UNREACHABLE_AFTER = 3


@dataclass
class Loss:
    """What one check found lost."""

    vanished: list[str] = field(default_factory=list)  # topics that no longer exist
    repartitioned: list[str] = field(default_factory=list)  # "topic: 4 → 1 partitions"
    rewound: list[str] = field(default_factory=list)  # "topic[p]: end 120 → 0"
    partitions: set[TopicPartition] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.vanished or self.repartitioned or self.rewound)

    def describe(self) -> str:
        """One line for the log."""
        parts = []
        if self.vanished:
            parts.append(f"topics vanished: {', '.join(sorted(self.vanished))}")
        if self.repartitioned:
            parts.append(f"partition counts changed: {', '.join(sorted(self.repartitioned))}")
        if self.rewound:
            shown = sorted(self.rewound)
            more = f" (+{len(shown) - 8} more)" if len(shown) > 8 else ""
            parts.append(f"end offsets went backwards: {', '.join(shown[:8])}{more}")
        return "; ".join(parts)


@dataclass
class BrokerWatch:
    """Remembers what the broker held and notices when it holds less."""

    settings: Settings
    #: Called with the lost partitions once a loss is detected (the worker resets its positions).
    on_loss: Callable[[set[TopicPartition]], Any] | None = None
    ensure_topics: Callable[[Settings], Any] | None = None
    high: dict[TopicPartition, int] = field(default_factory=dict)
    partition_counts: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    losses: int = 0
    _consumer: AIOKafkaConsumer | None = None

    @property
    def topics(self) -> list[str]:
        """The catalogue's topic names under the settings."""
        return [spec.name(self.settings) for spec in CATALOGUE]

    @property
    def broker_ok(self) -> bool:
        """False after :data:`UNREACHABLE_AFTER` consecutive failed checks."""
        return self.failures < UNREACHABLE_AFTER

    async def _client(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.bootstrap_servers, group_id=None, enable_auto_commit=False,
                client_id=f"{self.settings.app_id}-brokerwatch", request_timeout_ms=5000,
                connections_max_idle_ms=60_000, retry_backoff_ms=200,
                **security.aiokafka_kwargs(self.settings))
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def close(self) -> None:
        """Stop the watch's client."""
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def observe(self) -> tuple[dict[str, int], dict[TopicPartition, int]]:
        """The catalogue topics that exist with their partition counts, and their end offsets."""
        consumer = await self._client()
        # Fresh metadata for all topics (the consumer's own cache may be minutes old); a request
        # for all topics creates nothing, even on a broker that auto-creates the topics it is asked about.
        cluster = await consumer._client.fetch_all_metadata()
        existing = cluster.topics()
        counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in self.topics if t in existing}
        parts = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
        ends: dict[TopicPartition, int] = dict(await consumer.end_offsets(parts)) if parts else {}
        return counts, ends

    def compare(self, counts: dict[str, int], ends: dict[TopicPartition, int]) -> Loss:
        """What was lost since the last observation (and remember this one)."""
        loss = Loss()
        for topic, before in self.partition_counts.items():
            now = counts.get(topic)
            if now is None:
                loss.vanished.append(topic)
                loss.partitions |= {tp for tp in self.high if tp.topic == topic}
            elif now != before:
                loss.repartitioned.append(f"{topic}: {before} → {now} partitions")
                loss.partitions |= {tp for tp in self.high if tp.topic == topic}
        for tp, end in ends.items():
            seen = self.high.get(tp)
            if seen is not None and end < seen:
                loss.rewound.append(f"{tp.topic}[{tp.partition}]: end {seen} → {end}")
                loss.partitions.add(tp)
        if loss:
            # A loss resets what we remember: the broker's new history starts here.
            self.high = dict(ends)
        else:
            for tp, end in ends.items():
                self.high[tp] = max(end, self.high.get(tp, 0))
        # Topics missing now and never seen before are not a loss (not created yet).
        self.partition_counts = {**({} if loss else self.partition_counts), **counts}
        return loss

    async def check(self) -> Loss:
        """One check: observe, compare, and act on a loss."""
        try:
            counts, ends = await asyncio.wait_for(self.observe(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - any client error means "cannot tell now"
            self.failures += 1
            metrics.BROKER_REACHABLE.set(0)
            if self.failures == UNREACHABLE_AFTER:
                log.warning("broker watch: broker unreachable (%s); the worker reports not ready",
                            type(exc).__name__)
            await self.close()  # a fresh client next time: the old one may hold dead connections
            return Loss()
        if self.failures >= UNREACHABLE_AFTER:
            log.info("broker watch: broker reachable again")
        self.failures = 0
        metrics.BROKER_REACHABLE.set(1)
        loss = self.compare(counts, ends)
        if loss:
            await self.react(loss)
        return loss

    async def react(self, loss: Loss) -> None:
        """Report the loss loudly, recreate the catalogue, let the worker forget lost positions."""
        self.losses += 1
        metrics.BROKER_DATA_LOSS.set(1)
        log.error("broker lost data: %s. Events on those partitions before the loss are gone from the "
                  "broker (decisions already stored in Redis stay); upstream systems must re-send what they "
                  "sent before the loss if it was not processed yet. Recreating the topic catalogue.",
                  loss.describe())
        if self.on_loss is not None:
            try:
                self.on_loss(loss.partitions)
            except Exception:
                log.exception("broker watch: could not reset the worker's read positions")
        if self.ensure_topics is not None:
            try:
                result = await asyncio.to_thread(self.ensure_topics, self.settings)
                created = sorted(t for t, what in result.items() if what == "created")
                log.error("broker lost data: topic catalogue recreated (%d created, %d already back)",
                          len(created), len(result) - len(created))
            except Exception as exc:  # noqa: BLE001 - keep watching; the log says what failed
                log.error("broker lost data: recreating the topic catalogue failed: %s: %s",  # noqa: TRY400
                          type(exc).__name__, str(exc)[:300])

    async def run(self, interval_s: float = INTERVAL_S) -> None:
        """Check forever (until cancelled)."""
        metrics.BROKER_DATA_LOSS.set(0)
        try:
            while True:
                started = time.monotonic()
                await self.check()
                await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))
        finally:
            await self.close()


def forget_positions(app: Any, partitions: set[TopicPartition]) -> None:
    """Make Faust's consumer forget what it read and committed on ``partitions``.

    Faust skips a fetched record whose offset is below the last offset it read from that
    partition and ignores acks below its last commit; after the broker lost a partition, new
    records start again at offset 0 and would be skipped until the offsets caught up. The
    bookkeeping is dropped (as Faust itself does when a partition is revoked) and the
    partitions are sought to their beginning (the new history).
    """
    consumer = getattr(app, "consumer", None)
    if consumer is None:
        return
    mine = {tp for tp in partitions if tp in set(consumer.assignment())}
    for attr in ("_read_offset", "_committed_offset", "_acked", "_acked_index", "_gap"):
        table = getattr(consumer, attr, None)
        if table is None:
            continue
        for tp in mine:
            table.pop(tp, None)
    for tp in mine:
        try:
            consumer.seek(tp, 0)
        except Exception:  # noqa: BLE001 - a partition being revoked right now: the rebalance resets it
            log.warning("broker watch: could not rewind %s[%d]", tp.topic, tp.partition)


def register(app: Any, settings: Settings, is_ready: Callable[[], bool]) -> Callable[[], bool]:
    """Start the watch with ``app``; return ``is_ready`` that also needs a reachable broker."""
    from kaifong.streams.admin import ensure_topics

    watch = BrokerWatch(settings, on_loss=lambda parts: forget_positions(app, parts), ensure_topics=ensure_topics)

    @app.task
    async def broker_watch() -> None:
        await watch.run()

    def ready() -> bool:
        # /ready is truthful: a worker that cannot reach its broker consumes nothing.
        return is_ready() and watch.broker_ok

    return ready
