"""Issue 10, hostile input: property-based fuzzing of every input topic's validator and of HTTP
ingest, then the same kind of traffic through a real worker.

The oracle (:func:`oracle_bytes`) decides validity on its own, from the published contract, with
tools independent of the ones kaifong uses: Python's ``json`` (not orjson), the reference
validator with ECMA-262 ``pattern`` semantics (ASCII ``\\d``, ``$`` only at the very end) and its
own RFC 3339 checker (not ``datetime.fromisoformat``). Contract decisions it encodes:

- JSON per RFC 8259 in strict UTF-8: no BOM, no NaN/Infinity (nor numbers that overflow to
  them), no lone surrogates, no nesting deeper than 1,024 levels (``not_json``);
- times are RFC 3339 with an offset: "T"/"t"/" " between date and time, "Z"/"z" or ±hh:mm with
  hh ≤ 23 and mm ≤ 59 (so +14:00 and +23:59 are valid, +24:00 is not), 1-9 fraction digits,
  real calendar dates from year 0001 to 9999; **a leap second (:60) is refused** (``bad_time``):
  Python datetimes cannot hold it, upstream systems must smear it;
- coordinates: latitude −90…90, longitude −180…180, both ends included.
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import json
import math
import random
import re
import time
import uuid
from collections import Counter
from functools import cache
from typing import Any
from unittest import mock

import jsonschema
import orjson
import pytest
from aiohttp import streams
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer

from kaifong.agents.web.ingest import Ingest
from kaifong.schemas.validation import InvalidEvent, load_schema, parse
from kaifong.streams.settings import Settings

INPUT_TYPES = ("incident-reported", "incident-update", "unit-registered", "unit-status", "drill-response")
#: Every error class a refusal may carry (README "Refusals" plus the reference fallbacks).
ERROR_CLASSES = {"empty", "too_large", "not_json", "not_object", "missing_field", "wrong_type", "bad_enum",
                 "out_of_range", "unknown_field", "bad_time", "bad_format", "too_long", "schema",
                 "duplicate_item"}
SCHEMA_CLASSES = ERROR_CLASSES - {"too_large", "not_json", "not_object"}  # "empty": minLength
DEFAULT_MAX = 256 * 1024
OUTCOMES = ("ok", "duplicate", "invalid", "refused")
FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), database=None)


# -- the oracle ----------------------------------------------------------------------------------------
_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(?:[Zz]|[+-](\d{2}):(\d{2}))",
                      re.ASCII)


def rfc3339_ok(value: str) -> bool:
    """RFC 3339 date-time with an offset, as the contract reads it (see the module docstring)."""
    m = _RFC3339.fullmatch(value)
    if m is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not (1 <= year <= 9999 and 1 <= month <= 12) or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return False
    if hour > 23 or minute > 59 or second > 59:
        return False
    off_h, off_m = m.group(8), m.group(9)
    return off_h is None or (int(off_h) <= 23 and int(off_m) <= 59)


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    if not isinstance(instance, str):
        return
    # ECMA-262 semantics: \d is ASCII only and $ matches only at the very end.
    rx = re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern, re.ASCII)
    if not rx.search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_FORMATS = jsonschema.FormatChecker(formats=())
_FORMATS.checks("date-time")(lambda value: not isinstance(value, str) or rfc3339_ok(value))
_Strict = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})


@cache
def reference(event_type: str) -> Any:
    return _Strict(load_schema(event_type), format_checker=_FORMATS)


#: Deepest nesting of arrays and objects accepted as JSON at all (more is "absurd nesting").
MAX_DEPTH = 1024


def _finite(obj: Any) -> bool:
    """No NaN/Infinity, no lone surrogate, nesting no deeper than :data:`MAX_DEPTH`."""
    stack = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in item):
            return False  # a lone surrogate (\ud800): not Unicode text (I-JSON)
        if isinstance(item, dict | list) and depth + 1 > MAX_DEPTH:
            return False
        if isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


def oracle_object(event_type: str, obj: Any) -> str | None:
    """None when ``obj`` (parsed) is a valid ``event_type``, else the stage that refuses it."""
    if not _finite(obj):
        return "not_json"
    if not isinstance(obj, dict):
        return "not_object"
    try:
        return None if reference(event_type).is_valid(obj) else "schema"
    except RecursionError:
        return "not_json"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def oracle_bytes(event_type: str, raw: bytes, max_bytes: int) -> str | None:
    """None when ``raw`` is a valid ``event_type`` message, else the stage that refuses it."""
    if not raw:
        return "empty"
    if len(raw) > max_bytes:
        return "too_large"
    try:
        text = raw.decode("utf-8")  # strict: overlongs, surrogates and stray bytes refused
        if text.startswith("\ufeff"):
            return "not_json"
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return "not_json"
    return oracle_object(event_type, obj)


def check_parse(event_type: str, raw: bytes, max_bytes: int) -> str | None:
    """Run kaifong's parser and compare it with the oracle; return the oracle's verdict."""
    expected = oracle_bytes(event_type, raw, max_bytes)
    try:
        event = parse(event_type, raw, max_bytes=max_bytes)
    except InvalidEvent as exc:  # anything else propagates: the test fails
        assert expected is not None, f"valid {event_type} refused: {exc.error_class} {exc.reasons[:3]} {raw[:300]!r}"
        assert exc.error_class in ERROR_CLASSES, exc.error_class
        # The class where only one is right (a value nested ~1,000 deep is "not_json" to the
        # oracle's parser but may be refused by type first: any class is right for those).
        if expected in ("empty", "too_large", "not_object"):
            assert exc.error_class == expected, (expected, exc.error_class, raw[:200])
        elif expected == "schema":
            assert exc.error_class in SCHEMA_CLASSES | {"not_json"}, (exc.error_class, raw[:200])
        assert exc.reasons and all(isinstance(r, str) and len(r) <= 1000 for r in exc.reasons)
        assert len(exc.reasons) <= 20
        return expected
    assert expected is None, f"invalid {event_type} ({expected}) accepted: {raw[:300]!r}"
    assert isinstance(event, dict)
    return None


# -- generators ----------------------------------------------------------------------------------------------
# Hypothesis draws the structure (shape, mutation, clean or hostile fields) and a seed; the values
# are built from a Random with that seed (a failing example is reported by its bytes). That is
# ~10x faster than a strategy per field, so 2,000 examples per input type take a few seconds.
ID_CHARS = "abcXYZ019._:-"
BAD_IDS = ["", "-lead", ".x", "a b", "a\n", "ａ1", "x" * 129, "i\u0000", "é", "a/b", "<b>", 7, None, ["a"]]
TEXTS = ["", "王小明", "13800138000", "厨房冒烟 smoke", "<script>alert(1)</script>", "\u202eRTL", "\u0000",
         "😀", "'; DROP TABLE units; --", "%s%n", "\r\n\r\nX-Injected: 1", "a\tb", "\ud800"]
COORD_EDGES = [0, -0.0, 1e-300, 85.05112878, 85.06]
CATEGORIES = ["fire", "medical", "drowning", "x_1", "a" * 32]
BAD_CATEGORIES = ["Fire", "1x", "", "a" * 33, "fire!", 3]
EQUIPMENT = ["shield", "aed", "baton", "life_buoy", "steel_fork", *(f"e{i}" for i in range(40))]


def gen_id(rnd: random.Random, clean: bool) -> Any:
    if clean or rnd.random() < 0.7:
        return rnd.choice(["a", "A", "0"]) + "".join(rnd.choice(ID_CHARS) for _ in range(rnd.randint(0, 12))) \
            if rnd.random() < 0.95 else "x" * 128
    return rnd.choice(BAD_IDS)


def gen_text(rnd: random.Random, clean: bool, max_len: int) -> Any:
    roll = rnd.random()
    if clean or roll < 0.6:
        if rnd.random() < 0.1:
            return rnd.choice("長x😀") * max_len  # exactly at the limit
        text = "".join(rnd.choice(TEXTS) for _ in range(rnd.randint(1, 3)))
        return text.replace("\ud800", "") if clean else text
    if roll < 0.8:
        return rnd.choice("長x") * (max_len + 1)
    if roll < 0.9:
        return "x" * rnd.choice([70_000, 140_000, 300_000])
    return rnd.choice([None, 1, True, ["a"], {"a": 1}])


def gen_time(rnd: random.Random, clean: bool) -> Any:
    """RFC 3339 times at every boundary; hostile ones just beyond."""
    y = rnd.choice([1, 2, 1970, 2024, 2026, 9998, 9999, rnd.randint(1, 9999)])
    mo = rnd.randint(1, 12)
    d = rnd.randint(1, 28) if rnd.random() < 0.8 else rnd.choice([29, 30, 31])
    if mo == 2 and d > 28:
        y = rnd.choice([2024, 2000, 1600])  # leap years: 29 February exists
        d = 29
    elif d == 31 and mo in (4, 6, 9, 11):
        d = 30
    h, mi, s = rnd.randint(0, 23), rnd.randint(0, 59), rnd.randint(0, 59)
    frac = "" if rnd.random() < 0.5 else "." + "123456789"[: rnd.randint(1, 9)]
    sep = rnd.choice(["T", "T", "T", "t", " "])
    off = rnd.choice(["Z", "z", "+08:00", "+14:00", "-14:00", "+14:01", "-12:00", "+23:59", "-23:59", "-00:00",
                      "+05:45"])
    if not clean and rnd.random() < 0.5:
        kind = rnd.randrange(14)
        if kind == 0:
            mo = rnd.choice([0, 13])
        elif kind == 1:
            d = rnd.choice([0, 32])
        elif kind == 2:
            mo, d, y = 2, 29, rnd.choice([2026, 1900, 2100])  # no 29 February in those years
        elif kind == 3:
            h = 24
        elif kind == 4:
            mi = 60
        elif kind == 5:
            s = rnd.choice([60, 61])  # 60: a leap second (refused: see the module docstring)
        elif kind == 6:
            off = rnd.choice(["+24:00", "-24:00", "+08:60", "+99:99"])
        elif kind == 7:
            off = rnd.choice(["", "+0800", "+08", "UTC", "+８:00", " +08:00"])
        elif kind == 8:
            y = 0
        elif kind == 9:
            frac = ".1234567890"
        elif kind == 10:
            sep = rnd.choice(["_", "", "TT"])
        elif kind == 11:
            return rnd.choice(["２０２６-11-29T08:00:00Z", "2026-11-29T08:00:00+08:00\n", "", "now", 1764374400,
                               "2026-11-29", "2026-11-29T08:00Z", "2026-11-29T08:00:00.Z"])
        elif kind == 12:
            return f"{y:05d}-{mo:02d}-{d:02d}T00:00:00Z"
        else:
            return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}{off}" + "0" * 20  # over 40 chars
    return f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{frac}{off}"


def gen_coord(rnd: random.Random, clean: bool, limit: int) -> Any:
    roll = rnd.random()
    if clean or roll < 0.7:
        if rnd.random() < 0.3:
            return rnd.choice([limit, -limit, float(limit), float(-limit)])  # both ends are valid
        return rnd.choice(COORD_EDGES) if rnd.random() < 0.2 else rnd.uniform(-limit, limit)
    return rnd.choice([limit + 1e-7, -limit - 1e-7, limit + 1, 1e308, -1e308, math.nan, math.inf, -math.inf,
                       "23.1", None, True, [1]])


def gen_int(rnd: random.Random, clean: bool, lo: int, hi: int) -> Any:
    if clean or rnd.random() < 0.7:
        return rnd.choice([lo, hi, rnd.randint(lo, hi), rnd.randint(lo, hi), float(rnd.randint(lo, min(hi, 2**52)))])
    return rnd.choice([lo - 1, hi + 1, 1.5, True, False, 2**63, 2**64, -(2**63) - 1, "1", None, math.nan])


def gen_enum(rnd: random.Random, clean: bool, good: list[str], bad: list[Any]) -> Any:
    return rnd.choice(good) if clean or rnd.random() < 0.8 else rnd.choice(bad)


def gen_equipment(rnd: random.Random, clean: bool) -> Any:
    if clean or rnd.random() < 0.6:
        return rnd.sample(EQUIPMENT, rnd.choice([0, 1, 3, 32]))
    return rnd.choice([["aed", "aed"], rnd.sample(EQUIPMENT, 33), ["BAD"], ["x" * 33], [""], ["a-b"], "aed",
                       ["aed"] * 60_000, [1]])


def gen_location(rnd: random.Random, clean: bool) -> Any:
    if not clean and rnd.random() < 0.1:
        return rnd.choice([{"lat": 23.1}, {"lat": 23.1, "lon": 113.2, "alt": 5}, [23.1, 113.2], "23.1,113.2", None])
    return {"lat": gen_coord(rnd, clean, 90), "lon": gen_coord(rnd, clean, 180)}


def gen_event(rnd: random.Random, event_type: str, clean: bool) -> dict[str, Any]:
    """One event of ``event_type``: every field valid when ``clean``, else each may be hostile."""
    def maybe() -> bool:
        return rnd.random() < 0.5

    i, t, txt, n, en = gen_id, gen_time, gen_text, gen_int, gen_enum
    e: dict[str, Any] = {}
    if event_type == "incident-reported":
        e = {"event_id": i(rnd, clean), "incident_id": i(rnd, clean),
             "category": en(rnd, clean, CATEGORIES, BAD_CATEGORIES), "severity": n(rnd, clean, 1, 4),
             "reported_at": t(rnd, clean), "location": gen_location(rnd, clean),
             "source": en(rnd, clean, ["call_110", "video", "volunteer_app", "unit_radio", "sensor"], ["pigeon", ""]),
             "exercise": rnd.choice([True, False]) if clean or maybe() else rnd.choice([0, "false", None])}
        for key, max_len in (("district", 64), ("grid", 64), ("police_grid", 64)):
            if maybe():
                e[key] = txt(rnd, clean, max_len) or "x"
        if maybe():
            e["venue_id"] = i(rnd, clean)
        if maybe():
            e["needs"] = {k: v for k, v in (("responders", n(rnd, clean, 0, 10000)),
                                            ("equipment", gen_equipment(rnd, clean))) if maybe()}
        if maybe():
            e["description"] = txt(rnd, clean, 4000)
        if maybe():
            e["caller"] = {k: v for k, v in (("phone", txt(rnd, clean, 32)), ("name", txt(rnd, clean, 128)))
                           if maybe()}
    elif event_type == "incident-update":
        e = {"event_id": i(rnd, clean), "incident_id": i(rnd, clean), "at": t(rnd, clean),
             "kind": en(rnd, clean, ["acknowledged", "en_route", "on_scene", "resolved", "cancelled",
                                     "severity_changed", "escalation_acknowledged"], ["teleported", "ACK"])}
        for key, value in (("unit_id", i(rnd, clean)), ("severity", n(rnd, clean, 1, 4)),
                           ("note", txt(rnd, clean, 2000)), ("escalation_id", i(rnd, clean)), ("by", i(rnd, clean))):
            if maybe():
                e[key] = value
    elif event_type == "unit-registered":
        e = {"unit_id": i(rnd, clean),
             "kind": en(rnd, clean, ["post", "unit", "grid_team", "street_force", "professional"], ["ufo"]),
             "name": txt(rnd, clean, 128) or "n", "district": txt(rnd, clean, 64) or "d",
             "police_grid": txt(rnd, clean, 64) or "p", "grid": txt(rnd, clean, 64) or "g",
             "venue": {"id": i(rnd, clean),
                       "type": en(rnd, clean, ["school", "mall", "hospital", "other"], ["castle"])},
             "home": gen_location(rnd, clean), "responders": n(rnd, clean, 0, 10000),
             "equipment": gen_equipment(rnd, clean)}
        for key, value in (("event_id", i(rnd, clean)), ("street", txt(rnd, clean, 64) or "s"),
                           ("at", t(rnd, clean))):
            if maybe():
                e[key] = value
    elif event_type == "unit-status":
        e = {"event_id": i(rnd, clean), "unit_id": i(rnd, clean), "at": t(rnd, clean),
             "seq": n(rnd, clean, 0, 9007199254740991),
             "status": en(rnd, clean, ["available", "dispatched", "en_route", "on_scene", "drilling", "off_duty",
                                       "out_of_service"], ["asleep"])}
        for key, value in (("location", gen_location(rnd, clean)), ("responders_on_duty", n(rnd, clean, 0, 10000)),
                           ("incident_id", i(rnd, clean))):
            if maybe():
                e[key] = value
    else:
        e = {"event_id": i(rnd, clean), "drill_id": i(rnd, clean), "unit_id": i(rnd, clean), "at": t(rnd, clean),
             "stage": en(rnd, clean, ["acknowledged", "mustered"], ["late"])}
        if maybe():
            e["headcount"] = n(rnd, clean, 0, 10000)
    return e


HOSTILE_VALUES = [None, True, 0, -1, 1.5, math.nan, math.inf, "", "x" * 5000, [], {}, [1, [2, [3]]], {"lat": 23},
                  "\ud800", 2**64]
#: Raw JSON fragments spliced in as a field value (what no Python object serialises to).
FRAGMENTS = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1e-400", b"18446744073709551616",
             b"-0", b"1.0", b"1E2", b'"\\ud800"', b'"\\udfff\\ud800"', b'"\\u0000"', b"[" * 300 + b"]" * 300,
             b"[" * 1000 + b"]" * 1000, b"[" * 1030 + b"]" * 1030, b'{"a":' * 900 + b"1" + b"}" * 900,
             b'"\xff"', b'"\xed\xa0\x80"', b'"\xc0\xaf"', b"tru", b"01", b"[1,]", b'"a" "b"']
PLACEHOLDER = "\u0001kaifong-fragment\u0001"
SEEDS = st.integers(0, 2**32 - 1)
SHAPES = ["json"] * 8 + ["encoding", "fragment", "bytes", "corrupt", "nest", "pad", "empty"]
MUTATIONS = ["none"] * 6 + ["drop", "extra", "replace", "wrap", "scalar"]


def build_object(rnd: random.Random, event_type: str, clean: bool, mutation: str) -> Any:
    """An event as a Python object: every field valid when ``clean`` (boundaries included), else
    with hostile fields; then, per ``mutation``, changed as a whole."""
    event = gen_event(rnd, event_type, clean)
    if mutation == "drop" and event:
        event.pop(rnd.choice(sorted(event)))
    elif mutation == "extra":
        event[rnd.choice(["zzz", "x" * 200, "", "event_id ", "__proto__"])] = rnd.choice(HOSTILE_VALUES)
    elif mutation == "replace" and event:
        event[rnd.choice(sorted(event))] = rnd.choice(HOSTILE_VALUES)
    elif mutation == "wrap":
        return [event]
    elif mutation == "scalar":
        return rnd.choice(HOSTILE_VALUES)
    return event


def build_message(rnd: random.Random, event_type: str, shape: str, clean: bool, mutation: str) -> bytes:
    """Message bytes: an event encoded in one of many right and wrong ways (``shape``), or junk."""
    if shape == "empty":
        return b""
    if shape == "bytes":
        return rnd.randbytes(rnd.randint(1, 300))
    obj = build_object(rnd, event_type, clean, mutation)
    if shape == "fragment" and isinstance(obj, dict) and obj:
        obj[rnd.choice(sorted(obj))] = PLACEHOLDER
        text = _dumps(obj, ensure_ascii=False)
        fragment = rnd.choice(FRAGMENTS)
        return text.encode("utf-8", errors="surrogatepass").replace(json.dumps(PLACEHOLDER).encode(), fragment)
    text = _dumps(obj, ensure_ascii=rnd.random() < 0.3)
    if shape == "encoding":
        codec = rnd.choice(["latin-1", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig", "gb18030",
                            "cp1252"])
        return text.encode(codec, errors="replace")
    raw = text.encode("utf-8", errors="surrogatepass")  # a lone surrogate becomes invalid UTF-8
    if shape == "corrupt" and raw:
        at = rnd.randrange(len(raw))
        junk = rnd.choice([b"\xff", b"\x00", b"\xc3", b"\xed\xa0\x80", b"}", b"\"", b"\\", b""])
        return raw[:at] + junk + raw[at + rnd.randint(0, 2):]
    if shape == "nest":
        depth = rnd.choice([2, 200, 1023, 1024, 1025, 5000])
        return b"[" * depth + raw + b"]" * depth
    if shape == "pad":
        return rnd.choice([b" ", b"\n", b"\t", b"\r\n"]) * rnd.randint(1, 5) + raw + b" "
    return raw


def _dumps(obj: Any, ensure_ascii: bool) -> str:
    return json.dumps(obj, ensure_ascii=ensure_ascii, allow_nan=True)


@st.composite
def event_objects(draw: Any, event_type: str) -> Any:
    return build_object(random.Random(draw(SEEDS)), event_type, draw(st.booleans()), draw(st.sampled_from(MUTATIONS)))


@st.composite
def messages(draw: Any, event_type: str) -> bytes:
    """Hypothesis chooses the shape, the mutation, clean or hostile fields and the seed."""
    return build_message(random.Random(draw(SEEDS)), event_type, draw(st.sampled_from(SHAPES)), draw(st.booleans()),
                         draw(st.sampled_from(MUTATIONS)))


# -- pure fuzz: every input topic's parser ----------------------------------------------------------------------
@pytest.mark.parametrize("event_type", INPUT_TYPES)
def test_fuzz_topic_parser(event_type: str) -> None:
    """2,000 generated messages per input type: ``parse`` raises nothing but InvalidEvent and
    accepts exactly the messages the oracle calls valid."""
    verdicts: Counter[str] = Counter()

    @FUZZ
    @given(raw=messages(event_type), small=st.booleans())
    def run(raw: bytes, small: bool) -> None:
        max_bytes = 600 if small else DEFAULT_MAX
        verdicts[check_parse(event_type, raw, max_bytes) or "valid"] += 1

    started = time.perf_counter()
    run()
    took = time.perf_counter() - started
    print(f"\n{event_type}: {sum(verdicts.values())} examples in {took:.1f}s: {dict(verdicts)}")
    assert sum(verdicts.values()) >= 2000
    # The generator reaches both sides of the contract and every refusal stage.
    assert verdicts["valid"] >= 100, verdicts
    assert {"not_json", "schema", "not_object", "too_large", "empty"} <= set(verdicts), verdicts


BOUNDARY_TIMES = {
    "2026-11-29T08:00:00+14:00": True, "2026-11-29T08:00:00-14:00": True, "2026-11-29T08:00:00+14:01": True,
    "2026-11-29T08:00:00+23:59": True, "2026-11-29T08:00:00+24:00": False, "2026-11-29T08:00:00+08:60": False,
    "0001-01-01T00:00:00Z": True, "0001-01-01T00:00:00+14:00": True, "9999-12-31T23:59:59Z": True,
    "9999-12-31T23:59:59-14:00": True, "0000-01-01T00:00:00Z": False, "2016-12-31T23:59:60Z": False,
    "2026-11-29T08:00:00": False, "2026-11-29T08:00:00+0800": False, "2026-11-29t08:00:00z": True,
    "2026-11-29 08:00:00+08:00": True, "2026-11-29T08:00:00.123456789Z": True, "2026-11-29T08:00:00.1234567890Z": False,
    "2024-02-29T00:00:00Z": True, "2026-02-29T00:00:00Z": False, "2026-11-29T08:00:00+08:00\n": False,
    "２０２６-11-29T08:00:00Z": False,
}
#: Latitude values (scaled ×2 for longitude): both ends valid, just beyond them not.
BOUNDARY_COORDS = {90: True, -90.0: True, 90.0000001: False, -90.0000001: False, -0.0: True}


def test_boundaries_explicitly() -> None:
    """The boundaries named in the contract, one by one (the fuzz draws them among others)."""
    base = {"event_id": "e1", "unit_id": "u1", "status": "available", "at": "2026-11-29T08:00:00+08:00", "seq": 1}
    for at, ok in BOUNDARY_TIMES.items():
        raw = orjson.dumps({**base, "at": at})
        assert (oracle_bytes("unit-status", raw, DEFAULT_MAX) is None) == ok, at  # the oracle reads the contract
        assert (check_parse("unit-status", raw, DEFAULT_MAX) is None) == ok, at  # ... and kaifong agrees
    for value, ok in BOUNDARY_COORDS.items():
        for axis, limit in (("lat", 90), ("lon", 180)):
            loc = {"lat": 23.0, "lon": 113.0, axis: value * limit / 90 if abs(value) >= 90 else value}
            raw = orjson.dumps({**base, "location": loc})
            assert (check_parse("unit-status", raw, DEFAULT_MAX) is None) == ok, (axis, loc)
    # Lower-case and space-separated times are accepted and handed on in the canonical form.
    event = parse("unit-status", orjson.dumps({**base, "at": "2026-11-29 08:00:00z"}), max_bytes=DEFAULT_MAX)
    assert event["at"] == "2026-11-29T08:00:00Z"
    for raw in (b"NaN", b'{"seq": NaN}', b'{"seq": Infinity}', b"\xef\xbb\xbf{}", "{}".encode("utf-16"),
                b'{"a": "\xff"}', b"[" * 1100 + b"]" * 1100,
                b'{"event_id": "e", "unit_id": "u", "status": "available", "at": "2026-11-29T08:00:00Z", "seq": 1, '
                b'"location": ' + b"[" * 1000 + b"]" * 1000 + b"}"):
        with pytest.raises(InvalidEvent) as refused:
            parse("unit-status", raw, max_bytes=DEFAULT_MAX)
        assert refused.value.error_class in ("not_json", "not_object"), raw[:80]


# -- pure fuzz: HTTP ingest, in process --------------------------------------------------------------------------
class FakeWorker:
    """What ``Ingest`` needs of a worker: settings and a producer that records."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sent: list[tuple[str, bytes | None, bytes, Any]] = []

    async def send_all(self, records: list[tuple[str, bytes | None, bytes, Any]]) -> None:
        self.sent.extend(records)


