"""kaifong.agents.web.openapi — the OpenAPI 3.1 document of the worker's whole HTTP API, at ``GET /api/openapi.json``.

Layer: agents/web. Every route is one :class:`Operation` of :func:`operations` (adding a route is
adding one entry there; ``tests/test_openapi.py`` names any route of the app the table lacks). Who
may call a route (its security, the guard's 401 and 403) follows from the guard's own route sets
(:mod:`kaifong.agents.web.auth`), not from each entry; request bodies of events are the published
JSON Schemas (``schemas/json``), embedded under ``components/schemas``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from typing import Any

import orjson
from aiohttp import web

from kaifong.agents.web.auth import OPEN_ROUTES, PAGE_ROUTES, READS, SESSION_BODY_MAX, SESSION_COOKIE, SESSION_ROUTE
from kaifong.agents.web.drills_api import ORDER_BODY_MAX
from kaifong.schemas.validation import load_schema
from kaifong.streams.settings import Settings
from kaifong.streams.topics import INPUT_BY_EVENT_TYPE

#: Where the document is served (it describes itself too).
PATH = "/api/openapi.json"
#: Output schemas the answers refer to (the input ones are request bodies).
_OUTPUT_SCHEMAS = ("incident-state", "assignment")
#: The console's files ``/static/{name}`` serves (``index.html`` is served at ``/``).
STATIC_NAMES = ("console.js", "console.css", "favicon.svg")
#: The media type of every JSON body.
JSON = "application/json"


@dataclass(frozen=True)
class Limits:
    """The API's size limits that live beside their handlers (:mod:`kaifong.agents.web.api`)."""

    page_default: int
    page_max: int
    ack_body_max: int


@dataclass(frozen=True)
class Operation:
    """One route as documented: method and aiohttp template, its parameters, body and answers.

    ``answers`` maps a status to a response object, or to the name of one under
    ``components/responses``; the guard's 401 and 403 are added from its rule (:attr:`access`),
    only a handler's own 403 (a seat's role or jurisdiction) is listed here.
    """

    method: str
    path: str
    operation_id: str
    tag: str
    summary: str
    answers: Mapping[str, Any]
    description: str = ""
    params: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None

    @property
    def access(self) -> str:
        """As :meth:`~kaifong.agents.web.auth.Guard.refusal` decides: ``open`` (probes and the console's
        files: never guarded), ``read``, ``sign_in`` (writes to the session: no credential needed)
        or ``write``."""
        if self.path in OPEN_ROUTES or self.path in PAGE_ROUTES:
            return "open"
        if self.method in READS:
            return "read"
        return "sign_in" if self.path == SESSION_ROUTE else "write"


# -- building blocks ---------------------------------------------------------------------------------------------------
def ref(name: str) -> dict[str, str]:
    """A reference to ``components/schemas/<name>``."""
    return {"$ref": f"#/components/schemas/{name}"}


def json_answer(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A response object with a JSON body."""
    out: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def query(name: str, description: str, schema: dict[str, Any], *, required: bool = False) -> dict[str, Any]:
    """A query parameter."""
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def path_param(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A path parameter (always required)."""
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema or {"type": "string"}}


def obj(properties: dict[str, Any], required: tuple[str, ...] = (), description: str = "") -> dict[str, Any]:
    """An object schema (open: answers may grow fields; clients must ignore the unknown ones)."""
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    if description:
        out["description"] = description
    return out


_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_NUM = {"type": "number"}
_TIME = {"type": "string", "format": "date-time"}
_COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}}
_NOT_MODIFIED = {"description": "Not modified (the `If-None-Match` ETag matches).",
                 "headers": {"ETag": {"schema": _STR}}}
_ETAG = {"ETag": {"description": "Revalidate with `If-None-Match`.", "schema": _STR},
         "Cache-Control": {"schema": {"const": "no-cache"}}}


