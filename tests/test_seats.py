"""Duty seats: the file's checks name every error, routing goes up when nobody covers, reloads keep good seats."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from kaifong.agents.core import incident as core
from kaifong.agents.core.dispatch import view_of
from kaifong.agents.core.seats import SeatBook, SeatsInvalid, address_change
from kaifong.agents.flows.seatbook import SeatsFile, parse_seats, read_seats
from kaifong.agents.tools.seats_cli import default_seats
from kaifong.streams.settings import parse_rings

HOOK = [{"type": "webhook", "url": "http://127.0.0.1:9/x"}]
# 2026-12-07 is a Monday; 02:00 UTC is 10:00 in Guangzhou.
MONDAY_10 = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
MONDAY_23 = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)


def seats_doc() -> dict[str, Any]:
    return {"version": 1, "timezone": "Asia/Shanghai", "seats": [
        {"id": "city", "level": "city", "jurisdiction": {}, "receivers": HOOK},
        {"id": "d-yx", "level": "district", "jurisdiction": {"districts": ["越秀区"]}, "receivers": HOOK},
        {"id": "d-hz", "level": "district", "jurisdiction": {"districts": ["海珠区"]}, "receivers": HOOK,
         "on_duty": [{"days": ["mon", "tue", "wed", "thu", "fri"], "from": "08:00", "to": "20:00"}]},
        {"id": "s-yx1", "level": "street", "jurisdiction": {"streets": ["YX-S01"]}, "receivers": HOOK},
        {"id": "g-1", "level": "grid", "jurisdiction": {"grids": ["YX-S01-PG01-G0001"]}, "receivers": HOOK},
    ]}


def book() -> SeatBook:
    return parse_seats(orjson.dumps(seats_doc()))


def test_an_escalation_goes_to_the_seats_of_its_level_that_cover_the_incident() -> None:
    b = book()
    assert b.route("grid", "越秀区", "YX-S01", "YX-S01-PG01-G0001", MONDAY_10).seats == ("g-1",)
    assert b.route("street", "越秀区", "YX-S01", "YX-S01-PG01-G0001", MONDAY_10).seats == ("s-yx1",)
    assert b.route("district", "越秀区", None, None, MONDAY_10).seats == ("d-yx",)
    assert b.route("city", "越秀区", None, None, MONDAY_10).seats == ("city",)


def test_no_seat_of_the_level_goes_to_the_next_level_up_never_dropped() -> None:
    b = book()
    # A grid with no grid seat, on a street with no street seat: the district.
    r = b.route("grid", "越秀区", "YX-S02", "YX-S02-PG01-G0009", MONDAY_10)
    assert (r.level, r.seats) == ("district", ("d-yx",))
    # A district with no seat at all: the city.
    assert b.route("district", "天河区", None, None, MONDAY_10).seats == ("city",)
    # Unknown everything: the city.
    assert b.route("grid", None, None, None, MONDAY_10).seats == ("city",)


def test_an_off_duty_seat_is_skipped() -> None:
    b = book()
    assert b.route("district", "海珠区", None, None, MONDAY_10).seats == ("d-hz",)
    r = b.route("district", "海珠区", None, None, MONDAY_23)  # 23:00 local: off duty
    assert (r.level, r.seats) == ("city", ("city",))


def test_the_city_is_told_even_when_every_city_seat_is_off_duty() -> None:
    doc = seats_doc()
    doc["seats"][0]["on_duty"] = [{"from": "08:00", "to": "09:00"}]
    r = parse_seats(orjson.dumps(doc)).route("district", "天河区", None, None, MONDAY_23)
    assert (r.level, r.seats) == ("city", ("city",))


def test_every_error_of_a_seats_file_is_named() -> None:
    doc = seats_doc()
    doc["seats"] = [
        {"id": "d-yx", "level": "district", "jurisdiction": {}, "receivers": HOOK},  # no districts
        {"id": "d-yx", "level": "district", "jurisdiction": {"districts": ["A"]}, "receivers": HOOK},  # dup
        {"id": "s", "level": "street", "jurisdiction": {}, "receivers": []},  # nothing, nobody
        {"id": "bad id!", "level": "town", "jurisdiction": {}, "receivers": [{"type": "email"}]},
    ]
    with pytest.raises(SeatsInvalid) as exc:
        parse_seats(orjson.dumps(doc))
    text = "\n".join(exc.value.errors)
    # The schema's reasons all at once (level enum, id pattern, the e-mail's missing "to").
    assert "seats[3].level" in text and "seats[3].id" in text and "'to' is a required property" in text
    doc["seats"] = doc["seats"][:3]
    with pytest.raises(SeatsInvalid) as exc:
        parse_seats(orjson.dumps(doc))
    errors = exc.value.errors
    assert any("seats[0]" in e and "districts" in e for e in errors)
    assert any("seats[1]" in e and "duplicate" in e for e in errors)
    assert any("seats[2]" in e and "streets or grids" in e for e in errors)
    assert any("seats[2]" in e and "no receivers" in e for e in errors)
    assert any("no city seat" in e for e in errors)
    with pytest.raises(SeatsInvalid, match="not valid JSON"):
        parse_seats(b"{", "seats.json")
    with pytest.raises(SeatsInvalid, match="not valid YAML"):
        parse_seats(b"seats: [", "seats.yaml")


def test_yaml_and_json_read_alike(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(seats_doc(), allow_unicode=True), encoding="utf-8")
    (tmp_path / "s.json").write_bytes(orjson.dumps(seats_doc()))
    assert read_seats(tmp_path / "s.yaml").digest == read_seats(tmp_path / "s.json").digest


def test_a_changed_file_is_reread_and_an_invalid_change_keeps_the_seats_in_use(tmp_path: Path) -> None:
    path = tmp_path / "seats.json"
    path.write_bytes(orjson.dumps(seats_doc()))
    holder = SeatsFile.load(str(path))
    assert holder.book is not None and "g-1" in holder.book.by_id
    doc = seats_doc()
    doc["seats"].append({"id": "g-2", "level": "grid", "jurisdiction": {"grids": ["G2"]}, "receivers": HOOK})
    path.write_bytes(orjson.dumps(doc))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert holder.check() and "g-2" in holder.book.by_id
    path.write_bytes(b'{"version": 1, "seats": []}')
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert not holder.check()
    assert "g-2" in holder.book.by_id  # the previous seats stay in use
    assert not holder.check()  # unchanged since: nothing re-read


def test_a_breach_escalation_is_addressed_to_the_street_seat_and_stored_with_it() -> None:
    report = {"incident_id": "i-2", "category": "fire", "severity": 2, "reported_at": "2026-12-07T10:00:00+08:00",
              "location": {"lat": 23.13, "lon": 113.26}, "source": "call_110", "exercise": False,
              "district": "越秀区", "street": "YX-S01", "grid": "YX-S01-PG01-G0077"}
    doc = core.fresh_document(report, parse_rings("a:60,b:180"), MONDAY_10, 0)
    doc = {**doc, "assignments": []}
    b = core.breach(doc, 1, datetime(2026, 12, 7, 2, 1, 1, tzinfo=UTC), view_of(report))
    assert b is not None
    change = core.breached(doc, b, [], datetime(2026, 12, 7, 2, 1, 1, tzinfo=UTC), core.Policy())
    addressed = address_change(change, book(), MONDAY_10)
    (esc,) = [body for kind, body in addressed.publish if kind == "escalation"]
    assert esc["level"] == "grid" and esc["street"] == "YX-S01"
    # No grid seat for this grid: its street's seat.
    assert (esc["seat_level"], esc["seats"]) == ("street", ["s-yx1"])
    stored = addressed.doc["escalations"][esc["escalation_id"]]["body"]
    assert stored["seats"] == ["s-yx1"]
    assert address_change(change, None, MONDAY_10) is change


def test_the_default_seats_of_the_synthetic_city_are_valid() -> None:
    data = default_seats()
    b = parse_seats(orjson.dumps(data))
    counts = b.counts()
    assert counts["city"] == 1 and counts["district"] == 11 and counts["street"] >= 100
