"""kaifong.streams.app — the Faust app factory, tuned for fast start and low per-hop latency.

Layer: streams. ``create_app(settings)`` builds one app from one frozen settings object; the
agents register themselves on it in ``kaifong.agents.worker`` (explicit, no autodiscovery).
"""

from __future__ import annotations

from typing import Any, ClassVar

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT

from kaifong.streams import security
from kaifong.streams.settings import Settings


class _LowWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with a configurable fetch wait.

    Faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer and offers no
    setting. Some brokers (Tansu, the embedded one) hold a waiting fetch for the whole wait
    even when data arrives, so every hop would cost ~1.2 s at p50; 10 ms brings it to tens
    of milliseconds. aiokafka reads the attribute when the consumer starts.
    """

    fetch_max_wait_ms: ClassVar[int] = 10

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class _LowWaitConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        thread = _LowWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)
        thread.fetch_max_wait_ms = int(self.app.conf.kaifong_fetch_max_wait_ms)  # type: ignore[misc,attr-defined]
        return thread


class _Transport(faust_aiokafka.Transport):
    Consumer = _LowWaitConsumer


class KaifongApp(faust.App):
    """The Faust app, with the low-wait consumer and the settings it was built from."""

    kaifong: Settings
    #: Coroutine factories started with the app, before the consumer group join completes
    #: (so side consumers join in parallel with Faust's own group instead of after it).
    early_tasks: list[Any]

    async def on_first_start(self) -> None:
        await super().on_first_start()
        for factory in getattr(self, "early_tasks", []):
            self.add_future(factory())

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self, loop=self.loop)


def create_app(settings: Settings, **overrides: Any) -> KaifongApp:
    """Build the Faust app from ``settings`` (agents are registered by the worker module)."""
    conf: dict[str, Any] = {
        "broker": settings.broker_url,
        "store": "memory://",  # durable state lives in Redis (DESIGN.md §7), not in tables
        "autodiscover": False,
        "datadir": settings.data_dir,
        "web_enabled": True,
        "web_bind": settings.web_host,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        # No leader topic: it would be one more auto-created topic; leader election for the
        # drill scheduler is done in Redis.
        "topic_disable_leader": True,
        "topic_allow_declare": True,
        # A join waits about half the session timeout (DESIGN.md §6): 6 s → ready in ~4 s.
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": settings.heartbeat_interval_s,
        # A dead member holds a rebalance up to this long: keep it at the session timeout.
        "broker_rebalance_timeout": settings.session_timeout_s,
        "broker_commit_interval": 1.0,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": {"all": -1, "1": 1, "0": 0}.get(settings.producer_acks, -1),
        "producer_linger_ms": settings.producer_linger_ms,
        "producer_max_request_size": 4 * 1024 * 1024,
        "consumer_max_fetch_size": 8 * 1024 * 1024,
        "stream_wait_empty": False,
        "consumer_group_instance_id": settings.instance_id or None,
        "logging_config": None,
    }
    conf.update(security.faust_conf(settings))  # TLS/SASL of the worker's consumer and producer
    security.quiet_payload_loggers(settings.log_level)  # no library logs payloads, even at debug
    conf.update(overrides)
    app = KaifongApp(settings.app_id, **conf)
    app.conf.kaifong_fetch_max_wait_ms = settings.fetch_max_wait_ms  # type: ignore[attr-defined]
    app.kaifong = settings
    app.early_tasks = []
    return app