HTTP_MAX_EVENT = 3000  # a small limit keeps "too large" (limit x 100 = 300,000 bytes) cheap to reach


def http_expected(event_type: str, body: bytes, declared: int | None) -> tuple[set[int], int]:
    """The statuses the contract allows for this request, and how many events a 202 accepts."""
    limit = HTTP_MAX_EVENT * 100
    if event_type not in INPUT_TYPES:
        return {400}, 0
    if (declared is not None and declared > limit) or len(body) > limit:
        return {413}, 0
    if not body.strip():
        return {400}, 0
    try:
        top = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {400}, 0
    if isinstance(top, list):
        if not top:
            return {400}, 0
        for item in top:
            try:
                raw = orjson.dumps(item)
            except orjson.JSONEncodeError:
                return {400}, 0  # nested beyond what can be re-encoded: refused, never a 500
            if oracle_bytes(event_type, raw, HTTP_MAX_EVENT) is not None:
                return {400}, 0
        return {202}, len(top)
    return ({202}, 1) if oracle_bytes(event_type, body, HTTP_MAX_EVENT) is None else ({400}, 0)


@st.composite
def http_requests(draw: Any) -> tuple[str, bytes, int | None]:
    event_type = draw(st.sampled_from([*INPUT_TYPES, "unit-status", "", "incident-state", "../etc/passwd"]))
    et = event_type if event_type in INPUT_TYPES else "unit-status"
    shape = draw(st.sampled_from(["one", "one", "array", "array", "deep_array", "big", "declared_big", "junk"]))
    declared = None
    if shape == "one":
        body = draw(messages(et))
    elif shape == "array":
        items = draw(st.lists(event_objects(et), max_size=4))
        body = json.dumps(items, ensure_ascii=False, allow_nan=draw(st.booleans())).encode("utf-8", "surrogatepass") \
            if all(_finite(i) for i in items) else b"[" + b",".join(draw(messages(et)) for _ in items) + b"]"
    elif shape == "deep_array":
        depth = draw(st.sampled_from([100, 254, 255, 256, 300, 1000, 1023]))
        body = b"[" + b"[" * depth + b"]" * depth + b"]"
    elif shape == "big":
        body = b"[" + b" " * (HTTP_MAX_EVENT * 100 + draw(st.integers(0, 10))) + b"]"
    elif shape == "declared_big":
        body, declared = b"{}", HTTP_MAX_EVENT * 100 + 1
    else:
        body = bytes(draw(st.binary(max_size=200)))
    return event_type, body, declared


