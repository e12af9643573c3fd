"""kaifong.agents.web — the worker's HTTP surface: /health, /ready, /metrics.

Layer: agents. Served by Faust's web server on ``KAIFONG_WEB_PORT``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from faust import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from kaifong.agents.worker import Worker


def register(app: Any, worker: Worker) -> None:
    """Add the operational endpoints to ``app``."""

    @app.page("/health")
    async def health(self: web.View, request: web.Request) -> web.Response:
        # Liveness: the process serves HTTP. Readiness detail rides along for humans.
        return self.json({"status": "ok", "ready": worker.is_ready(),
                          "uptime_s": round(time.monotonic() - worker.started_monotonic, 3)})

    @app.page("/ready")
    async def ready(self: web.View, request: web.Request) -> web.Response:
        ok = worker.is_ready()
        return self.json({"ready": ok, "ready_after_s": worker.ready_after_s}, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics_view(self: web.View, request: web.Request) -> web.Response:
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
