"""The JSON Schemas and the Python records agree, both ways, on valid and invalid samples."""

from __future__ import annotations

import dataclasses
import typing
from datetime import datetime
from typing import Any

import jsonschema
import pytest

from kaifong.schemas.records import RECORDS
from kaifong.schemas.validation import EVENT_TYPES, InvalidEvent, load_schema, validate

T = "2026-11-29T14:00:00+08:00"
LOC = {"lat": 23.12, "lon": 113.26}

#: A full valid sample (every optional field set) per event type.
SAMPLES: dict[str, dict[str, Any]] = {
    "incident-reported": {"event_id": "e1", "incident_id": "i1", "category": "fire", "severity": 1,
                          "reported_at": T, "location": LOC, "district": "越秀区", "grid": "G1",
                          "police_grid": "PG1", "venue_id": "V1", "source": "video", "exercise": True,
                          "needs": {"responders": 5, "equipment": ["extinguisher"]}, "description": "烟",
                          "caller": {"phone": "110", "name": "n"}},
    "incident-update": {"event_id": "e2", "incident_id": "i1", "kind": "severity_changed", "unit_id": "u1",
                        "severity": 2, "at": T, "note": "n", "escalation_id": "i1:r1:deadline:0",
                        "by": "seat-7"},
    "unit-registered": {"event_id": "e3", "unit_id": "u1", "kind": "post", "name": "岗", "district": "天河区",
                        "street": "S1", "police_grid": "PG1", "grid": "G1", "venue": {"id": "V1", "type": "mall"},
                        "home": LOC, "responders": 4, "equipment": ["shield"], "at": T},
    "unit-status": {"event_id": "e4", "unit_id": "u1", "status": "en_route", "location": LOC,
                    "responders_on_duty": 3, "incident_id": "i1", "at": T, "seq": 9},
    "drill-response": {"event_id": "e5", "drill_id": "d1", "unit_id": "u1", "stage": "mustered",
                       "headcount": 5, "at": T},
    "assignment": {"assignment_id": "a1", "incident_id": "i1", "ring": 2, "attempt": 0,
                   "units": [{"unit_id": "u1", "kind": "unit", "distance_m": 10.5, "eta_s": 30.0,
                              "responders": 5, "rank": 1, "equipment": ["aed"]}],
                   "shortfall": {"responders": 2, "equipment": ["aed"]}, "decided_at": T, "reason": "shortfall",
                   "exercise": False},
    "escalation": {"escalation_id": "x1", "incident_id": "i1", "ring": 1, "level": "street",
                   "reason": "ring_deadline_missed", "deadline_at": T, "raised_at": T, "breached_by_s": 0.4,
                   "attempt": 0, "exercise": False, "district": "越秀区", "grid": "G1", "notification": 0},
    "incident-state": {"incident_id": "i1", "version": 3, "status": "en_route", "category": "fire", "severity": 1,
                       "reported_at": T, "updated_at": T, "location": LOC, "district": "越秀区", "grid": "G1",
                       "source": "call_110", "exercise": False,
                       "rings": [{"ring": 1, "name": "self_rescue", "target_s": 60, "deadline_at": T,
                                  "state": "met", "seconds": 42.0, "units": ["u1"]}],
                       "units": [{"unit_id": "u1", "ring": 1, "status": "on_scene"}], "escalation_level": "grid"},
    "drill-issued": {"drill_id": "d1", "unit_id": "u1", "channel": "video", "issued_at": T, "ack_target_s": 60,
                     "muster_target_s": 180, "expected_headcount": 5, "reason": "manual", "district": "越秀区",
                     "grid": "G1"},
    "drill-result": {"drill_id": "d1", "unit_id": "u1", "channel": "radio", "issued_at": T, "outcome": "late",
                     "ack_s": 70.0, "muster_s": 200.0, "headcount": 5, "decided_at": T, "district": "越秀区",
                     "grid": "G1"},
    "dead-letter": {"source_topic": "t", "source_partition": 0, "source_offset": 7, "stage": "intake",
                    "error_class": "not_json", "error": "bad", "key_b64": None, "value_b64": "e30=",
                    "value_size": 2, "value_truncated": False, "value_sha256": "0" * 64, "received_at": T},
}