async def post(api: Ingest, event_type: str, body: bytes, declared: int | None) -> tuple[int, Any]:
    loop = asyncio.get_running_loop()
    payload = streams.StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=loop)
    payload.feed_data(body)
    payload.feed_eof()
    headers = {"Content-Length": str(declared if declared is not None else len(body)),
               "Content-Type": "application/json"}
    path = f"/api/events/{event_type}" if event_type else "/api/events"
    request = make_mocked_request("POST", path, headers=headers, match_info={"type": event_type} if event_type else {},
                                  payload=payload, loop=loop)
    response = await api.ingest(request)
    assert response.content_type == "application/json"
    return response.status, orjson.loads(response.body)  # type: ignore[arg-type]


def test_fuzz_http_ingest() -> None:
    """2,000 hostile requests to ``POST /api/events/{type}`` (in process): every answer is 202, 400
    or 413 as the contract says, with a JSON body, never an exception (a 500)."""
    worker = FakeWorker(Settings(max_event_bytes=HTTP_MAX_EVENT, topic_prefix="fz."))
    api = Ingest(worker.settings, worker.send_all)
    loop = asyncio.new_event_loop()
    statuses: Counter[int] = Counter()

    @FUZZ
    @given(request=http_requests())
    def run(request: tuple[str, bytes, int | None]) -> None:
        event_type, body, declared = request
        allowed, accepted = http_expected(event_type, body, declared)
        before = len(worker.sent)
        status, answer = loop.run_until_complete(post(api, event_type, body, declared))
        statuses[status] += 1
        assert status in allowed, (status, answer, event_type, body[:300])
        if status == 202:
            assert answer["accepted"] == accepted == len(worker.sent) - before
            assert len(answer["ids"]) == accepted
        else:
            assert len(worker.sent) == before, "nothing is sent when a request is refused"
            assert "error" in answer or "errors" in answer

    started = time.perf_counter()
    try:
        run()
    finally:
        loop.close()
    print(f"\nhttp ingest: {sum(statuses.values())} requests in {time.perf_counter() - started:.1f}s: {dict(statuses)}")
    assert sum(statuses.values()) >= 2000
    assert {202, 400, 413} <= set(statuses)


