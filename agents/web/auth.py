"""kaifong.agents.web.auth — who may call what on the web port: credentials, loopback rule, sign-in.

Layer: agents/web. :class:`Guard` decides once per request, in an aiohttp middleware
(:meth:`Guard.middleware`) in front of every route, Faust's views included, and leaves the caller's
:class:`~kaifong.agents.web.identity.Principal` on the request (:func:`principal_of`); handlers
then check the role and the jurisdiction of what they act on (403). :class:`SessionApi` is
``/api/session``: sign in with a token in the body (never in the URL), sign out, who am I.
:func:`security_headers` puts the security headers on every answer.

Credentials: ``Authorization: Bearer <token>`` (the service token ``KAIFONG_API_TOKEN`` or a seat
token), or the ``kf_session`` cookie that ``POST /api/session`` sets (HttpOnly, SameSite=Strict;
it holds the seat's own token, or for a service-token sign-in a session minted here — never the
API token). A write carried by the cookie must also come from this origin (``Origin`` /
``Sec-Fetch-Site``): SameSite=Strict plus that check is the CSRF protection.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from kaifong.agents.core.seats import SeatBook
from kaifong.agents.web.audit import Trail
from kaifong.agents.web.identity import ANONYMOUS, DEVELOPER, SERVICE, Identity, Principal, Refusal, signing_key
from kaifong.agents.web.responses import error, json_response, read_limited, too_large
from kaifong.streams import metrics
from kaifong.streams.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Routes a Kubernetes probe calls: they carry no secret and expose nothing, so never guarded.
OPEN_ROUTES = frozenset({"/health", "/ready"})
#: The console's page and files: open to anybody (they hold no data; the page must load to
#: show its sign-in form). Credentials sent to them are ignored.
PAGE_ROUTES = frozenset({"/", "/static/{name}", "/favicon.ico"})
#: Sign in, sign out, who am I.
SESSION_ROUTE = "/api/session"
#: Alertmanager's webhook into the console (``kaifong up``'s seats point there).
HOOK_ROUTE = "/api/notifications/{seat}"
#: HTTP ingest: the service token's (upstream systems), not a seat's.
SERVICE_ROUTES = frozenset({"/api/events", "/api/events/{type}"})
#: Route label of requests that matched no route (bounded: never the raw path).
UNMATCHED = "unmatched"
#: The console's session cookie (see the module's docstring).
SESSION_COOKIE = "kf_session"
#: Where the middleware leaves the caller on the request.
PRINCIPAL_KEY = web.RequestKey("kf_principal", Principal)
READS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Largest sign-in body (``{"token": "<a JWT>"}``).
SESSION_BODY_MAX = 16 * 1024

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


def principal_of(request: web.Request) -> Principal:
    """The caller the guard found (anonymous, reads only, when no guard ran: a bare handler test)."""
    found = request.get(PRINCIPAL_KEY)
    return found if isinstance(found, Principal) else ANONYMOUS


def forbidden(code: str, message: str) -> web.Response:
    """403: a valid credential without the right (``forbidden_role``, ``out_of_scope``, …)."""
    return error(403, code, message)


def role_refusal(principal: Principal, role: str, action: str) -> str | None:
    """Why ``principal`` may not ``action`` (it needs ``role``), None when it may."""
    if principal.may(role):
        return None
    return f"{action} needs the {role} role or stronger; this credential is {principal.role or 'anonymous'}"


def _no_seats() -> SeatBook | None:
    return None


@dataclass(frozen=True)
class Guard:
    """Who may call what, decided once per request, and the request counters.

    - /health and /ready, the console's page and files: always open (no data in them);
    - a credential sent is checked (401 when invalid) — except that without a seats file a wrong
      token on a loopback read is ignored, as it always was;
    - writes (anything but GET/HEAD/OPTIONS): a credential; without a seats file and without a
      token on a loopback-only port, anybody (development, as before). HTTP ingest: the service
      token only (403 for a seat). Acknowledging and ordering drills: the handlers check role and
      jurisdiction (403);
    - reads: open on a loopback-only port (anonymous callers see the whole city; a seat sees its
      jurisdiction); beyond loopback a credential.
    """

    token: str
    loopback: bool
    identity: Identity | None = None
    #: A seats file is configured: seat tokens work and writes always need a credential.
    seats_mode: bool = False

    def __post_init__(self) -> None:
        if self.identity is None:  # built bare (tests): the service token's sessions still work
            settings = Settings(api_token=self.token)
            object.__setattr__(self, "identity", Identity(settings, _no_seats, signing_key(settings)))

    @classmethod
    def from_settings(cls, settings: Settings, seats: Callable[[], SeatBook | None] = _no_seats) -> Guard:
        """The guard for ``settings``; refuse an open port beyond loopback with no token."""
        loopback = is_loopback(settings.web_host)
        identity = Identity.from_settings(settings, seats)
        if not loopback and not settings.api_token and not (settings.seats_file and (identity.key or identity.issuers)):
            raise InsecureConfig(
                f"KAIFONG_WEB_HOST={settings.web_host} accepts connections beyond loopback but "
                "KAIFONG_API_TOKEN is empty: set a token (e.g. `openssl rand -hex 32`) or bind to 127.0.0.1")
        return cls(settings.api_token, loopback, identity, bool(settings.seats_file))

    @property
    def anonymous(self) -> Principal:
        """An anonymous caller: may write only in token-less, seat-less development."""
        return DEVELOPER if not self.token and not self.seats_mode else ANONYMOUS

    def token_matches(self, candidate: str | None) -> bool:
        """Constant-time comparison with the service token (False when either is empty)."""
        return bool(self.token and candidate) and hmac.compare_digest(str(candidate).encode(), self.token.encode())

    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None

    def resolve(self, request: web.Request) -> Principal | Refusal:
        """The caller: the bearer token's, else the session cookie's (a stale cookie is ignored),
        else anonymous; a :class:`Refusal` for a bearer token that is invalid."""
        bearer = self._bearer(request)
        if bearer is not None:
            if self.token_matches(bearer):
                return replace(SERVICE, via="bearer")
            result = (self.identity.verify(bearer, via="bearer") if self.identity is not None
                      else Refusal("the token is not the service token"))
            if isinstance(result, Principal):
                return result
            if not self.seats_mode and self.loopback and request.method in READS:
                return self.anonymous  # as before seats: a loopback read ignores a wrong token
            return result
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie and self.identity is not None:
            result = self.identity.verify(cookie, cookie=True, via="cookie")
            if isinstance(result, Principal):
                return result
        return self.anonymous

    def refusal(self, request: web.Request, route: str) -> str | None:
        """Why the request is refused with 401 (None when it may proceed); the caller is left on
        the request (:func:`principal_of`)."""
        if route in OPEN_ROUTES or route in PAGE_ROUTES:
            request[PRINCIPAL_KEY] = self.anonymous
            return None
        found = self.resolve(request)
        if isinstance(found, Refusal):
            if route == SESSION_ROUTE and request.method != "GET":
                request[PRINCIPAL_KEY] = self.anonymous  # signing in or out replaces a bad credential
                return None
            return found.reason
        request[PRINCIPAL_KEY] = found
        if request.method in READS:
            if found.kind == "anonymous" and not self.loopback and route != SESSION_ROUTE:
                return "this port is reachable beyond loopback: every request needs a credential"
            return None
        if route == HOOK_ROUTE:  # Alertmanager's webhook: the service token, or a local Alertmanager
            if found.kind == "service" or (self.loopback and is_loopback(request.remote or "")):
                return None
            return "the notification webhook takes the service token (Alertmanager's http_config authorization)"
        if route == SESSION_ROUTE or found.role is not None:
            return None
        return "writes need a credential: a seat token or the service token (the bearer token)"

    def unauthorized(self, request: web.Request, reason: str) -> web.Response:
        """401 with the ``WWW-Authenticate`` challenge (RFC 6750)."""
        challenge = 'Bearer realm="kaifong"'
        if self._bearer(request) is not None:
            challenge += ', error="invalid_token"'
        response = error(401, "unauthorized", reason,
                         hint="send 'Authorization: Bearer <token>' (a seat token or KAIFONG_API_TOKEN); "
                              "in a browser, sign in on the console")
        response.headers["WWW-Authenticate"] = challenge
        return response

    def cross_site(self, request: web.Request) -> bool:
        """A browser write from another site while no header credential protects it.

        A write with an ``Authorization`` header is safe: another origin's page cannot send one
        without a CORS preflight this server never answers. A write carried by the session
        cookie (SameSite=Strict already keeps it off cross-site requests), a sign-in, or an open
        development write is refused when its ``Origin`` is another one or ``Sec-Fetch-Site``
        says cross-site (a page on any site could otherwise POST to 127.0.0.1).
        """
        if request.method in READS or self._bearer(request) is not None:
            return False
        origin = request.headers.get("Origin")
        if origin is None:
            return request.headers.get("Sec-Fetch-Site") == "cross-site"  # else not a browser (curl)
        return origin == "null" or origin.split("://", 1)[-1].rstrip("/") != request.host

    def service_only(self, route: str, principal: Principal) -> bool:
        """HTTP ingest asked by a seat (ingest is the upstream systems' interface)."""
        return route in SERVICE_ROUTES and principal.kind == "seat"

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
                    response = forbidden("cross_origin", "writes from another origin are refused")
                elif self.service_only(route, principal_of(request)):
                    response = forbidden("service_only", "HTTP ingest takes the service token (KAIFONG_API_TOKEN), "
                                         "not a seat's")
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


def _secure(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower() == "https"


@dataclass(frozen=True)
class SessionApi:
    """``/api/session``: sign in (``POST {"token": …}``), sign out (``DELETE``), who am I (``GET``)."""

    guard: Guard
    trail: Trail

    def _answer(self, principal: Principal) -> dict[str, Any]:
        identity = self.guard.identity
        return {**principal.public(), "signed_in": principal.kind != "anonymous",
                "writes": principal.may("dispatcher"),
                "sign_in": bool(self.guard.token or (identity is not None and (identity.key or identity.issuers)))}

    async def whoami(self, request: web.Request) -> web.Response:
        """``GET /api/session``: the caller (anonymous when not signed in) and what it may do."""
        return json_response(self._answer(principal_of(request)))

    async def sign_in(self, request: web.Request) -> web.Response:
        """``POST /api/session`` with ``{"token": "…"}``: verify, set the session cookie, audit."""
        body = await read_limited(request, SESSION_BODY_MAX)
        if body is None:
            return too_large(SESSION_BODY_MAX)
        try:
            parsed = orjson.loads(body) if body.strip() else None
        except orjson.JSONDecodeError:
            parsed = None
        token = parsed.get("token") if isinstance(parsed, dict) and not set(parsed) - {"token"} else None
        if not isinstance(token, str) or not token.strip():
            return error(400, "bad_body", 'the body is {"token": "<a seat token or the service token>"}')
        identity = self.guard.identity
        found: Principal | Refusal
        if identity is not None and identity.is_service(token.strip()):
            value, expires = identity.service_session(datetime.now(UTC))
            found = replace(SERVICE, via="cookie", expires_at=expires)
        else:
            found = (identity.verify(token.strip(), via="cookie") if identity is not None
                     else Refusal("sign-in is not configured"))
            value = token.strip()
        if isinstance(found, Refusal):
            await self.trail.publish(request, ANONYMOUS, "signed_in", "refused", {}, reason=found.reason)
            metrics.HTTP_UNAUTHORIZED.labels(SESSION_ROUTE).inc()
            return self.guard.unauthorized(request, found.reason)
        subject = {k: v for k, v in (("token_id", found.token_id), ("issuer", found.issuer)) if v}
        await self.trail.publish(request, found, "signed_in", "ok", subject)
        response = json_response(self._answer(found))
        expires_at = found.expires_at or datetime.now(UTC)
        max_age = max(0, int((expires_at - datetime.now(UTC)).total_seconds()))
        response.set_cookie(SESSION_COOKIE, value, max_age=max_age, httponly=True, samesite="Strict",
                            secure=_secure(request), path="/")
        return response

    async def sign_out(self, request: web.Request) -> web.Response:
        """``DELETE /api/session``: forget the session cookie (audited when somebody was signed in)."""
        principal = principal_of(request)
        if principal.kind != "anonymous":
            subject = {k: v for k, v in (("token_id", principal.token_id), ("issuer", principal.issuer)) if v}
            await self.trail.publish(request, principal, "signed_out", "ok", subject)
        response = json_response({"signed_out": True})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: security headers on every response; live data is never cached."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
