"""kaifong.streams.codec — bytes on the wire: JSON encoding, CloudEvents headers, dead letters.

Layer: streams. Pure functions: no I/O, clock passed in.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from typing import Any

import orjson

from kaifong.schemas.records import DeadLettered

#: Value bytes kept verbatim in a dead letter; larger payloads are truncated (hash kept) so the
#: dead-letter record itself always fits the broker's message limit.
DEADLETTER_KEEP_BYTES = 64 * 1024

CE_SOURCE = "/kaifong/worker"

Headers = list[tuple[str, bytes]]


def dumps(obj: Any) -> bytes:
    """Compact JSON (orjson): datetimes as RFC 3339, non-str dict keys refused."""
    return orjson.dumps(obj)


def cloudevent_headers(event_id: str, event_type: str, time: datetime, source: str = CE_SOURCE,
                       subject: str | None = None) -> Headers:
    """CloudEvents 1.0 Kafka binary-mode headers (``ce_*``) for an output event."""
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", event_id.encode()),
        ("ce_type", f"dev.kaifong.{event_type}.v1".encode()),
        ("ce_source", source.encode()),
        ("ce_time", time.isoformat().encode()),
        ("content-type", b"application/json"),
    ]
    if subject:
        headers.append(("ce_subject", subject.encode()))
    return headers


def dead_letter(*, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int,
                stage: str, error_class: str, error: str, now: datetime) -> tuple[dict[str, Any], Headers]:
    """The dead-letter body and headers for a refused message.

    >>> from datetime import UTC
    >>> body, headers = dead_letter(key=b"k", value=b"{", topic="t", partition=0, offset=7,
    ...     stage="intake", error_class="not_json", error="bad", now=datetime(2026, 1, 1, tzinfo=UTC))
    >>> body["error_class"], dict(headers)["kf_source_offset"]
    ('not_json', b'7')
    """
    value = value or b""
    truncated = len(value) > DEADLETTER_KEEP_BYTES
    kept = value[:DEADLETTER_KEEP_BYTES]
    record = DeadLettered(
        source_topic=topic, source_partition=partition, source_offset=offset, stage=stage,
        error_class=error_class, error=error[:4000],
        key_b64=None if key is None else base64.b64encode(key).decode(),
        value_b64=base64.b64encode(kept).decode(), value_size=len(value), value_truncated=truncated,
        value_sha256=hashlib.sha256(value).hexdigest(), received_at=now,
    )
    body = record.asdict()
    body["received_at"] = now.isoformat()
    headers: Headers = [
        ("kf_stage", stage.encode()),
        ("kf_error_class", error_class.encode()),
        # Headers are for routing and grep: keep them short, the body has the whole reason.
        ("kf_error", error[:512].encode("utf-8", "replace")),
        ("kf_source_topic", topic.encode()),
        ("kf_source_partition", str(partition).encode()),
        ("kf_source_offset", str(offset).encode()),
    ]
    dl_id = hashlib.sha256(f"{topic}/{partition}/{offset}/{stage}".encode()).hexdigest()[:32]
    return body, headers + cloudevent_headers(dl_id, "dead-letter", now)
