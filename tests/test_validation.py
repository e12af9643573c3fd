"""The intake validator: one stable error class per kind of bad input, every reason listed."""

from __future__ import annotations

import orjson
import pytest

from kaifong.schemas.validation import InvalidEvent, parse

GOOD = {"event_id": "e1", "unit_id": "u1", "status": "available", "at": "2026-11-29T08:00:00+08:00", "seq": 3,
        "location": {"lat": 23.1, "lon": 113.3}}
LIMIT = 256 * 1024


def refuse(raw: bytes, name: str = "unit-status") -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse(name, raw, max_bytes=LIMIT)
    return info.value


def test_valid_event_parsed() -> None:
    assert parse("unit-status", orjson.dumps(GOOD), max_bytes=LIMIT) == GOOD


@pytest.mark.parametrize(("raw", "error_class"), [
    (b"", "empty"),
    (b"x" * (LIMIT + 1), "too_large"),
    (b"{oops", "not_json"),
    (b"\xff\xfe\x00", "not_json"),
    (b'{"seq": NaN}', "not_json"),
    (b'{"seq": Infinity}', "not_json"),
    (b"[" * 5000 + b"]" * 5000, "not_json"),
    (b'"a string"', "not_object"),
    (b"[]", "not_object"),
    (orjson.dumps({**GOOD, "status": "asleep"}), "bad_enum"),
    (orjson.dumps({**GOOD, "seq": "3"}), "wrong_type"),
    (orjson.dumps({**GOOD, "seq": -1}), "out_of_range"),
    (orjson.dumps({**GOOD, "location": {"lat": 0, "lon": 180.5}}), "out_of_range"),
    (orjson.dumps({**GOOD, "at": "2026-11-29T08:00:00"}), "bad_time"),
    (orjson.dumps({**GOOD, "at": "2026-13-29T08:00:00Z"}), "bad_time"),
    (orjson.dumps({**GOOD, "at": "yesterday"}), "bad_time"),
    (orjson.dumps({**GOOD, "colour": "red"}), "unknown_field"),
    (orjson.dumps({k: v for k, v in GOOD.items() if k != "unit_id"}), "missing_field"),
    (orjson.dumps({**GOOD, "unit_id": "has space"}), "bad_format"),
])
def test_error_classes(raw: bytes, error_class: str) -> None:
    assert refuse(raw).error_class == error_class


def test_every_reason_is_listed() -> None:
    err = refuse(orjson.dumps({**GOOD, "status": "asleep", "seq": "x", "location": {"lat": 99, "lon": 0}}))
    text = " ".join(err.reasons)
    assert len(err.reasons) == 3
    assert "status" in text and "seq" in text and "location/lat" in text


def test_boundary_coordinates_accepted() -> None:
    for lat, lon in [(90, 180), (-90, -180), (0, 0)]:
        parse("unit-status", orjson.dumps({**GOOD, "location": {"lat": lat, "lon": lon}}), max_bytes=LIMIT)


def test_huge_value_reason_is_bounded() -> None:
    err = refuse(orjson.dumps({**GOOD, "status": "x" * 100_000}))
    assert all(len(r) < 1000 for r in err.reasons)


@pytest.mark.parametrize("depth", [500, 1000])
def test_a_deeply_nested_value_is_refused_not_json_not_a_crash(depth: int) -> None:
    # The compiled schema check recursed past the stack at ~500 levels (orjson parses 1,024):
    # a RecursionError instead of a refusal (found by tests/test_fuzz.py).
    raw = (b'{"unit_id": "A", "kind": "post", "name": "x", "district": "d", "police_grid": "p", "grid": "g", '
           b'"venue": {"id": "A9", "type": "mall"}, "home": {"lat": 1, "lon": 2}, "responders": 1, '
           b'"equipment": ' + b"[" * depth + b"]" * depth + b"}")
    with pytest.raises(InvalidEvent) as refused:
        parse("unit-registered", raw, max_bytes=262_144)
    assert refused.value.error_class == "not_json"
    assert refused.value.reasons == ["a value is nested too deeply"]
