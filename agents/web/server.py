"""kaifong.agents.web.server — the worker's HTTP surface: probes, metrics, the API, the live feed, the console.

Layer: agents/web. Served by Faust's web server (aiohttp) on ``KAIFONG_WEB_PORT``:

- ``/health``, ``/ready`` — probes, never behind the token;
- ``/metrics`` — Prometheus, behind the token when the port is reachable beyond loopback;
- ``/api/*`` — :mod:`kaifong.agents.web.api`; ``/api/stream`` — :mod:`kaifong.agents.web.live`;
- ``/`` and ``/static/{name}`` — the command-centre console (plain HTML/CSS/JS, no build step).

One aiohttp middleware (:meth:`kaifong.agents.web.auth.Guard.middleware`) guards and counts every
route, Faust's views included. What the room reads and calls comes in one
:class:`~kaifong.agents.web.services.WebServices` (never the worker).
"""

from __future__ import annotations

import hashlib
import time
from importlib import resources
from typing import Any

from aiohttp import web as aioweb
from faust import web
from prometheus_client import CONTENT_TYPE_LATEST

from kaifong.agents.flows import firehose
from kaifong.agents.web import api, auth, live
from kaifong.agents.web.services import WebServices
from kaifong.streams import metrics

#: The console's files and their content types (nothing else is served from static/).
STATIC_TYPES = {
    "index.html": "text/html",
    "console.js": "text/javascript",
    "console.css": "text/css",
    "favicon.svg": "image/svg+xml",
}


class Console:
    """The console's static files, read once when the worker starts (they are small)."""

    def __init__(self, guard: auth.Guard) -> None:
        self.guard = guard
        folder = resources.files("kaifong.agents.web").joinpath("static")
        self.files = {name: folder.joinpath(name).read_bytes() for name in STATIC_TYPES}
        self.etags = {name: '"' + hashlib.sha256(body).hexdigest()[:32] + '"' for name, body in self.files.items()}

    def _file(self, request: aioweb.Request, name: str) -> aioweb.Response:
        if request.headers.get("If-None-Match") == self.etags[name]:
            return aioweb.Response(status=304, headers={"ETag": self.etags[name]})
        # no-cache: revalidate each load (ETag), so a restarted worker's console is never stale.
        return aioweb.Response(body=self.files[name], content_type=STATIC_TYPES[name], charset="utf-8",
                               headers={"ETag": self.etags[name], "Cache-Control": "no-cache"})

    async def index(self, request: aioweb.Request) -> aioweb.Response:
        """``GET /``: the console. A ``?token=`` in the address is ignored (a token in a URL
        ends up in histories, logs and screenshots): the page signs in with ``POST /api/session``
        and takes the parameter out of the address bar."""
        return self._file(request, "index.html")

    async def asset(self, request: aioweb.Request) -> aioweb.Response:
        """``GET /static/{name}``: one of the console's files."""
        name = request.match_info["name"]
        if name not in self.files or name == "index.html":
            raise aioweb.HTTPNotFound
        return self._file(request, name)

    async def favicon(self, request: aioweb.Request) -> aioweb.Response:
        """``GET /favicon.ico``: browsers ask for it whatever the page links."""
        return self._file(request, "favicon.svg")


def _drop_production_index(app: Any) -> None:
    """Faust mounts its production index (``{"status": "OK"}``) at "/" when the worker starts
    unless the stats page is on; the console takes "/", so that blueprint is removed before
    it is applied (it only ever served that constant)."""
    enabled = getattr(app.web.blueprints, "_enabled", None)
    if isinstance(enabled, list):
        enabled[:] = [(prefix, bp) for prefix, bp in enabled if "production_index" not in str(bp)]


def register(app: Any, services: WebServices) -> None:
    """Add every HTTP endpoint to ``app`` and start the live feed with it.

    Raises :class:`kaifong.agents.web.auth.InsecureConfig` when the port would be reachable beyond
    loopback without a token (the worker refuses to start rather than serve an open API).
    """
    guard = auth.Guard.from_settings(services.settings, services.seats)
    web_app: aioweb.Application = app.web.web_app
    _drop_production_index(app)
    web_app.middlewares.append(guard.middleware())
    web_app.on_response_prepare.append(auth.security_headers)

    console = Console(guard)
    web_app.router.add_get("/", console.index)
    web_app.router.add_get("/static/{name}", console.asset)
    web_app.router.add_get("/favicon.ico", console.favicon)

    @app.page("/health")
    async def health(self: web.View, request: web.Request) -> web.Response:
        # Liveness: the process serves HTTP. Readiness detail rides along for humans.
        return self.json({"status": "ok", "ready": services.is_ready(),
                          "uptime_s": round(time.monotonic() - services.started_monotonic, 3)})

    @app.page("/ready")
    async def ready(self: web.View, request: web.Request) -> web.Response:
        ok = services.is_ready()
        return self.json({"ready": ok, "ready_after_s": services.ready_after_s()}, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics_view(self: web.View, request: web.Request) -> web.Response:
        child = await services.child_metrics() if services.child_metrics is not None else None
        return self.bytes(firehose.merged_exposition(child), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    handlers = api.register(web_app, services, guard)
    live.register(web_app, app, services.settings, handlers.summary_doc, services.views)
    for route in ("/", "/static/{name}", "/favicon.ico", "/metrics", "/api/stream", auth.UNMATCHED):
        metrics.HTTP_UNAUTHORIZED.labels(route)
