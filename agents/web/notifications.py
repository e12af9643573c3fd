"""kaifong.agents.web.notifications — a webhook receiver for Alertmanager: what each seat was told, on the console.

Layer: agents/web. ``kaifong up`` points every seat's webhook at ``POST /api/notifications/{seat}``
so that the demo closes the loop (escalation → Alertmanager → the seat) without a mail server;
production seats use their own receivers (e-mail, WeChat Work, a paging system's webhook) and
this endpoint stays unused. It keeps the last notifications in memory (bounded) and
``GET /api/notifications`` lists them, newest first.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from kaifong.agents.web.auth import principal_of
from kaifong.agents.web.responses import error, json_response, read_limited, too_large

log = logging.getLogger(__name__)

#: Largest webhook body taken (Alertmanager sends a group's alerts; max_alerts bounds it).
BODY_MAX = 256 * 1024
#: Notifications kept for the console.
KEEP = 200
_SEAT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,99}$")


@dataclass
class Notifications:
    """The webhook receiver and its recent notifications."""

    clock: Callable[[], datetime]
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=KEEP))

    async def receive(self, request: web.Request) -> web.Response:
        """``POST /api/notifications/{seat}``: one Alertmanager webhook notification (version 4)."""
        seat = request.match_info["seat"]
        if not _SEAT.match(seat):
            return error(400, "bad_seat", "a seat id is letters, digits and . _ : -")
        body = await read_limited(request, BODY_MAX)
        if body is None:
            return too_large(BODY_MAX)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return error(400, "not_json", "the body must be an Alertmanager webhook notification (JSON)")
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
            return error(400, "bad_body", "an Alertmanager webhook notification has an `alerts` list")
        alerts = [a for a in payload["alerts"] if isinstance(a, dict)]
        entry = {
            "seat": seat, "received_at": self.clock().isoformat(timespec="milliseconds"),
            "status": str(payload.get("status", "")), "group": payload.get("groupLabels") or {},
            "alerts": [{"status": a.get("status"), "labels": a.get("labels") or {},
                        "summary": (a.get("annotations") or {}).get("summary")} for a in alerts[:50]],
        }
        self.recent.appendleft(entry)
        log.info("notification for seat %s: %d alert(s), %s", seat, len(alerts), entry["status"])
        return json_response({"received": len(alerts)}, status=200)

    async def listing(self, request: web.Request) -> web.Response:
        """``GET /api/notifications``: the recent notifications, newest first (``?seat=`` filters)."""
        seat = request.query.get("seat")
        principal = principal_of(request)
        mine = None if principal.everywhere else principal.seat_id  # a seat sees what it was told
        items = [n for n in self.recent if (seat is None or n["seat"] == seat) and (mine is None or n["seat"] == mine)]
        return json_response({"notifications": items})