# -- integration: hostile traffic through a real worker --------------------------------------------------------------
def generate(event_type: str, count: int, tag: str) -> list[bytes]:
    """``count`` messages built like the fuzz's (a fixed seed: the same traffic every run); a
    valid event gets ids unique to the run (they still collide across topics on purpose: an
    update may name an incident reported in the same run, or parked for one that never is)."""
    rnd = random.Random(f"{event_type}-traffic")
    out: list[bytes] = []
    for n in range(count):
        raw = build_message(rnd, event_type, rnd.choice(SHAPES), rnd.random() < 0.5, rnd.choice(MUTATIONS))
        if oracle_bytes(event_type, raw, DEFAULT_MAX) is None:
            event = json.loads(raw.decode("utf-8"))
            for key in ("event_id", "incident_id", "unit_id", "drill_id"):
                if key in event:
                    event[key] = f"{tag}-{n}-{key[:2]}"
            raw = orjson.dumps(event)
        out.append(raw)
    return out


TOPIC = {"incident-reported": "incidents.reported.v1", "incident-update": "incidents.updates.v1",
         "unit-registered": "units.registry.v1", "unit-status": "units.status.v1",
         "drill-response": "drills.responses.v1"}


@pytest.mark.integration
def test_hostile_traffic_through_a_worker(new_settings: Any, start_worker: Any) -> None:
    """1,200 generated messages (valid and hostile) on each input topic, published with
    kafka-python: every message comes out as processed (ok/duplicate/refused) or dead-lettered —
    count in = count out — and the worker never stops serving."""
    started = time.perf_counter()
    settings_ = new_settings(rings="self_rescue:3600,mutual_aid:3601,grid:3602", escalation_renotify_s=3600.0,
                             early_update_hold_s=3600.0, api_token="fuzz-token", max_event_bytes=HTTP_MAX_EVENT)
    worker = start_worker(settings_)
    tag = uuid.uuid4().hex[:6]
    batches = {et: generate(et, 1200, tag) for et in INPUT_TYPES}
    generated_s = time.perf_counter() - started
    producer = KafkaProducer(bootstrap_servers=settings_.bootstrap_servers, linger_ms=20, acks="all",
                             max_request_size=4 * 1024 * 1024)
    expected_valid = dict.fromkeys(INPUT_TYPES, 0)
    sent: list[tuple[Any, bool]] = []  # (future, valid per the oracle)
    for et, raws in batches.items():
        topic = settings_.topic_prefix + TOPIC[et]
        for n, raw in enumerate(raws):
            ok = oracle_bytes(et, raw, settings_.max_event_bytes) is None
            sent.append((producer.send(topic, key=f"k{n % 97}".encode(), value=raw), ok))
            expected_valid[et] += ok
    producer.flush(60)
    coords = [(f.get(30), ok) for f, ok in sent]
    invalid_at = {(m.topic, m.partition, m.offset) for m, ok in coords if not ok}
    valid_at = {(m.topic, m.partition, m.offset) for m, ok in coords if ok}
    producer.close(10)
    total = sum(len(v) for v in batches.values())

    def counted() -> float:
        return sum(worker.metric("kaifong_events_in_total", outcome=o) for o in OUTCOMES)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and counted() < total:
        assert worker.alive(), worker.log_path.read_text("utf-8", "replace")[-3000:]
        time.sleep(0.5)
    assert counted() == total, f"count in {total} != count out {counted()}"
    per_topic: dict[str, dict[str, float]] = {}
    for et in INPUT_TYPES:
        topic = settings_.topic_prefix + TOPIC[et]
        outcomes = {o: worker.metric("kaifong_events_in_total", topic=topic, outcome=o)
                    for o in OUTCOMES}
        per_topic[et] = outcomes
        assert sum(outcomes.values()) == len(batches[et]), (et, outcomes)
        # Invalid means exactly what the oracle says is invalid.
        assert outcomes["invalid"] == len(batches[et]) - expected_valid[et], (et, outcomes, expected_valid[et])

    # The dead-letter topic, by source coordinates: at intake, exactly the messages the oracle
    # calls invalid; later stages (an update for an incident that never was, a drill response for
    # no drill…) refuse only valid messages — at least the ones counted "refused" (an update
    # parked for its report and refused when the report came was counted "ok" when parked).
    refused = sum(o["refused"] for o in per_topic.values())
    consumer = KafkaConsumer(settings_.topic_prefix + "deadletter.v1", bootstrap_servers=settings_.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=50,
                             consumer_timeout_ms=2000, max_partition_fetch_bytes=8 << 20)
    at_intake: set[tuple[str, int, int]] = set()
    later: set[tuple[str, int, int]] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (len(at_intake) < len(invalid_at) or len(later) < refused):
        for rec in consumer:
            body = orjson.loads(rec.value)
            where = (body["source_topic"], body["source_partition"], body["source_offset"])
            assert body["value_truncated"] or base64.b64decode(body["value_b64"]) is not None
            (at_intake if body["stage"] == "intake" else later).add(where)
    consumer.close()
    assert at_intake == invalid_at, (len(at_intake), len(invalid_at))
    assert later <= valid_at and len(later) >= refused, (len(later), refused)
    dead = at_intake | later
    assert worker.metric("kaifong_internal_errors_total") == 0, worker.log_path.read_text("utf-8", "replace")[-3000:]
    assert worker.alive() and worker.get("/ready")[0] == 200
    print(f"\nhostile traffic: {total} messages (generated in {generated_s:.1f}s), valid per topic "
          f"{expected_valid}; outcomes {per_topic}; dead letters {len(dead)}; "
          f"total {time.perf_counter() - started:.1f}s")

    # -- and a batch of hostile bodies over HTTP: 202, 400 or 413, never a 500 ---------------------------------
    import urllib.error
    import urllib.request
    from urllib.parse import quote

    codes: Counter[int] = Counter()
    bodies: list[tuple[str, bytes]] = []

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)
    @given(req=http_requests())
    def collect(req: tuple[str, bytes, int | None]) -> None:
        if req[2] is None:
            bodies.append((req[0], req[1]))

    collect()
    limit = settings_.max_event_bytes * 100
    too_big = 0
    for event_type, body in bodies:
        path = f"/api/events?type={quote(event_type)}"
        request = urllib.request.Request(worker.base_url + path, data=body, method="POST",
                                         headers={"Authorization": "Bearer fuzz-token",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=15) as r:
                code = r.status
                r.read()
        except urllib.error.HTTPError as e:
            code = e.code
        except (ConnectionError, urllib.error.URLError):
            # The server answers 413 and closes before the upload ends: the client may see the
            # reset instead of the answer. The worker's request counter says what it answered.
            assert len(body) > limit, (event_type, body[:200])
            too_big += 1
            continue
        codes[code] += 1
        assert code in (202, 400, 413), (code, event_type, body[:200])
    answered_413 = worker.metric("kaifong_http_requests_total", route="/api/events", code="413")
    assert answered_413 == codes[413] + too_big
    assert worker.metric("kaifong_http_requests_total", code="500") == 0
    assert codes[202] > 0 and codes[400] > 0 and answered_413 > 0
    assert worker.alive()
    print(f"http hostile bodies: {dict(codes)}")