def operations(settings: Settings, limits: Limits) -> tuple[Operation, ...]:
    """Every route of the worker's web port, in the order the document lists them."""
    districts = [d for d in settings.district_labels() if d != "other"]
    cap = settings.max_events_per_request
    body_limit = settings.max_event_bytes * 100
    types = sorted(INPUT_BY_EVENT_TYPE)
    page = {"type": "integer", "minimum": 1, "maximum": limits.page_max, "default": limits.page_default}
    district_filter = query("district", "Only this district (e.g. 越秀区).", _STR)
    grid_filter = query("grid", "Only this grid.", _STR)
    events_body = {
        "required": True,
        "description": (f"One event, or a JSON array of 1 to {cap} events (KAIFONG_MAX_EVENTS_PER_REQUEST), of the "
                        f"type the request names; at most {body_limit} bytes (KAIFONG_MAX_EVENT_BYTES x 100), each "
                        f"event at most {settings.max_event_bytes} bytes. The schema of each type is in "
                        "`components/schemas`."),
        "content": {JSON: {"schema": {"anyOf": [
            *(ref(t) for t in types),
            {"type": "array", "minItems": 1, "maxItems": cap, "items": {"anyOf": [ref(t) for t in types]}},
        ]}}},
    }
    events_answers: dict[str, Any] = {
        "202": json_answer("Every event was valid and is on the type's input topic.", ref("Accepted")),
        "400": json_answer("Unknown type (`unknown_type`, with the known `types`), or at least one invalid event: "
                           "nothing was sent (`invalid_events`: the first reasons listed, every invalid event "
                           "counted).", {"anyOf": [ref("Error"), ref("EventRefusal")]}),
        "413": json_answer(f"The body is over {body_limit} bytes (`too_large`; the connection is closed), the "
                           f"array holds more than {cap} events (`too_many_events`) or more commas than "
                           f"{cap} events can hold (`too_many_values`): refused before any event is checked.",
                           ref("Error")),
        "503": "BrokerUnavailable",
    }
    return (
        # -- probes and metrics (server.py)
        Operation("GET", "/health", "health", "probes", "Liveness: the process serves HTTP.", {
            "200": json_answer("Alive; readiness rides along for humans.", obj(
                {"status": {"const": "ok"}, "ready": _BOOL, "uptime_s": _NUM}, ("status", "ready", "uptime_s")))}),
        Operation("GET", "/ready", "ready", "probes", "Readiness: partitions assigned, consumers joined.", {
            "200": json_answer("Ready.", ref("Readiness")),
            "503": json_answer("Not ready yet (or no longer).", ref("Readiness"))}),
        Operation("GET", "/metrics", "metrics", "probes", "Prometheus metrics of the worker and its firehose.", {
            "200": {"description": "The Prometheus text exposition (version 0.0.4).",
                    "content": {"text/plain": {"schema": _STR}}}}),
        # -- the live picture (api.py)
        Operation("GET", "/api/incidents", "listIncidents", "incidents", "Open incidents, newest first.", {
            "200": json_answer("The open incidents (their state, plus the report's free text).", obj({
                "count": _INT, "truncated": _BOOL,
                "incidents": {"type": "array", "items": obj({"description": {"type": ["string", "null"]}},
                              description="An incident-state plus the report's `description` (clients must "
                                          "escape it).")}}, ("count", "incidents", "truncated"))),
            "400": "BadQuery"},
            params=(district_filter, grid_filter,
                    query("exercise", "true: exercises only; false: real incidents only (also 1/0, yes/no).",
                          _BOOL),
                    query("limit", "Largest page.", page))),
        Operation("GET", "/api/incidents/{id}", "getIncident", "incidents",
                  "One incident: state, report, assignments and escalations.", {
            "200": json_answer("The incident.", obj({
                "state": ref("incident-state"),
                "report": obj({}, description="The report as received (incident-reported), without the "
                                              "caller's contact; {} when unknown."),
                "assignments": {"type": "array", "items": ref("assignment")},
                "escalations": {"type": "array", "items": ref("EscalationView")}},
                ("state", "report", "assignments", "escalations"))),
            "403": "OutOfScope", "404": "NotFound"},
            params=(path_param("id", "The incident id."),)),
        Operation("GET", "/api/units", "listUnits", "units", "Units of a district with their live status.", {
            "200": json_answer("A page of the district's units (sorted by id).", obj({
                "district": _STR, "total": _INT, "offset": _INT, "limit": _INT,
                "available": _COUNTS, "units": {"type": "array", "items": ref("Unit")}},
                ("district", "total", "offset", "limit", "available", "units"))),
            "400": json_answer("Missing or unknown district (`unknown_district`, with the configured `districts`), "
                               "or a bad limit/offset (`bad_query`).", ref("Error")),
            "403": "OutOfScope"},
            params=(query("district", "A configured district (KAIFONG_DISTRICTS).", {"enum": districts},
                          required=True),
                    grid_filter, query("limit", "Largest page.", page),
                    query("offset", "Units skipped.", {"type": "integer", "minimum": 0, "maximum": 10_000_000,
                                                      "default": 0}))),
        Operation("GET", "/api/escalations", "listEscalations", "escalations",
                  "Open escalations (most urgent first) and those acknowledged in the last 30 minutes.", {
            "200": json_answer("The escalation queue.", obj({
                "open": {"type": "array", "items": ref("EscalationView")},
                "acknowledged": {"type": "array", "maxItems": 100, "items": ref("EscalationView")},
                "counts": _COUNTS}, ("open", "acknowledged", "counts")))},
            params=(district_filter, grid_filter)),
        Operation("POST", "/api/escalations/{id}/ack", "ackEscalation", "escalations",
                  "Acknowledge an escalation: an `incident-update` on the updates topic.", {
            "202": json_answer("The acknowledgement as published (the incident's owner applies it).",
                               ref("incident-update")),
            "400": json_answer("Not JSON (`not_json`), not `{\"by\": …}` (`bad_body`), or an acknowledgement that "
                               "fails the incident-update schema (`errors`).",
                               {"anyOf": [ref("Error"), ref("EventErrors")]}),
            "404": "NotFound", "413": "TooLarge", "503": "BrokerUnavailable"},
            params=(path_param("id", "The escalation id."),),
            body={"required": False, "description": f"Optional, at most {limits.ack_body_max} bytes.",
                  "content": {JSON: {"schema": {
                      "type": "object", "additionalProperties": False,
                      "properties": {"by": {"type": "string", "maxLength": 64,
                                            "description": "Seat or role id (default `console`)."}}}}}}),
        Operation("GET", "/api/geo", "geo", "city", "District outlines, names, centres and available units.", {
            "200": json_answer("The map's districts.", obj({
                "bbox": obj(dict.fromkeys(("lat_min", "lat_max", "lon_min", "lon_max"), _NUM)),
                "districts": {"type": "array", "items": obj({
                    "code": _STR, "name": _STR, "name_en": _STR, "centre": {"type": "array", "items": _NUM},
                    "radius_km": _NUM, "outline": {"type": "array", "items": {"type": "array", "items": _NUM}},
                    "available": _INT, "available_by_kind": _COUNTS})}}, ("bbox", "districts")))}),
        Operation("GET", "/api/summary", "summary", "city",
                  "Open incidents, open escalations, available units, today's drills, the rings.", {
            "200": json_answer("The counters (also pushed on /api/stream as `summary`).", obj({
                "now": _TIME, "time_scale": _NUM, "incidents": _COUNTS, "escalations": {"type": "object"},
                "units": {"type": "object"}, "drills": {"type": "object"},
                "rings": {"type": "array", "items": obj({"ring": _INT, "name": _STR, "target_s": _NUM})}},
                ("now", "incidents", "escalations", "units", "drills", "rings")))}),
        # -- HTTP ingest (ingest.py)
        Operation("POST", "/api/events", "ingestEventsByQuery", "ingest",
                  "Publish events to an input topic (the type in `?type=`).", events_answers,
                  description="All or nothing: every event is checked exactly as the topic's intake checks it, "
                              "and nothing is sent unless all pass.",
                  params=(query("type", "The event type.", {"enum": types}, required=True),), body=events_body),
        Operation("POST", "/api/events/{type}", "ingestEvents", "ingest",
                  "Publish events to the input topic of `type`.", events_answers,
                  description="All or nothing: every event is checked exactly as the topic's intake checks it, "
                              "and nothing is sent unless all pass.",
                  params=(path_param("type", "The event type.", {"enum": types}),), body=events_body),
        # -- drills (drills_api.py)
        Operation("POST", "/api/drills", "orderDrill", "drills", "Order a manual pull test of one eligible unit.", {
            "202": json_answer("The drill issued.", obj({"drills": {"type": "array", "items": {"type": "object"}}},
                                                        ("drills",))),
            "400": json_answer("Not JSON or not a valid order (`not_json`, `bad_body`, with `reasons`).",
                               ref("Error")),
            "404": json_answer("No unit registered under that unit id, grid or district (`unknown_unit`, "
                               "`unknown_grid`, `unknown_district`).", ref("Error")),
            "409": json_answer("No unit of the target can be drilled now (`no_eligible_unit`, with `reasons`).",
                               ref("Error")),
            "413": "TooLarge", "503": "BrokerUnavailable"},
            body={"required": True, "description": f"Name exactly one target; at most {ORDER_BODY_MAX} bytes.",
                  "content": {JSON: {"schema": {
                      "type": "object", "additionalProperties": False,
                      "properties": {
                          **{k: {"type": "string", "minLength": 1, "maxLength": 128} for k in
                             ("unit_id", "grid", "district")},
                          "channel": {"enum": ["radio", "video"], "default": "radio"}},
                      "oneOf": [{"required": [k]} for k in ("unit_id", "grid", "district")]}}}}),
        Operation("GET", "/api/drills", "listDrills", "drills", "The drills of a local day and outcome counts.", {
            "200": json_answer("The day's drills in issue order.", obj({
                "date": {"type": "string", "format": "date"}, "outcomes": _COUNTS, "total": _INT,
                "pass_rate": {"type": ["number", "null"]}, "open": _INT,
                "drills": {"type": "array", "items": {"type": "object"}}},
                ("date", "outcomes", "total", "pass_rate", "open", "drills"))),
            "400": "BadQuery"},
            params=(query("date", "Local day (UTC+8), YYYY-MM-DD; default today.", {"type": "string",
                                                                                "format": "date"}),)),
        Operation("GET", "/api/drills/rates", "drillRates", "drills", "Drill pass rates per district or grid.", {
            "200": json_answer("Pass rate per group (aborted drills excluded).", obj({
                "by": {"enum": ["district", "grid"]},
                "groups": {"type": "object", "additionalProperties": obj({
                    "pass_rate": {"type": ["number", "null"]}, "drills": _INT, "outcomes": _COUNTS})}},
                ("by", "groups"))),
            "400": "BadQuery"},
            params=(query("by", "The grouping.", {"enum": ["district", "grid"]}, required=True),)),
        # -- sign-in (auth.py)
        Operation("GET", SESSION_ROUTE, "whoami", "session", "Who the caller is and what it may do.", {
            "200": json_answer("The caller (anonymous when not signed in).", ref("Session"))}),
        Operation("POST", SESSION_ROUTE, "signIn", "session", "Sign in: verify a token, set the session cookie.", {
            "200": json_answer("Signed in (audited).", ref("Session"), {"Set-Cookie": {
                "description": f"`{SESSION_COOKIE}=…; HttpOnly; SameSite=Strict; Path=/`", "schema": _STR}}),
            "400": json_answer('The body is not `{"token": "…"}` (`bad_body`).', ref("Error")),
            "401": "Unauthorized", "413": "TooLarge"},
            description="A bad credential sent along is ignored here: signing in replaces it.",
            body={"required": True, "description": f"At most {SESSION_BODY_MAX} bytes (a token never goes in a "
                                                   "URL).",
                  "content": {JSON: {"schema": {
                      "type": "object", "additionalProperties": False, "required": ["token"],
                      "properties": {"token": {"type": "string", "minLength": 1,
                                               "description": "A seat's token or the service token."}}}}}}),
        Operation("DELETE", SESSION_ROUTE, "signOut", "session", "Sign out: forget the session cookie.", {
            "200": json_answer("Signed out (audited when somebody was signed in).",
                               obj({"signed_out": {"const": True}}, ("signed_out",)))}),
        # -- the live feed (live.py)
        Operation("GET", "/api/stream", "stream", "live", "The live feed (Server-Sent Events).", {
            "200": {"description": "`event: ready` once positioned, then `state`, `escalation`, `assignment`, "
                                   "`ack` and `summary` events with JSON data; a comment every 15 s.",
                    "content": {"text/event-stream": {"schema": _STR}}},
            "503": json_answer("Too many live clients on this worker (`busy`).", ref("Error"),
                               {"Retry-After": {"schema": _INT}})}),
        # -- the seats' webhook (notifications.py)
        Operation("POST", "/api/notifications/{seat}", "receiveNotification", "notifications",
                  "Alertmanager's webhook for a seat (what `kaifong up`'s seats point at).", {
            "200": json_answer("Kept for the console.", obj({"received": _INT}, ("received",))),
            "400": json_answer("Not an Alertmanager webhook notification (`not_json`, `bad_body`, `bad_seat`).",
                               ref("Error")),
            "413": "TooLarge"},
            description="Open to a local Alertmanager on a loopback-only port; otherwise the service token "
                        "(Alertmanager's `http_config.authorization`). Production seats use their own receivers.",
            params=(path_param("seat", "The seat id."),),
            body={"required": True, "description": "An Alertmanager webhook notification (version 4), at most 256 KiB.",
                  "content": {JSON: {"schema": {"type": "object", "required": ["alerts"],
                                                "properties": {"alerts": {"type": "array"}}}}}}),
        Operation("GET", "/api/notifications", "listNotifications", "notifications",
                  "What each seat's webhook received, newest first (a seat sees its own).", {
            "200": json_answer("The last 200 notifications.", obj({"notifications": {"type": "array", "items": obj({
                "seat": _STR, "received_at": _STR, "status": _STR, "group": {"type": "object"},
                "alerts": {"type": "array"}})}}, ("notifications",)))},
            params=(query("seat", "Only this seat's.", _STR),)),
        # -- this document
        Operation("GET", PATH, "openapi", "meta", "This document.", {
            "200": json_answer("The OpenAPI 3.1 document of the worker's HTTP API.", {"type": "object"})}),
        # -- the console (server.py)
        Operation("GET", "/", "console", "console", "The command-centre console.", {
            "200": {"description": f"The console page (it signs in with `POST {SESSION_ROUTE}`; a `?token=` in "
                                   "the address is ignored).", "headers": _ETAG,
                    "content": {"text/html": {"schema": _STR}}},
            "304": _NOT_MODIFIED}),
        Operation("GET", "/static/{name}", "consoleAsset", "console", "One of the console's files.", {
            "200": {"description": "The file.", "headers": _ETAG,
                    "content": {t: {"schema": _STR} for t in ("text/javascript", "text/css", "image/svg+xml")}},
            "304": _NOT_MODIFIED,
            "404": {"description": "No such file.", "content": {"text/plain": {"schema": _STR}}}},
            params=(path_param("name", "The file name.", {"enum": list(STATIC_NAMES)}),)),
        Operation("GET", "/favicon.ico", "favicon", "console", "The console's icon (SVG).", {
            "200": {"description": "The icon.", "headers": _ETAG, "content": {"image/svg+xml": {"schema": _STR}}},
            "304": _NOT_MODIFIED}),
    )


