"""kaifong.agents.web.api — the JSON API on the worker's web port, and the guard in front of it.

Layer: agents. Routes are plain aiohttp routes on Faust's web application (Faust's web driver
is aiohttp; its view classes add nothing here and cannot stream). Everything is read from the
shared Redis, so any worker answers for the whole city:

- ``GET /api/incidents``, ``/api/incidents/{id}``, ``/api/units``, ``/api/escalations``,
  ``/api/geo``, ``/api/summary`` — the live picture for command centres;
- ``POST /api/escalations/{id}/ack`` — acknowledge an escalation (an ``incident-update`` on the
  updates topic; the incident's owner applies it like any other update);
- ``POST /api/drills``, ``GET /api/drills``, ``GET /api/drills/rates`` — order a manual pull test,
  the day's drills, pass rates (the logic is :mod:`kaifong.agents.flows.drills`'s);
- ``POST /api/events/{type}`` (or ``?type=``) — HTTP ingest for upstream systems that cannot
  speak Kafka: the same contracts as the topics, all-or-nothing per request.

:class:`Guard` is the one place that decides who may call what (bearer token, loopback rule)
and counts every request by route template; see :func:`Guard.middleware`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from kaifong.agents.core.clock import LEVELS, incident_of_escalation
from kaifong.agents.flows.incidents import incident_key
from kaifong.agents.store.units import KINDS, live_key, registry_key
from kaifong.schemas.validation import InvalidEvent, parse, validate
from kaifong.streams import metrics
from kaifong.streams.city import BBOX, DISTRICTS
from kaifong.streams.codec import Headers
from kaifong.streams.settings import Settings
from kaifong.streams.topics import INCIDENTS_UPDATES, INPUT_BY_EVENT_TYPE

if TYPE_CHECKING:
    from kaifong.agents.worker import Worker

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Routes a Kubernetes probe calls: they carry no secret and expose nothing, so never guarded.
OPEN_ROUTES = frozenset({"/health", "/ready"})
#: Route label of requests that matched no route (bounded: never the raw path).
UNMATCHED = "unmatched"
#: Cookie that lets a browser that opened the console with ``?token=`` read (never write).
CONSOLE_COOKIE = "kf_console"
#: Acknowledged escalations stay in ``/api/escalations`` this long (the console shows them).
RECENT_ACK = timedelta(minutes=30)
#: Local day of "today's drills": the city's time zone (UTC+8, no daylight saving).
CITY_TZ = timezone(timedelta(hours=8))
#: Largest ack request body (``{"by": "seat-id"}``).
ACK_BODY_MAX = 4096
#: Default and largest page of ``/api/units`` and ``/api/incidents``.
PAGE_DEFAULT, PAGE_MAX = 500, 5000
_MGET_CHUNK = 500
_LEVEL_RANK = {level: i for i, level in enumerate(LEVELS)}

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


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response (orjson; UTF-8, so Chinese names stay readable)."""
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json",
                        charset="utf-8", headers=headers)


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """A JSON error: a stable ``error`` code and a sentence for humans."""
    return json_response({"error": code, "message": message, **extra}, status=status)


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


def _as_bool(value: str | None, name: str) -> bool | None:
    if value is None or value == "":
        return None
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} must be true or false, got {value[:20]!r}")


def _as_int(value: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value[:20]!r}") from None
    if not lo <= n <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {n}")
    return n