def _record_fields(record: type) -> tuple[set[str], set[str]]:
    """(all fields, required fields) of a Faust record."""
    fields = record._options.fields  # type: ignore[attr-defined]
    defaults = record._options.defaults  # type: ignore[attr-defined]
    return set(fields), {f for f in fields if f not in defaults}


def test_every_event_type_has_schema_record_and_sample() -> None:
    assert set(EVENT_TYPES) == set(RECORDS) == set(SAMPLES)


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_schema_is_closed_draft_2020_12(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)

    def closed(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object":
                assert node.get("additionalProperties") is False, node
            for v in node.values():
                closed(v)
        elif isinstance(node, list):
            for v in node:
                closed(v)

    closed(schema)


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_record_fields_equal_schema_properties(name: str) -> None:
    schema = load_schema(name)
    fields, required = _record_fields(RECORDS[name])
    assert fields == set(schema["properties"]), name
    # A field required by the schema is required by the record and vice versa. Faust gives
    # every Optional field a None default, so a required-but-nullable field (drill-result's
    # ack_s: present on the wire, null when unknown) is the one allowed difference.
    nullable = {f for f, p in schema["properties"].items()
                if isinstance(p.get("type"), list) and "null" in p["type"]}
    assert required == set(schema["required"]) - nullable, name
    assert (set(schema["required"]) & nullable) <= fields


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_valid_sample_accepted_by_both_and_round_trips(name: str) -> None:
    sample = SAMPLES[name]
    validate(name, sample)  # schema accepts
    record = RECORDS[name].from_data(sample)  # record accepts
    again = RECORDS[name].loads(record.dumps())
    assert again == record  # round trip through the wire codec
    wire = record.to_wire()
    validate(name, wire)  # what the record emits, the schema accepts
    hints = typing.get_type_hints(RECORDS[name])
    for field, hint in hints.items():
        if hint is datetime and field in sample:
            assert isinstance(getattr(record, field), datetime)  # coerce=True


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_minimal_sample_accepted_by_both(name: str) -> None:
    schema = load_schema(name)
    minimal = {k: v for k, v in SAMPLES[name].items() if k in schema["required"]}
    validate(name, minimal)
    record = RECORDS[name].from_data(minimal)
    validate(name, record.to_wire())


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_missing_required_field_refused_by_both(name: str) -> None:
    for field in load_schema(name)["required"]:
        broken = {k: v for k, v in SAMPLES[name].items() if k != field}
        with pytest.raises(InvalidEvent) as info:
            validate(name, broken)
        assert info.value.error_class == "missing_field"
        nullable = load_schema(name)["properties"][field].get("type")
        if isinstance(nullable, list) and "null" in nullable:
            continue  # the record defaults it to None: see test_record_fields_equal_schema_properties
        with pytest.raises(TypeError):
            RECORDS[name](**broken)


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_unknown_field_refused_by_both(name: str) -> None:
    broken = {**SAMPLES[name], "surprise": 1}
    with pytest.raises(InvalidEvent) as info:
        validate(name, broken)
    assert info.value.error_class == "unknown_field"
    with pytest.raises(TypeError):
        RECORDS[name](**broken)


def test_records_carry_no_module_metadata() -> None:
    for name, record in RECORDS.items():
        data = record.from_data(SAMPLES[name]).to_wire()
        assert "__faust" not in data
        assert not any(k.startswith("__") for k in data)


def test_dataclass_free() -> None:
    # Records are Faust records, not dataclasses: one wire form, one coercion path.
    assert not any(dataclasses.is_dataclass(r) for r in RECORDS.values())
