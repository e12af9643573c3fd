"""kaifong.agents.web.auth — who may call what on the web port (bearer token, loopback rule), counted by route.

Layer: agents/web. :class:`Guard` is the one place that decides, once per request, in an aiohttp
middleware (:meth:`Guard.middleware`) in front of every route, Faust's views included;
:func:`security_headers` puts the security headers on every answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kaifong.agents.web.responses import error
from kaifong.streams import metrics
from kaifong.streams.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Routes a Kubernetes probe calls: they carry no secret and expose nothing, so never guarded.
OPEN_ROUTES = frozenset({"/health", "/ready"})
#: Route label of requests that matched no route (bounded: never the raw path).
UNMATCHED = "unmatched"
#: Cookie that lets a browser that opened the console with ``?token=`` read (never write).
CONSOLE_COOKIE = "kf_console"

# Response headers of every answer. The CSP matches the console's own (no inline script or
# style, nothing from another origin); on JSON it costs nothing and stops content sniffing.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": ("default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                                "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
                                "frame-ancestors 'none'; form-action 'self'"),
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class InsecureConfig(ValueError):
    """The web port would be reachable beyond loopback with no token guarding it."""


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine.

    >>> [is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "localhost", "0.0.0.0", "10.0.0.5", "")]
    [True, True, True, True, False, False, False]
    """
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or an empty bind: assume it is reachable from elsewhere


def route_of(request: web.Request) -> str:
    """The route template that matched (``/api/incidents/{id}``), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


@dataclass(frozen=True)
class Guard:
    """Who may call what, decided once per request, and the request counters.

    - /health and /ready: always open (probes carry no secret; they reveal nothing);
    - writes (anything but GET/HEAD/OPTIONS): the bearer token, unless none is configured on a
      loopback-only port (development);
    - reads: open on a loopback-only port; beyond loopback the bearer token, or the console
      cookie (a browser cannot put a header on an EventSource or a ``<script src>``).
    """

    token: str
    loopback: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> Guard:
        """The guard for ``settings``; refuse an open port beyond loopback with no token."""
        loopback = is_loopback(settings.web_host)
        if not loopback and not settings.api_token:
            raise InsecureConfig(
                f"KAIFONG_WEB_HOST={settings.web_host} accepts connections beyond loopback but "
                "KAIFONG_API_TOKEN is empty: set a token (e.g. `openssl rand -hex 32`) or bind to 127.0.0.1")
        return cls(settings.api_token, loopback)

    @property
    def console_cookie(self) -> str:
        """The read-only console cookie value: derived from the token, never the token itself,
        so a leaked cookie cannot be replayed as a bearer token for writes."""
        return hmac.new(self.token.encode(), b"kaifong-console-read-v1", hashlib.sha256).hexdigest()

    def token_matches(self, candidate: str | None) -> bool:
        """Constant-time comparison with the configured token (False when either is empty)."""
        if not self.token or not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    def _bearer(self, request: web.Request) -> str | None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None

    def refusal(self, request: web.Request, route: str) -> str | None:
        """Why the request is refused (None when it may proceed)."""
        if route in OPEN_ROUTES:
            return None
        bearer = self._bearer(request)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            if not self.token:
                return None  # development: loopback-only (checked at start) and no token set
            return None if self.token_matches(bearer) else "writes need the bearer token"
        if self.loopback:
            return None
        if self.token_matches(bearer):
            return None
        cookie = request.cookies.get(CONSOLE_COOKIE)
        if cookie and hmac.compare_digest(cookie.encode(), self.console_cookie.encode()):
            return None
        if route == "/" and self.token_matches(request.query.get("token")):
            return None  # opening the console with ?token= (the page then sets the cookie)
        return "this port is reachable beyond loopback: every request needs the bearer token"

    def unauthorized(self, request: web.Request, reason: str) -> web.Response:
        """401 with the ``WWW-Authenticate`` challenge (RFC 6750)."""
        challenge = 'Bearer realm="kaifong"'
        if self._bearer(request) is not None:
            challenge += ', error="invalid_token"'
        response = error(401, "unauthorized", reason,
                         hint="send 'Authorization: Bearer <KAIFONG_API_TOKEN>'; browsers open /?token=<token>")
        response.headers["WWW-Authenticate"] = challenge
        return response

    def cross_site(self, request: web.Request) -> bool:
        """A browser write from another origin while writes are open (no token: development).

        With a token, a write needs the ``Authorization`` header, which another origin's page
        cannot send without a CORS preflight this server never answers, so only the token-less
        mode needs the check (a page on any site could otherwise POST to 127.0.0.1).
        """
        if self.token or request.method in ("GET", "HEAD", "OPTIONS"):
            return False
        origin = request.headers.get("Origin")
        if origin is None:
            return False  # not a browser (curl, an upstream system)
        return origin == "null" or origin.split("://", 1)[-1].rstrip("/") != request.host

    def middleware(self) -> Any:
        """The aiohttp middleware: guard, then count by route template and status code."""

        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            route = route_of(request)
            code = "500"
            try:
                reason = self.refusal(request, route)
                if reason is not None:
                    metrics.HTTP_UNAUTHORIZED.labels(route).inc()
                    response: web.StreamResponse = self.unauthorized(request, reason)
                elif self.cross_site(request):
                    response = error(403, "cross_origin", "writes from another origin are refused")
                else:
                    response = await handler(request)
                code = str(response.status)
                return response
            except web.HTTPException as exc:
                code = str(exc.status)
                raise
            except asyncio.CancelledError:
                code = "499"  # the client went away (nginx's convention; bounded like the rest)
                raise
            finally:
                metrics.HTTP_REQUESTS.labels(route, code).inc()

        return guard


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: security headers on every response; live data is never cached."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
