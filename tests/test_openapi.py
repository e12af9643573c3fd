"""The OpenAPI 3.1 document of the web port: valid, complete (every route of the app built the way
the server builds it, and nothing the app lacks), served at ``GET /api/openapi.json``."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from kaifong.agents.web import api, openapi, server
from kaifong.agents.web.services import WebServices
from kaifong.schemas.validation import load_schema
from kaifong.streams.app import create_app
from kaifong.streams.settings import Settings
from kaifong.streams.topics import INPUT_BY_EVENT_TYPE

#: aiohttp answers HEAD wherever it serves GET (``add_get``): documented with the GET.
IMPLIED = {"HEAD": "GET"}


def build_app(tmp_path: Path) -> tuple[Any, Settings]:
    """The worker's Faust app with every HTTP endpoint, registered as the worker does (no broker,
    no Redis: the services are never called here)."""
    settings = Settings(topic_prefix="oa.", app_id="kf-openapi", data_dir=str(tmp_path))
    app = create_app(settings, web_router_enabled=False, web_tables_enabled=False, web_graph_enabled=False,
                     web_stats_enabled=False)

    async def send_all(records: Any) -> None:
        raise AssertionError("nothing is sent")

    # Every field the web room may be given, with an inert value (a new field does not break this).
    given: dict[str, Any] = {"settings": settings, "send_all": send_all, "is_ready": lambda: True,
                             "started_monotonic": time.monotonic(), "ready_after_s": lambda: None}
    required = {f.name: None for f in dataclasses.fields(WebServices)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    server.register(app, WebServices(**{**required, **given}))
    return app, settings


def app_routes(web_app: web.Application) -> set[tuple[str, str]]:
    """``(method, template)`` of every route of the app (HEAD folded into its GET)."""
    routes = {(r.method, r.resource.canonical) for r in web_app.router.routes() if r.resource is not None}
    return {(m, p) for m, p in routes if not (m in IMPLIED and (IMPLIED[m], p) in routes)}


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """``(method, path)`` of every operation of the document."""
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item
            if method in ("get", "put", "post", "delete", "options", "head", "patch", "trace")}


@pytest.fixture
def built(tmp_path: Path) -> tuple[Any, Settings, dict[str, Any]]:
    """The app, its settings and the document its ``/api/openapi.json`` handler serves."""
    app, settings = build_app(tmp_path)
    served = app.web.web_app
    handler = next(r.handler for r in served.router.routes()
                   if r.resource is not None and r.resource.canonical == openapi.PATH)
    return app, settings, orjson.loads(handler.__self__.body)


def test_document_is_valid_openapi_31(built: tuple[Any, Settings, dict[str, Any]]) -> None:
    _, _, doc = built
    assert doc["openapi"].startswith("3.1.")
    validate(doc, cls=OpenAPIV31SpecValidator)
    schemes = doc["components"]["securitySchemes"]
    assert (schemes["bearer"]["type"], schemes["bearer"]["scheme"]) == ("http", "bearer")
    assert schemes["session"]["in"] == "cookie"


def test_every_route_of_the_app_is_documented_and_nothing_else(built: tuple[Any, Settings, dict[str, Any]]) -> None:
    app, _, doc = built
    routes, paths = app_routes(app.web.web_app), documented(doc)
    missing = sorted(routes - paths)
    assert not missing, f"routes of the app missing from agents/web/openapi.py operations(): {missing}"
    extra = sorted(paths - routes)
    assert not extra, f"documented but not routes of the app: {extra}"
    # Every route of the API table is among them (and so documented).
    assert {(m, p) for m, p, _, _ in api.ROUTES} <= routes


def test_every_operation_answers_errors_in_the_error_shape(built: tuple[Any, Settings, dict[str, Any]]) -> None:
    _, _, doc = built
    responses = doc["components"]["responses"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["responses"], (method, path)
            for status, given in op["responses"].items():
                answer = responses[given["$ref"].rsplit("/", 1)[-1]] if "$ref" in given else given
                schema = answer.get("content", {}).get("application/json", {}).get("schema")
                if status.startswith(("4", "5")) and schema is not None and path != "/ready":
                    refs = [schema.get("$ref")] + [s.get("$ref") for s in schema.get("anyOf", [])]
                    assert "#/components/schemas/Error" in refs, (method, path, status, schema)
            if op["security"]:  # guarded: the guard's 401 is documented
                assert "401" in op["responses"], (method, path)


def test_auth_as_the_guard_decides(built: tuple[Any, Settings, dict[str, Any]]) -> None:
    _, _, doc = built
    paths = doc["paths"]
    for probe in ("/health", "/ready", "/", "/static/{name}", "/favicon.ico"):
        assert paths[probe]["get"]["security"] == [], probe
    assert paths["/metrics"]["get"]["security"] == [{"bearer": []}, {"session": []}, {}]
    for method, path in (("post", "/api/events/{type}"), ("post", "/api/escalations/{id}/ack"),
                         ("post", "/api/drills")):
        assert {"401", "403"} <= set(paths[path][method]["responses"]), (method, path)
    assert "401" in paths["/api/incidents"]["get"]["responses"]


def test_event_bodies_are_the_published_schemas(built: tuple[Any, Settings, dict[str, Any]]) -> None:
    _, settings, doc = built
    schemas = doc["components"]["schemas"]
    for event_type in INPUT_BY_EVENT_TYPE:
        assert schemas[event_type] == load_schema(event_type)
    for path in ("/api/events", "/api/events/{type}"):
        op = doc["paths"][path]["post"]
        *singles, array = op["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
        assert {r["$ref"].rsplit("/", 1)[-1] for r in singles} == set(INPUT_BY_EVENT_TYPE)
        assert array["maxItems"] == settings.max_events_per_request
        [param] = op["parameters"]
        assert param["schema"]["enum"] == sorted(INPUT_BY_EVENT_TYPE)
        assert {"202", "400", "413", "503"} <= set(op["responses"])
    units = doc["paths"]["/api/units"]["get"]["parameters"]
    assert next(p for p in units if p["name"] == "district")["schema"]["enum"] == [
        d for d in settings.district_labels() if d != "other"]
    static = doc["paths"]["/static/{name}"]["get"]["parameters"][0]["schema"]["enum"]
    assert set(static) == set(server.STATIC_TYPES) - {"index.html"}
    limit = next(p for p in doc["paths"]["/api/incidents"]["get"]["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["default"], limit["schema"]["maximum"]) == (api.PAGE_DEFAULT, api.PAGE_MAX)


# auth.py keeps the caller under a str request key, which aiohttp warns about (an error here): not
# this test's subject.
@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")
def test_served_at_api_openapi_json(built: tuple[Any, Settings, dict[str, Any]]) -> None:
    app, settings, doc = built
    answers: list[tuple[int, str, Any]] = []

    async def main() -> None:
        async with TestClient(TestServer(app.web.web_app)) as client:
            resp = await client.get(openapi.PATH)
            answers.append((resp.status, resp.headers["Content-Type"], await resp.json()))

    asyncio.run(main())
    [(status, content_type, served)] = answers
    assert status == 200 and content_type.startswith("application/json")
    assert served == doc == openapi.document(settings, openapi.Limits(api.PAGE_DEFAULT, api.PAGE_MAX,
                                                                      api.ACK_BODY_MAX))
