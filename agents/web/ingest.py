"""kaifong.agents.web.ingest — ``POST /api/events``: HTTP ingest for upstream systems that cannot speak Kafka.

Layer: agents/web. The same contracts as the input topics, all-or-nothing per request: every
event is checked exactly as the topic's intake checks it, and nothing is sent unless all pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from kaifong.agents.web.responses import error, json_response, read_limited, too_large
from kaifong.agents.web.services import SendAll
from kaifong.schemas.validation import InvalidEvent, parse
from kaifong.streams.codec import Headers
from kaifong.streams.settings import Settings
from kaifong.streams.topics import INPUT_BY_EVENT_TYPE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ingest:
    """The ingest handler: checks with the intake's rules, publishes with the worker's producer."""

    settings: Settings
    send_all: SendAll

    async def ingest(self, request: web.Request) -> web.Response:
        """``POST /api/events/{type}`` or ``/api/events?type=``: one event or a JSON array.

        Every event is checked exactly as the topic's intake checks it; if any is invalid,
        nothing is sent and the answer lists every reason of every invalid event.
        """
        event_type = request.match_info.get("type") or request.query.get("type", "")
        spec = INPUT_BY_EVENT_TYPE.get(event_type)
        if spec is None:
            return error(400, "unknown_type", "unknown or missing event type",
                         types=sorted(INPUT_BY_EVENT_TYPE))
        limit = self.settings.max_event_bytes * 100
        if request.content_length is not None and request.content_length > limit:
            return too_large(limit)  # refused on the declared size, before reading a byte of it
        body = await read_limited(request, limit)
        if body is None:
            return too_large(limit)
        errors: list[dict[str, Any]] = []
        raws: list[bytes] = []
        events: list[dict[str, Any]] = []
        try:
            top = orjson.loads(body) if body.strip() else None
        except orjson.JSONDecodeError as exc:
            return json_response({"errors": [{"index": 0, "error_class": "not_json",
                                              "reasons": [str(exc)[:300]]}]}, status=400)
        if isinstance(top, list):
            if not top:
                errors.append({"index": 0, "error_class": "empty", "reasons": ["the array holds no events"]})
            for i, item in enumerate(top):
                try:
                    raws.append(orjson.dumps(item))
                except orjson.JSONEncodeError:  # nested deeper than orjson writes (255 levels)
                    errors.append({"index": i, "error_class": "not_json", "reasons": ["nested too deeply"]})
                    raws.append(b"")
        else:
            raws = [body]  # a single event is checked as the very bytes that will be sent
        for i, raw in enumerate(raws):
            if not raw and isinstance(top, list):
                continue  # refused above
            try:
                events.append(parse(spec.event_type, raw, max_bytes=self.settings.max_event_bytes))
            except InvalidEvent as exc:
                errors.append({"index": i, "error_class": exc.error_class, "reasons": exc.reasons})
        if errors:
            log.info("http ingest refused: %d of %d %s events invalid", len(errors), len(raws), event_type)
            return json_response({"errors": errors, "accepted": 0}, status=400)
        topic = spec.name(self.settings)
        headers: Headers = [("content-type", b"application/json"), ("kf_via", b"http")]
        records: list[tuple[str, bytes | None, bytes, Headers]] = [
            (topic, str(ev[spec.key]).encode(), raw, list(headers))
                   for ev, raw in zip(events, raws, strict=True)]
        try:
            await self.send_all(records)
        except Exception as exc:  # noqa: BLE001 - any producer failure: tell the caller to retry
            log.warning("http ingest: could not publish %d events (%s)", len(records), type(exc).__name__)
            return error(503, "broker_unavailable", "not every event was published; retrying the request is "
                         "safe (events are deduplicated by event_id)")
        log.info("http ingest: %d %s events accepted", len(records), event_type)
        return json_response({"accepted": len(records), "topic": topic,
                              "ids": [ev.get("event_id") for ev in events]}, status=202)