def _parse_time(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _now() -> datetime:
    return datetime.now(UTC)


def _chunks(items: list[str], size: int = _MGET_CHUNK) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def incident_summary(state: dict[str, Any]) -> dict[str, Any]:
    """The few fields of an incident an escalation queue shows next to it."""
    return {k: state.get(k) for k in ("incident_id", "status", "category", "severity", "reported_at",
                                       "district", "grid", "exercise", "escalation_level")}


def escalation_view(entry: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """One stored escalation as the API shows it: body, acknowledgement, incident summary."""
    return {**entry["body"], "acked_at": entry.get("acked_at"), "acked_by": entry.get("acked_by"),
            "notifications": entry.get("notifications", 0), "incident": incident_summary(state)}


@dataclass
class Api:
    """The handlers of ``/api/*`` (reads from Redis, writes through the worker's producer)."""

    worker: Worker
    _geo: list[dict[str, Any]] = field(default_factory=list)
    clock: Callable[[], datetime] = _now

    def __post_init__(self) -> None:
        # An accelerated simulation runs every worker on a faster clock (``Settings.clock``):
        # acknowledgement times must be on the clock the escalations were raised on.
        factory = getattr(self.worker.settings, "clock", None)
        if callable(factory):
            self.clock = factory()

    @property
    def settings(self) -> Settings:
        """The worker's settings."""
        return self.worker.settings

    # -- Redis reads -------------------------------------------------------------------------
    def _open_key(self, kind: str) -> str:
        return f"kf:inc:open:{self.settings.topic_prefix}{kind}"

    def _esc_open_key(self) -> str:
        return f"kf:esc:open:{self.settings.topic_prefix}"

    async def open_ids(self, exercise: bool | None = None) -> list[str]:
        """Ids of open incidents: real, exercise or both (``None``)."""
        kinds = ["real", "exercise"] if exercise is None else ["exercise" if exercise else "real"]
        out: list[str] = []
        for kind in kinds:
            members: set[bytes] = await self.worker.redis.smembers(self._open_key(kind))  # type: ignore[misc,assignment]
            out += [m.decode() for m in members]
        return out

    async def load_docs(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """Stored incident documents of ``ids`` (unknown ones skipped), MGET in chunks."""
        docs: list[dict[str, Any]] = []
        for chunk in _chunks(sorted(set(ids))):
            raws = await self.worker.redis.mget([incident_key(i) for i in chunk])
            docs.extend(orjson.loads(raw) for raw in raws if raw is not None)
        return docs

    async def available_by_district(self) -> dict[str, dict[str, int]]:
        """Dispatchable units per district and kind (every configured district, zeros included)."""
        out: dict[str, dict[str, int]] = {d: dict.fromkeys(KINDS, 0) for d in self.districts()}
        for (district, kind), n in (await self.worker.store.available_counts()).items():
            out.setdefault(district, dict.fromkeys(KINDS, 0))[kind] = max(0, n)
        return out

    def districts(self) -> list[str]:
        """The configured districts (the only values ``/api/units`` accepts)."""
        return [d for d in self.settings.district_labels() if d != "other"]

    async def summary_doc(self) -> dict[str, Any]:
        """The counters of ``/api/summary`` (also pushed on the live feed as ``summary``)."""
        redis = self.worker.redis
        incidents = {kind: int(await redis.scard(self._open_key(kind)))  # type: ignore[misc,assignment]
                     for kind in ("real", "exercise")}
        levels = dict.fromkeys(LEVELS, 0)
        raw_levels: list[bytes] = await redis.hvals(self._esc_open_key())  # type: ignore[misc,assignment]
        for raw in raw_levels:
            levels[raw.decode()] = levels.get(raw.decode(), 0) + 1
        available = await self.available_by_district()
        now = self.clock()
        today = now.astimezone(CITY_TZ).date().isoformat()
        raw_drills: dict[bytes, bytes] = await redis.hgetall(f"kf:drills:today:{today}")  # type: ignore[misc,assignment]
        outcomes = dict.fromkeys(("pass", "late", "fail", "no_answer", "aborted"), 0)
        for k, v in raw_drills.items():
            try:
                outcomes[k.decode()] = int(v)
            except ValueError:
                continue  # not a count: nothing to show
        total = sum(outcomes.values())
        return {
            "now": now.isoformat(),
            # The console's countdowns run at this rate from "now" (1 except in simulations).
            "time_scale": float(getattr(self.settings, "time_scale", 1.0)),
            "incidents": {**incidents, "total": sum(incidents.values())},
            "escalations": {"open": levels, "total": sum(levels.values())},
            "units": {"available": {d: sum(k.values()) for d, k in available.items()},
                      "available_by_kind": available},
            "drills": {"date": today, "outcomes": outcomes, "total": total,
                       "pass_rate": round(outcomes["pass"] / total, 4) if total else None},
            "rings": [{"ring": r.number, "name": r.name, "target_s": r.target_s}
                      for r in self.settings.ring_table()],
        }

    # -- handlers: reads ---------------------------------------------------------------------
    async def incidents(self, request: web.Request) -> web.Response:
        """``GET /api/incidents[?district=&grid=&exercise=&limit=]``: open incidents, newest first."""
        q = request.query
        try:
            exercise = _as_bool(q.get("exercise"), "exercise")
            limit = _as_int(q.get("limit"), "limit", PAGE_DEFAULT, 1, PAGE_MAX)
        except ValueError as exc:
            return error(400, "bad_query", str(exc))
        district, grid = q.get("district") or None, q.get("grid") or None
        items = []
        for doc in await self.load_docs(await self.open_ids(exercise)):
            state = doc["state"]
            if state["status"] in ("resolved", "cancelled"):
                continue  # closed between the set read and the document read
            if (district and state.get("district") != district) or (grid and state.get("grid") != grid):
                continue
            # The report's free text rides along (the console shows it; clients must escape it).
            items.append({**state, "description": (doc.get("report") or {}).get("description")})
        items.sort(key=lambda s: (_parse_time(s["reported_at"]) or datetime.min.replace(tzinfo=UTC),
                                  s["incident_id"]), reverse=True)
        return json_response({"count": len(items), "incidents": items[:limit], "truncated": len(items) > limit})

    async def incident(self, request: web.Request) -> web.Response:
        """``GET /api/incidents/{id}``: state, report, assignments and escalations of one incident."""
        incident_id = request.match_info["id"]
        raw = await self.worker.redis.get(incident_key(incident_id)) if len(incident_id) <= 200 else None
        if raw is None:
            return error(404, "not_found", "no such incident")
        doc = orjson.loads(raw)
        state = doc["state"]
        escalations = [escalation_view(e, state) for e in doc.get("escalations", {}).values()]
        escalations.sort(key=lambda e: e["raised_at"])
        return json_response({"state": state, "report": doc.get("report") or {},
                              "assignments": doc.get("assignments") or [], "escalations": escalations})

    async def units(self, request: web.Request) -> web.Response:
        """``GET /api/units?district=…[&grid=&limit=&offset=]``: units with live status."""
        q = request.query
        district = q.get("district", "")
        known = self.districts()
        if district not in known:
            return error(400, "unknown_district", "district is required and must be a configured district",
                         districts=known)
        try:
            limit = _as_int(q.get("limit"), "limit", PAGE_DEFAULT, 1, PAGE_MAX)
            offset = _as_int(q.get("offset"), "offset", 0, 0, 10_000_000)
        except ValueError as exc:
            return error(400, "bad_query", str(exc))
        grid = q.get("grid") or None
        redis = self.worker.redis
        members: set[bytes] = await redis.smembers(f"kf:units:district:{district}")  # type: ignore[misc,assignment]
        ids = sorted(m.decode() for m in members)
        regs: dict[str, dict[str, Any]] = {}
        # Without a grid filter only the page is read; with one, the district's registry is.
        wanted = ids if grid else ids[offset:offset + limit]
        for chunk in _chunks(wanted):
            for uid, raw in zip(chunk, await redis.mget([registry_key(u) for u in chunk]), strict=True):
                if raw is not None:
                    regs[uid] = orjson.loads(raw)
        if grid:
            ids = [u for u in ids if regs.get(u, {}).get("grid") == grid]
            wanted = ids[offset:offset + limit]
        pipe = redis.pipeline(transaction=False)
        for uid in wanted:
            pipe.hgetall(live_key(uid))
        lives = await pipe.execute() if wanted else []
        units = []
        for uid, raw_live in zip(wanted, lives, strict=True):
            live = {k.decode(): v.decode() for k, v in raw_live.items()}
            reg = regs.get(uid, {})
            units.append({
                "unit_id": uid, "kind": reg.get("kind") or live.get("kind"), "name": reg.get("name"),
                "street": reg.get("street"), "police_grid": reg.get("police_grid"), "grid": reg.get("grid"),
                "venue": reg.get("venue"), "home": reg.get("home"), "responders": reg.get("responders"),
                "equipment": reg.get("equipment", []),
                "status": live.get("status"), "lat": float(live["lat"]) if "lat" in live else None,
                "lon": float(live["lon"]) if "lon" in live else None,
                "reserved_by": live.get("reserved_by"), "incident_id": live.get("incident_id"),
                "stale": live.get("stale") == "1",
                "seen_ms": int(live["seen_ms"]) if live.get("seen_ms") else None,
                # The same test the reservation script applies (minus the age check it does at once).
                "dispatchable": live.get("status") == "available" and not live.get("reserved_by")
                and live.get("stale") != "1" and "lat" in live,
            })
        available = (await self.available_by_district()).get(district, {})
        return json_response({"district": district, "total": len(ids), "offset": offset, "limit": limit,
                              "available": available, "units": units})

    async def escalations(self, request: web.Request) -> web.Response:
        """``GET /api/escalations[?district=&grid=]``: open and recently acknowledged escalations."""
        district, grid = request.query.get("district") or None, request.query.get("grid") or None
        raw_open: list[bytes] = await self.worker.redis.hkeys(self._esc_open_key())  # type: ignore[misc,assignment]
        # Open incidents (real and exercise) plus incidents of unacknowledged real escalations,
        # which stay open after their incident closed until someone acknowledges them.
        ids = set(await self.open_ids()) | {incident_of_escalation(k.decode()) for k in raw_open}
        now = self.clock()
        open_: list[dict[str, Any]] = []
        recent: list[dict[str, Any]] = []
        for doc in await self.load_docs(ids):
            state = doc["state"]
            if (district and state.get("district") != district) or (grid and state.get("grid") != grid):
                continue
            for entry in (doc.get("escalations") or {}).values():
                view = escalation_view(entry, state)
                if entry.get("acked_at") is None:
                    open_.append(view)
                else:
                    acked = _parse_time(entry["acked_at"])
                    if acked is not None and now - acked <= RECENT_ACK:
                        recent.append(view)
        # Most urgent first: highest command level, then the longest waiting.
        open_.sort(key=lambda e: (-_LEVEL_RANK.get(e["level"], 0), e["raised_at"], e["escalation_id"]))
        recent.sort(key=lambda e: e["acked_at"], reverse=True)
        counts = dict.fromkeys(LEVELS, 0)
        for e in open_:
            counts[e["level"]] = counts.get(e["level"], 0) + 1
        return json_response({"open": open_, "acknowledged": recent[:100], "counts": counts})

    async def geo(self, request: web.Request) -> web.Response:
        """``GET /api/geo``: district outlines, names, centres and available units (for the map)."""
        if not self._geo:
            self._geo = [{"code": d.code, "name": d.name, "name_en": d.name_en, "centre": list(d.centre),
                          "radius_km": d.radius_km, "outline": [list(p) for p in d.outline]} for d in DISTRICTS]
        available = await self.available_by_district()
        districts = [{**d, "available": sum(available.get(d["name"], {}).values()),
                      "available_by_kind": available.get(d["name"], dict.fromkeys(KINDS, 0))} for d in self._geo]
        return json_response({"bbox": {"lat_min": BBOX[0], "lat_max": BBOX[1], "lon_min": BBOX[2],
                                       "lon_max": BBOX[3]}, "districts": districts})

    async def summary(self, request: web.Request) -> web.Response:
        """``GET /api/summary``: open incidents, open escalations, available units, drills today."""
        return json_response(await self.summary_doc())

    # -- handlers: writes --------------------------------------------------------------------
    async def ack(self, request: web.Request) -> web.Response:
        """``POST /api/escalations/{id}/ack`` (body ``{"by": "seat-id"}``, optional): publish the
        acknowledgement to the updates topic; the incident's owner applies it."""
        esc_id = request.match_info["id"]
        body = await read_limited(request, ACK_BODY_MAX)
        if body is None:
            return too_large(ACK_BODY_MAX)
        by: Any = None
        if body.strip():
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                return error(400, "not_json", 'the body must be JSON, e.g. {"by": "seat-12"}')
            if not isinstance(parsed, dict) or set(parsed) - {"by"}:
                return error(400, "bad_body", 'the body is {"by": "<seat or role id>"} or empty')
            by = parsed.get("by")
        incident_id = incident_of_escalation(esc_id)
        raw = await self.worker.redis.get(incident_key(incident_id)) if len(esc_id) <= 200 else None
        if raw is None or esc_id not in (orjson.loads(raw).get("escalations") or {}):
            return error(404, "not_found", "no such escalation")
        event_id = "ack-" + esc_id
        if len(event_id) > 128:  # the schema's limit; a digest keeps the id deterministic
            event_id = "ack-" + hashlib.sha256(esc_id.encode()).hexdigest()
        event = {"event_id": event_id, "incident_id": incident_id, "kind": "escalation_acknowledged",
                 "escalation_id": esc_id, "by": by if by is not None else "console",
                 "at": self.clock().isoformat(timespec="milliseconds")}
        try:
            validate("incident-update", event)
        except InvalidEvent as exc:
            return json_response({"errors": [{"index": 0, "error_class": exc.error_class,
                                              "reasons": exc.reasons}]}, status=400)
        topic = INCIDENTS_UPDATES.name(self.settings)
        headers: Headers = [("content-type", b"application/json"), ("kf_via", b"http")]
        try:
            await self.worker.send_all([(topic, incident_id.encode(), orjson.dumps(event), headers)])
        except Exception as exc:  # noqa: BLE001 - any producer failure: tell the caller to retry
            log.warning("ack: could not publish (%s)", type(exc).__name__)
            return error(503, "broker_unavailable", "the acknowledgement was not published; retry")
        log.info("escalation acknowledgement published over HTTP")
        return json_response(event, status=202)

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
            await self.worker.send_all(records)
        except Exception as exc:  # noqa: BLE001 - any producer failure: tell the caller to retry
            log.warning("http ingest: could not publish %d events (%s)", len(records), type(exc).__name__)
            return error(503, "broker_unavailable", "not every event was published; retrying the request is "
                         "safe (events are deduplicated by event_id)")
        log.info("http ingest: %d %s events accepted", len(records), event_type)
        return json_response({"accepted": len(records), "topic": topic,
                              "ids": [ev.get("event_id") for ev in events]}, status=202)

    # -- handlers: drills (the logic lives in kaifong.agents.flows.drills) --------------------------
    async def order_drill(self, request: web.Request) -> web.Response:
        """``POST /api/drills``: order a manual pull test (``{"unit_id"|"grid"|"district": …,
        "channel": "radio"|"video"}``); 202 with the issued drill, 400/404/409 with reasons."""
        body = await read_limited(request, ACK_BODY_MAX)
        if body is None:
            return too_large(ACK_BODY_MAX)
        status, doc = await self.worker.drills.order(body)
        return json_response(doc, status=status)

    async def drills(self, request: web.Request) -> web.Response:
        """``GET /api/drills[?date=YYYY-MM-DD]``: the day's drills and outcome counts."""
        status, doc = await self.worker.drills.listing(request.query.get("date"))
        return json_response(doc, status=status)

    async def drill_rates(self, request: web.Request) -> web.Response:
        """``GET /api/drills/rates?by=district|grid``: drill pass rates per group."""
        status, doc = await self.worker.drills.rates(request.query.get("by"))
        return json_response(doc, status=status)


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


#: Every route of the API, (method, template, handler name): the route label set is bounded.
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/api/incidents", "incidents"),
    ("GET", "/api/incidents/{id}", "incident"),
    ("GET", "/api/units", "units"),
    ("GET", "/api/escalations", "escalations"),
    ("POST", "/api/escalations/{id}/ack", "ack"),
    ("GET", "/api/geo", "geo"),
    ("GET", "/api/summary", "summary"),
    ("POST", "/api/events", "ingest"),
    ("POST", "/api/events/{type}", "ingest"),
    ("POST", "/api/drills", "order_drill"),
    ("GET", "/api/drills", "drills"),
    ("GET", "/api/drills/rates", "drill_rates"),
)


def register(web_app: web.Application, worker: Worker) -> Api:
    """Add the ``/api/*`` routes to Faust's aiohttp application; return the handlers."""
    api = Api(worker)
    for method, path, name in ROUTES:
        web_app.router.add_route(method, path, getattr(api, name))
        metrics.HTTP_UNAUTHORIZED.labels(path)  # the series exists (at zero) from the start
    return api