def _components() -> dict[str, Any]:
    error_body = obj({"error": {"type": "string", "description": "A stable code."},
                      "message": {"type": "string", "description": "A sentence for humans."}},
                     ("error", "message"), "Every refusal: a stable code, a sentence, and fields the code adds "
                                           "(`reasons`, `types`, `districts`, `limit`, `hint`…).")
    event_error = obj({"index": _INT, "error_class": _STR, "reasons": {"type": "array", "items": _STR}},
                      ("index", "error_class", "reasons"), "One invalid event: its index in the request, a stable "
                                                           "class (as on the dead-letter topic), the reasons.")
    schemas: dict[str, Any] = {
        "Error": error_body,
        "EventError": event_error,
        "EventErrors": obj({"errors": {"type": "array", "items": ref("EventError")}}, ("errors",)),
        "EventRefusal": {"allOf": [ref("Error"), obj({
            "errors": {"type": "array", "maxItems": 50, "items": ref("EventError"),
                       "description": "The first invalid events by index (at most 50, reasons cut to 300 "
                                      "characters; the body stays under 64 KiB)."},
            "invalid": {"type": "integer", "description": "Invalid events, all counted."},
            "events": {"type": "integer", "description": "Events in the request."},
            "accepted": {"const": 0},
            "errors_truncated": {"type": "boolean", "description": "Fewer listed than invalid."}},
            ("errors", "invalid", "events", "accepted", "errors_truncated"))]},
        "Accepted": obj({"accepted": _INT, "topic": _STR, "ids": {"type": "array", "items": _STR}},
                        ("accepted", "topic", "ids")),
        "Session": obj({"principal": _STR, "seat": {"type": ["string", "null"]},
                        "role": {"type": ["string", "null"]}, "level": {"type": ["string", "null"]},
                        "name": {"type": ["string", "null"]}, "jurisdiction": {"type": "object"},
                        "expires_at": {"type": ["string", "null"]}, "via": {"type": ["string", "null"]},
                        "signed_in": _BOOL, "writes": _BOOL, "sign_in": _BOOL},
                       ("principal", "signed_in", "writes", "sign_in"),
                       "The caller (never its credential): `writes` says whether it may write, `sign_in` "
                       "whether signing in is configured."),
        "Readiness": obj({"ready": _BOOL, "ready_after_s": {"type": ["number", "null"]}}, ("ready", "ready_after_s")),
        "Unit": obj({"unit_id": _STR, "kind": {"type": ["string", "null"]}, "name": {"type": ["string", "null"]},
                     "status": {"type": ["string", "null"]}, "lat": {"type": ["number", "null"]},
                     "lon": {"type": ["number", "null"]}, "reserved_by": {"type": ["string", "null"]},
                     "incident_id": {"type": ["string", "null"]}, "stale": _BOOL,
                     "seen_ms": {"type": ["integer", "null"]}, "dispatchable": _BOOL},
                    ("unit_id", "stale", "dispatchable"), "A registry entry and its live state."),
        "EscalationView": obj({"escalation_id": _STR, "incident_id": _STR, "level": _STR, "raised_at": _TIME,
                               "acked_at": {"type": ["string", "null"]}, "acked_by": {"type": ["string", "null"]},
                               "notifications": _INT, "incident": {"type": "object"}},
                              ("escalation_id", "incident_id", "level", "raised_at"),
                              "An escalation as published (escalation schema), its acknowledgement and a summary "
                              "of its incident."),
    }
    for name in (*sorted(INPUT_BY_EVENT_TYPE), *_OUTPUT_SCHEMAS):
        schemas[name] = load_schema(name)
    responses = {
        "BadQuery": json_answer("A bad query parameter (`bad_query`).", ref("Error")),
        "NotFound": json_answer("No such resource (`not_found`).", ref("Error")),
        "TooLarge": json_answer("The body is over the route's limit (`too_large`; the connection is closed).",
                                ref("Error")),
        "BrokerUnavailable": json_answer("The broker did not take the record(s) (`broker_unavailable`): retrying "
                                         "is safe, events are deduplicated by id.", ref("Error")),
        "Unauthorized": json_answer("No valid credentials (`unauthorized`).", ref("Error"), {
            "WWW-Authenticate": {"description": "`Bearer realm=\"kaifong\"` (RFC 6750).", "schema": _STR}}),
        "Forbidden": json_answer("A browser write from another origin without a header credential "
                                 "(`cross_origin`), HTTP ingest with a seat's token (`service_only`), or a seat "
                                 "without the role or the jurisdiction (`forbidden_role`, `out_of_scope`).",
                                 ref("Error")),
        "CrossOrigin": json_answer("A browser request from another origin (`cross_origin`).", ref("Error")),
        "OutOfScope": json_answer("Outside the seat's jurisdiction (`out_of_scope`).", ref("Error")),
    }
    security = {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "The service token (KAIFONG_API_TOKEN) or a seat's token."},
        "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE,
                    "description": f"Set by `POST {SESSION_ROUTE}` (HttpOnly, SameSite=Strict); a write it "
                                   "carries must come from this origin."},
    }
    return {"schemas": schemas, "responses": responses, "securitySchemes": security}


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "tags": [op.tag], "summary": op.summary}
    if op.description:
        out["description"] = op.description
    if op.params:
        out["parameters"] = list(op.params)
    if op.body is not None:
        out["requestBody"] = op.body
    answers = dict(op.answers)
    # Who may call it, by the guard's rule: probes and the console's files never need a credential;
    # reads are open on a loopback-only port (else a token or the session cookie); writes need one
    # unless neither a token nor a seats file is configured (development, loopback only).
    if op.access == "open":
        out["security"] = []
    elif op.access == "sign_in":
        out["security"] = []
        answers.setdefault("403", "CrossOrigin")
    else:
        out["security"] = [{"bearer": []}, {"session": []}, {}]
        answers.setdefault("401", "Unauthorized")
        if op.access == "write":
            answers.setdefault("403", "Forbidden")
    out["responses"] = {status: {"$ref": f"#/components/responses/{a}"} if isinstance(a, str) else a
                        for status, a in sorted(answers.items())}
    return out


