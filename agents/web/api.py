"""kaifong.agents.web.api — the JSON API on the worker's web port: the live picture, acknowledgements, routes.

Layer: agents/web. Routes are plain aiohttp routes on Faust's web application (Faust's web driver
is aiohttp; its view classes add nothing here and cannot stream). Everything is read from the
shared Redis (:class:`kaifong.agents.store.views.Views`), so any worker answers for the whole city:

- ``GET /api/incidents``, ``/api/incidents/{id}``, ``/api/units``, ``/api/escalations``,
  ``/api/geo``, ``/api/summary`` — the live picture for command centres (:class:`Api`);
- ``POST /api/escalations/{id}/ack`` — acknowledge an escalation (an ``incident-update`` on the
  updates topic; the incident's owner applies it like any other update);
- ``POST /api/drills``, ``GET /api/drills``, ``GET /api/drills/rates`` — order a manual pull test,
  the day's drills, pass rates (:mod:`kaifong.agents.web.drills_api`);
- ``POST /api/events/{type}`` (or ``?type=``) — HTTP ingest for upstream systems that cannot
  speak Kafka (:mod:`kaifong.agents.web.ingest`).

Who may call what is :class:`kaifong.agents.web.auth.Guard`'s (re-exported here); with a seats
file every handler here answers within the caller's jurisdiction (:mod:`kaifong.agents.web.identity`),
and acknowledgements are audited (:mod:`kaifong.agents.web.audit`). ``/api/session`` signs in.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from aiohttp import web

from kaifong.agents.core.clock import LEVELS, incident_of_escalation
from kaifong.agents.core.units import geo_pool
from kaifong.agents.store.views import Views
from kaifong.agents.web import auth
from kaifong.agents.web.audit import Trail
from kaifong.agents.web.auth import Guard, InsecureConfig, is_loopback
from kaifong.agents.web.drills_api import DrillsApi
from kaifong.agents.web.ingest import Ingest
from kaifong.agents.web.notifications import Notifications
from kaifong.agents.web.openapi import Limits, OpenApi
from kaifong.agents.web.responses import error, json_response, read_limited, too_large
from kaifong.agents.web.services import WebServices
from kaifong.schemas.validation import InvalidEvent, validate
from kaifong.streams import metrics
from kaifong.streams.city import BBOX, DISTRICTS, KINDS
from kaifong.streams.codec import Headers
from kaifong.streams.settings import Settings
from kaifong.streams.topics import INCIDENTS_UPDATES

__all__ = ["ROUTES", "Api", "Guard", "InsecureConfig", "is_loopback", "register"]

log = logging.getLogger(__name__)

#: Acknowledged escalations stay in ``/api/escalations`` this long (the console shows them).
RECENT_ACK = timedelta(minutes=30)
#: Local day of "today's drills": the city's time zone (UTC+8, no daylight saving).
CITY_TZ = timezone(timedelta(hours=8))
#: Largest ack request body (``{"by": "seat-id"}``).
ACK_BODY_MAX = 4096
#: Default and largest page of ``/api/units`` and ``/api/incidents``.
PAGE_DEFAULT, PAGE_MAX = 500, 5000
_LEVEL_RANK = {level: i for i, level in enumerate(LEVELS)}


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


def incident_summary(state: dict[str, Any]) -> dict[str, Any]:
    """The few fields of an incident an escalation queue shows next to it."""
    return {k: state.get(k) for k in ("incident_id", "status", "category", "severity", "reported_at",
                                       "district", "grid", "exercise", "escalation_level")}


def escalation_view(entry: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """One stored escalation as the API shows it: body, acknowledgement, incident summary."""
    return {**entry["body"], "acked_at": entry.get("acked_at"), "acked_by": entry.get("acked_by"),
            "notifications": entry.get("notifications", 0), "incident": incident_summary(state)}


def unit_view(uid: str, reg: dict[str, Any], live: dict[str, str]) -> dict[str, Any]:
    """One unit as ``/api/units`` shows it: its registry entry and its live state."""
    return {
        "unit_id": uid, "kind": reg.get("kind") or live.get("kind"), "name": reg.get("name"),
        "street": reg.get("street"), "police_grid": reg.get("police_grid"), "grid": reg.get("grid"),
        "venue": reg.get("venue"), "home": reg.get("home"), "responders": reg.get("responders"),
        "equipment": reg.get("equipment", []),
        "status": live.get("status"), "lat": float(live["lat"]) if "lat" in live else None,
        "lon": float(live["lon"]) if "lon" in live else None,
        "reserved_by": live.get("reserved_by"), "incident_id": live.get("incident_id"),
        "stale": live.get("stale") == "1",
        "seen_ms": int(live["seen_ms"]) if live.get("seen_ms") else None,
        # In the real incidents' geo index by the store's own rule (the reservation script
        # checks the heartbeat's age on top, at once).
        "dispatchable": geo_pool(live.get("kind"), live.get("status"), live.get("reserved_by"),
                                 float(live["lat"]) if "lat" in live else None,
                                 float(live["lon"]) if "lon" in live else None,
                                 live.get("stale") == "1") == "avail",
    }


@dataclass
class Api:
    """The handlers of the live picture and of acknowledgements (reads from Redis, writes through
    the worker's producer)."""

    services: WebServices
    _geo: list[dict[str, Any]] = field(default_factory=list)
    clock: Callable[[], datetime] = _now
    #: The audit trail (acknowledgements; built here, shared with the other handler groups).
    trail: Trail = field(init=False)

    def __post_init__(self) -> None:
        # An accelerated simulation runs every worker on a faster clock (``Settings.clock``):
        # acknowledgement times must be on the clock the escalations were raised on.
        factory = getattr(self.settings, "clock", None)
        if callable(factory):
            self.clock = factory()
        self.trail = Trail(self.settings, self.services.send_all, self.clock)

    @property
    def settings(self) -> Settings:
        """The worker's settings."""
        return self.services.settings

    @property
    def views(self) -> Views:
        """The read-only Redis queries."""
        return self.services.views

    # -- reads shared by several handlers and the live feed ----------------------------------
    async def available_by_district(self) -> dict[str, dict[str, int]]:
        """Dispatchable units per district and kind (every configured district, zeros included)."""
        out: dict[str, dict[str, int]] = {d: dict.fromkeys(KINDS, 0) for d in self.districts()}
        for (district, kind), n in (await self.views.available_counts()).items():
            out.setdefault(district, dict.fromkeys(KINDS, 0))[kind] = max(0, n)
        return out

    def districts(self) -> list[str]:
        """The configured districts (the only values ``/api/units`` accepts)."""
        return [d for d in self.settings.district_labels() if d != "other"]

    async def summary_doc(self) -> dict[str, Any]:
        """The counters of ``/api/summary`` (also pushed on the live feed as ``summary``)."""
        incidents = {kind: await self.views.open_count(kind == "exercise") for kind in ("real", "exercise")}
        levels = dict.fromkeys(LEVELS, 0)
        for level in await self.views.open_escalation_levels():
            levels[level] = levels.get(level, 0) + 1
        available = await self.available_by_district()
        now = self.clock()
        today = now.astimezone(CITY_TZ).date().isoformat()
        outcomes = dict.fromkeys(("pass", "late", "fail", "no_answer", "aborted"), 0)
        outcomes.update(await self.views.drill_counts(today))
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
        principal = auth.principal_of(request)
        items = []
        for doc in await self.views.incidents(await self.views.open_ids(exercise)):
            state = doc["state"]
            if state["status"] in ("resolved", "cancelled"):
                continue  # closed between the set read and the document read
            if (district and state.get("district") != district) or (grid and state.get("grid") != grid):
                continue
            if not principal.sees(state):
                continue  # outside the seat's jurisdiction
            # The report's free text rides along (the console shows it; clients must escape it).
            items.append({**state, "description": (doc.get("report") or {}).get("description")})
        items.sort(key=lambda s: (_parse_time(s["reported_at"]) or datetime.min.replace(tzinfo=UTC),
                                  s["incident_id"]), reverse=True)
        return json_response({"count": len(items), "incidents": items[:limit], "truncated": len(items) > limit})

    async def incident(self, request: web.Request) -> web.Response:
        """``GET /api/incidents/{id}``: state, report, assignments and escalations of one incident."""
        incident_id = request.match_info["id"]
        doc = await self.views.incident(incident_id) if len(incident_id) <= 200 else None
        if doc is None:
            return error(404, "not_found", "no such incident")
        state = doc["state"]
        if not auth.principal_of(request).sees(state):
            return auth.forbidden("out_of_scope", "the incident is outside this seat's jurisdiction")
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
        principal = auth.principal_of(request)
        if principal.level == "district" and not principal.covers(district, None, None):
            return auth.forbidden("out_of_scope", "the district is outside this seat's jurisdiction")
        # A street or grid seat sees the units of its streets and grids only.
        partial = not principal.everywhere and principal.level != "district"
        ids = await self.views.district_unit_ids(district)
        # Without a grid filter only the page is read; with one, the district's registry is.
        wanted = ids if grid or partial else ids[offset:offset + limit]
        regs = await self.views.registries(wanted)
        if grid or partial:
            ids = [u for u in ids if (not grid or regs.get(u, {}).get("grid") == grid)
                   and principal.covers(district, regs.get(u, {}).get("street"), regs.get(u, {}).get("grid"))]
            wanted = ids[offset:offset + limit]
        lives = await self.views.lives(wanted)
        units = [unit_view(uid, regs.get(uid, {}), live) for uid, live in zip(wanted, lives, strict=True)]
        available = (await self.available_by_district()).get(district, {})
        if partial:  # the district's counts would tell more than the seat's units
            available = dict.fromkeys(KINDS, 0)
            for uid, live in zip(ids, await self.views.lives(ids), strict=True):
                if unit_view(uid, regs.get(uid, {}), live)["dispatchable"]:
                    kind = str(regs.get(uid, {}).get("kind") or live.get("kind"))
                    available[kind] = available.get(kind, 0) + 1
        return json_response({"district": district, "total": len(ids), "offset": offset, "limit": limit,
                              "available": available, "units": units})

    async def escalations(self, request: web.Request) -> web.Response:
        """``GET /api/escalations[?district=&grid=]``: open and recently acknowledged escalations."""
        district, grid = request.query.get("district") or None, request.query.get("grid") or None
        open_escalations = await self.views.open_escalation_ids()
        # Open incidents (real and exercise) plus incidents of unacknowledged real escalations,
        # which stay open after their incident closed until someone acknowledges them.
        ids = set(await self.views.open_ids()) | {incident_of_escalation(k) for k in open_escalations}
        now = self.clock()
        open_: list[dict[str, Any]] = []
        recent: list[dict[str, Any]] = []
        principal = auth.principal_of(request)
        for doc in await self.views.incidents(ids):
            state = doc["state"]
            if (district and state.get("district") != district) or (grid and state.get("grid") != grid):
                continue
            if not principal.sees(state):
                continue  # outside the seat's jurisdiction
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
        doc = await self.views.incident(incident_id) if len(esc_id) <= 200 else None
        if doc is None or esc_id not in (doc.get("escalations") or {}):
            return error(404, "not_found", "no such escalation")
        principal = auth.principal_of(request)
        subject = {"escalation_id": esc_id, "incident_id": incident_id}
        why, code = auth.role_refusal(principal, "dispatcher", "acknowledging an escalation"), "forbidden_role"
        if why is None and not principal.sees(doc["state"]):
            why, code = "the escalation's incident is outside this seat's jurisdiction", "out_of_scope"
        if why is not None:  # refused: audited, nothing published on the updates topic
            await self.trail.publish(request, principal, "escalation_acknowledged", "refused", subject, reason=why)
            return auth.forbidden(code, why)
        if principal.seat_id is not None:
            by = principal.seat_id  # a seat acknowledges as itself, whatever the body says
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
        # The audit record goes in the same batch: one is never published without the other tried.
        audit, audit_body = self.trail.entry(request, principal, "escalation_acknowledged", "ok", subject,
                                             discriminator="")
        try:
            await self.services.send_all([(topic, incident_id.encode(), orjson.dumps(event), headers), audit])
        except Exception as exc:  # noqa: BLE001 - any producer failure: tell the caller to retry
            log.warning("ack: could not publish (%s)", type(exc).__name__)
            return error(503, "broker_unavailable", "the acknowledgement was not published; retry")
        self.trail.counted(audit_body)
        log.info("escalation acknowledgement published over HTTP")
        return json_response(event, status=202)


#: Every route of the API, (method, template, handler group, handler name): the route label set
#: is bounded. Groups: ``api`` (:class:`Api`), ``ingest`` (:class:`~kaifong.agents.web.ingest.Ingest`),
#: ``drills`` (:class:`~kaifong.agents.web.drills_api.DrillsApi`), ``openapi`` (the document of every route),
#: ``session`` (:class:`~kaifong.agents.web.auth.SessionApi`), ``notifications`` (the seats' webhook,
#: :mod:`kaifong.agents.web.notifications`).
ROUTES: tuple[tuple[str, str, str, str], ...] = (
    ("GET", "/api/incidents", "api", "incidents"),
    ("GET", "/api/incidents/{id}", "api", "incident"),
    ("GET", "/api/units", "api", "units"),
    ("GET", "/api/escalations", "api", "escalations"),
    ("POST", "/api/escalations/{id}/ack", "api", "ack"),
    ("GET", "/api/geo", "api", "geo"),
    ("GET", "/api/summary", "api", "summary"),
    ("POST", "/api/events", "ingest", "ingest"),
    ("POST", "/api/events/{type}", "ingest", "ingest"),
    ("POST", "/api/drills", "drills", "order"),
    ("GET", "/api/drills", "drills", "listing"),
    ("GET", "/api/drills/rates", "drills", "rates"),
    ("GET", "/api/session", "session", "whoami"),
    ("POST", "/api/session", "session", "sign_in"),
    ("DELETE", "/api/session", "session", "sign_out"),
    ("GET", "/api/openapi.json", "openapi", "document"),
    ("POST", "/api/notifications/{seat}", "notifications", "receive"),
    ("GET", "/api/notifications", "notifications", "listing"),
)


def register(web_app: web.Application, services: WebServices, guard: Guard | None = None) -> Api:
    """Add the ``/api/*`` routes to Faust's aiohttp application; return the live-picture handlers."""
    api = Api(services)
    guard = guard or Guard.from_settings(services.settings, services.seats)
    groups: dict[str, object] = {"api": api, "ingest": Ingest(services.settings, services.send_all),
                                 "drills": DrillsApi(services.drills, services.views, api.trail),
                                 "session": auth.SessionApi(guard, api.trail),
                                 "openapi": OpenApi(services.settings, Limits(PAGE_DEFAULT, PAGE_MAX, ACK_BODY_MAX)),
                                 "notifications": Notifications(services.settings.clock())}
    for method, path, group, name in ROUTES:
        web_app.router.add_route(method, path, getattr(groups[group], name))
        metrics.HTTP_UNAUTHORIZED.labels(path)  # the series exists (at zero) from the start
    return api
