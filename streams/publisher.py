"""kaifong.streams.publisher — the synchronous client for upstream systems (kafka-python).

Layer: streams. An upstream integrator can ``from kaifong.streams.publisher import Publisher``:
events are validated against the published schema *before* they are sent (a clear error,
nothing on the wire), keyed by their entity id, and sent with acks=all, one request in flight
(order kept per key), not idempotent: a retry may duplicate an event, and kaifong drops the
duplicate by its event_id.

>>> # Publisher(Settings.from_env()).publish("incident-reported", {...})  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import orjson
from kafka import KafkaProducer

from kaifong.schemas.validation import InvalidEvent, validate
from kaifong.streams import security
from kaifong.streams.settings import Settings
from kaifong.streams.topics import INPUT_BY_EVENT_TYPE

#: Field that keys each input event type (one key, one partition, one owner).
KEY_FIELD = {spec.event_type: spec.key for spec in INPUT_BY_EVENT_TYPE.values()}


class Publisher:
    """Validate-then-send for the five input event types."""

    def __init__(self, settings: Settings, **producer_config: Any) -> None:
        self.settings = settings
        config: dict[str, Any] = {"bootstrap_servers": settings.bootstrap_servers, "acks": "all",
                                  "linger_ms": 20, "client_id": "kaifong-publisher",
                                  "max_request_size": 4 * 1024 * 1024, "retries": 5,
                                  # Not idempotent: a broker that forgets producer ids (the
                                  # embedded one, restarted) leaves an idempotent kafka-python
                                  # producer retrying forever. A retry may duplicate an event,
                                  # which kaifong drops by event_id; one request in flight keeps
                                  # the order per key.
                                  "enable_idempotence": False, "max_in_flight_requests_per_connection": 1,
                                  **security.kafka_python_kwargs(settings)}
        config.update(producer_config)
        self.producer = KafkaProducer(**config)

    def publish(self, event_type: str, event: dict[str, Any], *, wait: bool = True) -> Any:
        """Validate ``event`` as ``event_type`` and send it; raise :class:`InvalidEvent` if bad."""
        spec = INPUT_BY_EVENT_TYPE.get(event_type)
        if spec is None:
            raise InvalidEvent("unknown_type", [f"{event_type!r} is not an input event type; "
                                                f"use one of {', '.join(INPUT_BY_EVENT_TYPE)}"])
        validate(event_type, event)
        raw = orjson.dumps(event)
        if len(raw) > self.settings.max_event_bytes:
            raise InvalidEvent("too_large", [f"{len(raw)} bytes exceeds {self.settings.max_event_bytes}"])
        future = self.producer.send(spec.name(self.settings), key=str(event[spec.key]).encode(), value=raw)
        return future.get(timeout=30) if wait else future

    def flush(self) -> None:
        """Wait until everything sent has been acknowledged."""
        self.producer.flush()

    def close(self) -> None:
        """Flush and close the producer."""
        self.producer.close()
