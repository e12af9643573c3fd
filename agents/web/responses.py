"""kaifong.agents.web.responses — JSON answers, error bodies, bounded request bodies, rejections as statuses.

Layer: agents/web. The one place that turns a decision's
:class:`~kaifong.agents.core.errors.Rejected` into an HTTP status (:func:`rejection`).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from kaifong.agents.core.errors import Rejected

#: The HTTP status of each kind of rejection.
REJECTION_STATUS = {"invalid": 400, "not_found": 404, "conflict": 409, "unavailable": 503}


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response (orjson; UTF-8, so Chinese names stay readable)."""
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json",
                        charset="utf-8", headers=headers)


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """A JSON error: a stable ``error`` code and a sentence for humans."""
    return json_response({"error": code, "message": message, **extra}, status=status)


def rejection(exc: Rejected) -> web.Response:
    """The error answer of a rejected request: its kind's status, its code, message and extra fields."""
    return error(REJECTION_STATUS[exc.kind], exc.code, exc.message, **exc.extra)


def too_large(limit: int) -> web.Response:
    """413, closing the connection (the rest of the body is never read)."""
    response = error(413, "too_large", f"the request body is over the limit of {limit} bytes; "
                     "send fewer events per request (the limit is KAIFONG_MAX_EVENT_BYTES x 100)")
    response.force_close()
    return response


async def read_limited(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it grows over ``limit`` (never buffered beyond it)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