def _version() -> str:
    try:
        return metadata.version("kaifong")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "0+unknown"


def document(settings: Settings, limits: Limits) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the worker's HTTP API under ``settings``."""
    paths: dict[str, dict[str, Any]] = {}
    for op in operations(settings, limits):
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "kaifong worker HTTP API",
            "version": _version(),
            "summary": "The live picture, acknowledgements, drills, HTTP ingest, the live feed and the console.",
            "description": (
                "Served by every worker on KAIFONG_WEB_HOST:KAIFONG_WEB_PORT; any worker answers for the whole "
                "city. The probes and the console's page and files are never guarded. A credential is "
                "`Authorization: Bearer <token>` (the service token KAIFONG_API_TOKEN or a seat's token) or the "
                f"`{SESSION_COOKIE}` cookie `POST {SESSION_ROUTE}` sets. Writes need one, unless neither a token "
                "nor a seats file is configured (development: the port must then be loopback-only); reads are "
                "open on a loopback-only port, beyond loopback they need one. A seat sees and acts within its "
                "jurisdiction. Every refusal is JSON with a stable `error` code and a `message` (invalid events "
                "add their reasons); `/api/*` answers are never cached."),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/", "description": "The worker that serves this document."},
                    {"url": "http://{host}:{port}", "description": "A worker's web port.",
                     "variables": {"host": {"default": settings.web_host},
                                   "port": {"default": str(settings.web_port)}}}],
        "security": [{"bearer": []}, {"session": []}, {}],
        "tags": [{"name": t} for t in dict.fromkeys(op.tag for op in operations(settings, limits))],
        "paths": paths,
        "components": _components(),
    }


@dataclass
class OpenApi:
    """``GET /api/openapi.json``: the document, built once (the settings do not change)."""

    settings: Settings
    limits: Limits

    @cached_property
    def body(self) -> bytes:
        """The document, encoded."""
        return orjson.dumps(document(self.settings, self.limits))

    async def document(self, request: web.Request) -> web.Response:
        """``GET /api/openapi.json``."""
        return web.Response(body=self.body, content_type=JSON, charset="utf-8")
