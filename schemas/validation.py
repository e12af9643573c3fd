"""kaifong.schemas.validation — parse and validate raw event bytes against the contracts.

Layer: schemas. The hot path runs a validator compiled once per schema (fastjsonschema
generates Python code from the schema); only when that rejects an event do we run the
reference validator (jsonschema, draft 2020-12) to collect *every* reason, so refusals are
complete without costing valid traffic anything.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema
import jsonschema
import orjson

#: Every event type with a published schema (file stem in ``schemas/json``).
EVENT_TYPES: tuple[str, ...] = (
    "incident-reported",
    "incident-update",
    "unit-registered",
    "unit-status",
    "drill-response",
    "assignment",
    "escalation",
    "incident-state",
    "drill-issued",
    "drill-result",
    "dead-letter",
)

#: Fields holding RFC 3339 times, checked beyond the schema's pattern (e.g. month 13).
_TIME_FIELDS = ("reported_at", "at", "issued_at", "decided_at", "raised_at", "deadline_at",
                "updated_at", "received_at")

#: Reasons collected per refused event: enough to fix it, and a hostile event (60,000 bad array
#: items) costs milliseconds instead of seconds of the reference validator.
MAX_REASONS = 20

#: The schemas' time pattern. RFC 3339 allows a lower-case "t"/"z" and (for readability) a space
#: between date and time, and so do the published schemas; Python and the compiled format check
#: want "T" and "Z", so :func:`validate` rewrites such times to that canonical form.
_TIME_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII)

# jsonschema keyword → our stable error class (the dead-letter ``error_class``).
_KEYWORD_CLASS = {
    "required": "missing_field",
    "type": "wrong_type",
    "enum": "bad_enum",
    "const": "bad_enum",
    "minimum": "out_of_range",
    "maximum": "out_of_range",
    "exclusiveMinimum": "out_of_range",
    "exclusiveMaximum": "out_of_range",
    "additionalProperties": "unknown_field",
    "maxLength": "too_long",
    "maxItems": "too_long",
    "minLength": "empty",
    "uniqueItems": "duplicate_item",
}


class InvalidEvent(ValueError):
    """An event refused at validation, with a stable class and every reason found."""

    def __init__(self, error_class: str, reasons: list[str]) -> None:
        self.error_class = error_class
        self.reasons = reasons
        super().__init__(f"{error_class}: " + "; ".join(reasons))


@dataclass(frozen=True, slots=True)
class Contract:
    """One event type: its JSON Schema and the validator compiled from it."""

    name: str
    schema: dict[str, Any]
    check: Callable[[Any], Any]
    reference: jsonschema.Draft202012Validator


def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of event type ``name``, read from the package data."""
    text = resources.files("kaifong.schemas").joinpath("json", f"{name}.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def contract(name: str) -> Contract:
    """The compiled contract of ``name`` (compiled once per process)."""
    if name not in EVENT_TYPES:
        raise KeyError(f"unknown event type {name!r}; known: {', '.join(EVENT_TYPES)}")
    schema = load_schema(name)
    return Contract(
        name=name,
        schema=schema,
        check=fastjsonschema.compile(schema, use_default=False),
        reference=jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        ),
    )


def _path(error: jsonschema.ValidationError) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(root)"


def explain(name: str, data: Any) -> list[tuple[str, str]]:
    """Every violation of ``name``'s schema in ``data`` as ``(error_class, reason)`` pairs.

    Slow (the reference interpreter); used only after the compiled check has failed.
    """
    out: list[tuple[str, str]] = []
    errors = itertools.islice(contract(name).reference.iter_errors(data), MAX_REASONS)
    for err in sorted(errors, key=lambda e: list(e.absolute_path)):
        field = str(err.absolute_path[-1]) if err.absolute_path else ""
        cls = _KEYWORD_CLASS.get(str(err.validator), "schema")
        if field in _TIME_FIELDS and err.validator in ("pattern", "format", "maxLength"):
            out.append(("bad_time", f"{_path(err)}: {str(err.instance)[:40]!r} is not an RFC 3339 time "
                        "with a UTC offset (e.g. 2026-11-29T08:00:00+08:00)"))
            continue
        elif err.validator == "pattern":
            cls = "bad_format"
        message = err.message
        if len(message) > 300:  # a huge offending value must not blow up the reason
            message = message[:300] + "…"
        out.append((cls, f"{_path(err)}: {message}"))
    return out


def _canonical_times(data: dict[str, Any]) -> None:
    # "2026-11-29t08:00:00z" / "2026-11-29 08:00:00Z" → "2026-11-29T08:00:00Z" (see _TIME_SHAPE).
    for field in _TIME_FIELDS:
        value = data.get(field)
        if (isinstance(value, str) and len(value) <= 40 and (value[10:11] != "T" or value[-1:] == "z")
                and _TIME_SHAPE.fullmatch(value)):
            data[field] = value[:10] + "T" + value[11:-1] + ("Z" if value[-1] == "z" else value[-1])


def _check_times(data: dict[str, Any]) -> list[str]:
    bad = []
    for field in _TIME_FIELDS:
        value = data.get(field)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                bad.append(f"{field}: {value[:40]!r} is not a valid RFC 3339 time")
                continue
            if parsed.tzinfo is None:
                bad.append(f"{field}: time has no UTC offset")
    return bad


def validate(name: str, data: Any) -> dict[str, Any]:
    """Validate an already-parsed event; return it or raise :class:`InvalidEvent`.

    Times written with a lower-case "t"/"z" or a space separator (RFC 3339 allows them) are
    rewritten in ``data`` to the canonical "T"/"Z" form first.

    >>> validate("incident-update", {"event_id": "e1", "incident_id": "i1",
    ...          "kind": "acknowledged", "at": "2026-11-29T08:00:00+08:00"})["kind"]
    'acknowledged'
    """
    if not isinstance(data, dict):
        raise InvalidEvent("not_object", [f"expected a JSON object, got {type(data).__name__}"])
    _canonical_times(data)
    try:
        contract(name).check(data)
    except RecursionError:  # the compiled check recurses too: ~500 levels exhaust the stack
        raise InvalidEvent("not_json", ["a value is nested too deeply"]) from None
    except fastjsonschema.JsonSchemaException:
        # The reference validator skips `format` without optional packages, so a time the
        # compiled check refused on format alone is re-checked here.
        try:
            found = explain(name, data) or [("bad_time", r) for r in _check_times(data)] or [
                ("schema", "rejected by the schema")
            ]
        except RecursionError:  # a value nested ~1,000 deep (orjson parses up to 1,024)
            found = [("not_json", "a value is nested too deeply")]
        raise InvalidEvent(found[0][0], [reason for _, reason in found]) from None
    bad_times = _check_times(data)
    if bad_times:
        raise InvalidEvent("bad_time", bad_times)
    return data


def parse(name: str, raw: bytes | None, *, max_bytes: int) -> dict[str, Any]:
    """Parse raw message bytes and validate them as event type ``name``.

    Refusals, in order: ``empty``, ``too_large``, ``not_json`` (including invalid UTF-8,
    NaN/Infinity and nesting deeper than orjson allows), ``not_object``, then the schema's
    classes (``missing_field``, ``wrong_type``, ``bad_enum``, ``out_of_range``,
    ``unknown_field``, ``bad_time`` …).
    """
    if raw is None or len(raw) == 0:
        raise InvalidEvent("empty", ["message has no value"])
    if len(raw) > max_bytes:
        raise InvalidEvent("too_large", [f"{len(raw)} bytes exceeds the limit of {max_bytes}"])
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("not_json", [str(exc)[:300]]) from None
    return validate(name, data)
