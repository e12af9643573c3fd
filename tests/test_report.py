"""Issue 11 — after-action reports (``kaifong report``, :mod:`kaifong.agents.report`).

1. The must-show: a worker on an accelerated clock runs a day's incidents on the generated city
   (met, late, unanswered, resolved early, exercises); the report for that day replays the
   topics and its per-ring compliance equals the worker's own ``kaifong_ring_outcomes_total``
   counters exactly (and its response-time counts, escalations and acknowledgements too).
2. What-if: a looser ring table turns exactly the known late arrivals into met rings.
3. The HTML and the PDF open: ``pdftoppm`` renders the pages, the figures are there.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from state_segments import segments_from_states

from kaifong.agents import report
from kaifong.agents.core import clock
from kaifong.agents.report import CITY_TZ, Inputs, Window
from kaifong.agents.store import keys
from kaifong.streams.city import generate
from kaifong.streams.settings import Settings, parse_rings
from kaifong.streams.topics import DRILLS_ISSUED, INCIDENTS_REPORTED, INCIDENTS_UPDATES, UNITS_REGISTRY

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
REAL = parse_rings("self_rescue:60,mutual_aid:180,grid:300,street:600,professional:1200")
LOOSE = parse_rings("self_rescue:120,mutual_aid:360,grid:600,street:1200,professional:2400")
DAY = date(2026, 11, 29)


# ------------------------------------------------------------------------ a synthetic day (pure)
def _at(t0: datetime, seconds: float) -> str:
    return (t0 + timedelta(seconds=seconds)).isoformat()


def synthetic_day(n: int = 90, seed: int = 5) -> tuple[Inputs, set[tuple[str, int]]]:
    """A day of incidents on the generated city with planned arrivals, and the (incident, ring)
    pairs whose unit arrives after the real target but within the loose one ("known breaches")."""
    rng = random.Random(seed)
    city = generate(seed=7, units=600)
    window = report.day_window(DAY)
    inputs = Inputs(window, registry={u["unit_id"]: u for u in city.units})
    known: set[tuple[str, int]] = set()
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for u in city.units:
        by_kind.setdefault(u["kind"], []).append(u)
    for i in range(n):
        anchor = rng.choice(city.units)
        t0 = window.start + timedelta(seconds=rng.uniform(600, 86_000))
        incident_id = f"syn-{i:03d}"
        severity = rng.choice((1, 2, 3, 3, 4))
        exercise = i % 15 == 14
        inputs.reports.append({
            "event_id": f"{incident_id}-r", "incident_id": incident_id, "category": rng.choice(("fire", "medical")),
            "severity": severity, "reported_at": t0.isoformat(), "location": dict(anchor["home"]),
            "district": anchor["district"], "grid": anchor["grid"], "source": "call_110", "exercise": exercise})
        rings = clock.initial_rings(severity, [1, 2, 3, 4, 5])
        kinds = {1: "post", 2: "unit", 3: "grid_team", 4: "street_force", 5: "professional"}
        units = {r: rng.choice(by_kind[kinds[r]])["unit_id"] for r in rings}
        for r in rings:
            inputs.assignments.append({"assignment_id": f"{incident_id}:r{r}:0", "incident_id": incident_id,
                                       "ring": r, "attempt": 0, "units": [{"unit_id": units[r]}],
                                       "decided_at": _at(t0, 0.02), "reason": "ok", "exercise": exercise})
        plan = i % 5
        seq = 0

        def update(kind: str, seconds: float, unit: str | None = None, **extra: Any) -> None:
            nonlocal seq
            seq += 1
            body = {"event_id": f"{incident_id}-u{seq}", "incident_id": incident_id, "kind": kind,  # noqa: B023
                    "at": _at(t0, seconds), **extra}  # noqa: B023
            if unit:
                body["unit_id"] = unit
            inputs.updates.append(body)

        update("acknowledged", 5, units[rings[0]])
        if plan == 4:  # resolved before the first deadline: every ring stopped, in both tables
            update("resolved", 40)
            continue
        for r in rings:
            target = REAL[r - 1].target_s
            kind = (plan + r) % 4
            if kind == 0:
                arrival = None  # nobody comes: breached under both tables
            elif kind == 1:
                arrival = target * rng.uniform(0.2, 0.95)  # met
            elif kind == 2:
                arrival = target * rng.uniform(1.05, 1.9)  # late: met only under the loose table
                if not exercise:
                    known.add((incident_id, r))
            else:
                arrival = target * rng.uniform(2.1, 3.0)  # too late for either
            if arrival is not None:
                update("on_scene", arrival, units[r])
            if arrival is None or arrival > target:
                esc_id = f"{incident_id}:r{r}:ring_deadline_missed:0"
                inputs.escalations.append({
                    "escalation_id": esc_id, "incident_id": incident_id, "ring": r,
                    "level": clock.LEVELS[min(r - 1, 3)], "reason": "ring_deadline_missed",
                    "deadline_at": _at(t0, target), "raised_at": _at(t0, target + 0.1), "breached_by_s": 0.1,
                    "attempt": 0, "exercise": exercise, "notification": 0, "district": anchor["district"]})
                if r % 2:
                    update("escalation_acknowledged", target + rng.uniform(20, 200), escalation_id=esc_id, by="duty")
        update("resolved", 4000)  # after every deadline of both tables: nothing is stopped early
    drilled = sorted(inputs.registry)[::5]  # every fifth unit: all districts get drills
    for k, unit in enumerate(drilled):
        issued = window.start + timedelta(hours=9, minutes=k)
        drill_id = f"drl-{k:03d}"
        district = inputs.registry[unit]["district"]
        inputs.drills_issued.append({"drill_id": drill_id, "unit_id": unit, "channel": "radio",
                                     "issued_at": issued.isoformat(), "district": district})
        outcome = ("pass", "pass", "late", "fail", "no_answer", "pass")[k % 6]
        inputs.drill_results.append({"drill_id": drill_id, "unit_id": unit, "channel": "radio",
                                     "issued_at": issued.isoformat(), "outcome": outcome, "ack_s": 30.0,
                                     "muster_s": 120.0, "decided_at": (issued + timedelta(minutes=5)).isoformat(),
                                     "district": district})
    for k, unit in enumerate(drilled[:3]):  # three units fail twice
        issued = window.start + timedelta(hours=20, minutes=k)
        inputs.drill_results.append({"drill_id": f"drl-again-{k}", "unit_id": unit, "channel": "video",
                                     "issued_at": issued.isoformat(), "outcome": "no_answer", "ack_s": None,
                                     "muster_s": None, "decided_at": issued.isoformat(),
                                     "district": inputs.registry[unit]["district"]})
        inputs.drill_results[[r["unit_id"] for r in inputs.drill_results].index(unit)]["outcome"] = "fail"
    inputs.sources = {"incidents.reported.v1": {"offsets_for_times": 4}}
    return inputs, known


def _by_ring(rows: list[dict[str, Any]]) -> dict[int, tuple[int, int]]:
    return {r["ring"]: (r["met"], r["breached"]) for r in rows}


def test_what_if_turns_exactly_the_known_late_arrivals_into_met_rings() -> None:
    inputs, known = synthetic_day()
    as_of = inputs.window.end + timedelta(days=1)
    figures = report.compute(inputs, REAL, what_if=LOOSE, as_of=as_of)
    real = _by_ring(figures["compliance"]["real"]["by_ring"])
    loose = _by_ring(figures["compliance"]["what_if"]["by_ring"])
    shift = Counter(r for _, r in known)
    assert known and sum(b for _, b in real.values()) > len(known), "the scenario has other breaches too"
    for ring, (met, breached) in real.items():
        assert loose[ring] == (met + shift[ring], breached - shift[ring]), f"ring {ring}"
    changed: set[tuple[str, int]] = set()
    for row in figures["per_incident"]:
        if row["exercise"]:
            assert "what_if" not in row
            continue
        for ring, state in row["rings"].items():
            alt = row["what_if"][ring]
            if state == "met":
                assert alt == "met", f"{row['incident_id']} ring {ring}: a met ring must stay met"
            if alt != state:
                assert (state, alt) == ("breached", "met"), (row["incident_id"], ring, state, alt)
                changed.add((row["incident_id"], int(ring)))
    assert changed == known


def test_replay_follows_the_clock_rules() -> None:
    """Deadline breaches happen in event time, before a late resolution; an arrival at the
    deadline meets the ring; a deadline after the horizon stays pending."""
    t0 = datetime(2026, 11, 29, 8, 0, tzinfo=CITY_TZ)
    rings = parse_rings("a:60,b:180")
    rep = {"incident_id": "i1", "category": "fire", "severity": 3, "reported_at": t0.isoformat(),
           "location": {"lat": 23.1, "lon": 113.3}, "source": "call_110", "exercise": False}
    assign = [{"assignment_id": "i1:r1:0", "incident_id": "i1", "ring": 1, "attempt": 0, "units": [{"unit_id": "u1"}],
               "decided_at": t0.isoformat(), "reason": "ok"}]
    at_deadline = [{"event_id": "e1", "incident_id": "i1", "kind": "on_scene", "unit_id": "u1", "at": _at(t0, 60)},
                   {"event_id": "e2", "incident_id": "i1", "kind": "resolved", "at": _at(t0, 500)}]
    rp = report.replay(rep, assign, at_deadline, rings, t0 + timedelta(days=1))
    assert rp.ring_states() == {1: "met", 2: "breached"}  # ring 2 breached at 180 s, before the resolution
    early = [{"event_id": "e3", "incident_id": "i1", "kind": "resolved", "at": _at(t0, 100)}]
    assert report.replay(rep, assign, early, rings, t0 + timedelta(days=1)).ring_states() == {1: "breached",
                                                                                             2: "stopped"}
    assert report.replay(rep, assign, [], rings, t0 + timedelta(seconds=100)).ring_states() == {1: "breached",
                                                                                                 2: "pending"}
    # A re-dispatched unit's arrival is measured for its ring (already breached), not re-counted.
    redispatch = [*assign, {"assignment_id": "i1:r1:1", "incident_id": "i1", "ring": 1, "attempt": 1,
                            "units": [{"unit_id": "u9"}], "decided_at": _at(t0, 60.2), "reason": "ok"}]
    late = [{"event_id": "e4", "incident_id": "i1", "kind": "on_scene", "unit_id": "u9", "at": _at(t0, 90)}]
    rp = report.replay(rep, redispatch, late, rings, t0 + timedelta(days=1))
    assert rp.ring_states()[1] == "breached"
    assert [(c.ring, c.outcome, c.seconds) for _, c in rp.changes] == [(1, "breached", None), (1, "arrived", 90.0),
                                                                       (2, "breached", None)]


class _Rec:
    def __init__(self, offset: int, timestamp: int) -> None:
        self.offset, self.timestamp = offset, timestamp


class _Answer:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class _FakeConsumer:
    """Enough of KafkaConsumer for :func:`report.start_offsets`: one partition, given timestamps."""

    def __init__(self, stamps: list[int], answer: int | None) -> None:
        self.stamps, self.answer, self.pos = stamps, answer, 0

    def offsets_for_times(self, query: dict[Any, int]) -> dict[Any, Any]:
        return {tp: None if self.answer is None else _Answer(self.answer) for tp in query}

    def assign(self, parts: list[Any]) -> None:
        pass

    def seek(self, tp: Any, offset: int) -> None:
        self.pos = offset

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, list[_Rec]]:
        recs = [_Rec(o, self.stamps[o]) for o in range(self.pos, len(self.stamps))][:max_records]
        self.pos = len(self.stamps)
        return {"tp": recs} if recs else {}

    def pause(self, tp: Any) -> None:
        pass

    def unsubscribe(self) -> None:
        pass


@pytest.mark.parametrize(("answer", "expected"), [
    (3, (3, "offsets_for_times")),  # a correct answer is used
    (0, (0, "scan")),  # the embedded broker's "offset 0 for any time": scan from the beginning
    (5, (0, "scan")),  # too late an answer (the record before is already in range)
    (None, (0, "scan")),  # "nothing that late" while the last record is in range
])
def test_start_offsets_trusts_only_verified_answers(answer: int | None, expected: tuple[int, str]) -> None:
    stamps = [100, 200, 300, 400, 500, 600]
    starts, methods = report.start_offsets(_FakeConsumer(stamps, answer), ["tp"], 350, {"tp": 0}, {"tp": 6})
    assert (starts["tp"], methods["tp"]) == expected


def test_ring_tables_and_times_parse() -> None:
    assert report.parse_when("2026-11-29") == datetime(2026, 11, 29, tzinfo=CITY_TZ)
    assert report.parse_when("2026-11-29T08:00:00") == datetime(2026, 11, 29, 8, tzinfo=CITY_TZ)
    with pytest.raises(ValueError, match="must be after"):
        Window(report.parse_when("2026-11-30"), report.parse_when("2026-11-29"))
    accel = Settings(time_scale=10.0, time_epoch=1_000_000.0)
    assert report.to_wall(accel, datetime.fromtimestamp(1_000_100.0, UTC)) == pytest.approx(1_000_010.0)


def test_what_if_ring_files(tmp_path: Path) -> None:
    for name, text in (("a.txt", "a:30,b:90"), ("b.json", '{"a": 30, "b": 90}'),
                       ("c.json", '[{"name": "a", "target_s": 30}, {"name": "b", "target_s": 90}]'),
                       ("d.json", '"a:30,b:90"')):
        (tmp_path / name).write_text(text)
        assert [(r.name, r.target_s) for r in report.load_rings(tmp_path / name)] == [("a", 30.0), ("b", 90.0)]
    (tmp_path / "bad.json").write_text('{"a": 90, "b": 30}')
    with pytest.raises(report.ReportError, match="increase"):
        report.load_rings(tmp_path / "bad.json")


# ------------------------------------------------------------------------ 3. the HTML and the PDF
SECTIONS = ("Summary", "Ring compliance", "Response times", "Response segments", "Slowest incidents", "Escalations",
            "Drills", "Incident map", "Method and data quality")


def test_html_and_pdf_open_with_their_figures(tmp_path: Path) -> None:
    assert shutil.which("pdftoppm") and shutil.which("pdftotext"), \
        "Debian package poppler-utils is required (.ci/run installs it)"
    inputs, _ = synthetic_day()
    figures = report.compute(inputs, REAL, what_if=LOOSE, as_of=inputs.window.end + timedelta(days=1))
    files = report.write_files(figures, tmp_path)
    html_path = tmp_path / "report.html"
    html_path.write_text(report.render_html(figures), "utf-8")
    pdf = report.render_pdf(html_path, tmp_path / "report.pdf")
    for name in ("figures.json", "compliance_by_district.csv", "compliance_by_grid.csv", "response_times.csv",
                 "escalations.csv", "drills.csv", "slowest.csv"):
        assert (tmp_path / name) in files and (tmp_path / name).stat().st_size > 0
    page = html_path.read_text("utf-8")
    # Self-contained: no script, stylesheet, image or font fetched from anywhere.
    for external in ("<script", "<link", "<img", "url(", "src="):
        assert external not in page
    assert page.count('aria-label="response times ring') == len(REAL)
    for chart in ('aria-label="ring compliance"', 'aria-label="incident map"', 'aria-label="drill pass rates"',
                  'class="chart timeline"', "class=\"district\"", "天河区", "Noto Sans CJK SC"):
        assert chart in page, chart
    assert page.count('class="inc inc-') == len(inputs.reports)
    pages = tmp_path / "pages"
    pages.mkdir()
    subprocess.run(["pdftoppm", "-r", "60", "-png", str(pdf), str(pages / "p")], check=True, timeout=60)
    rendered = sorted(pages.glob("p-*.png"))
    assert len(rendered) >= 2
    assert all(p.stat().st_size > 5000 for p in rendered), "blank pages"
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True,
                          timeout=60).stdout.decode()
    for title in SECTIONS:
        assert title in text, title
    assert "越秀区" in text or "天河区" in text, "CJK district names must render (and be extractable)"
    ARTIFACTS.mkdir(exist_ok=True)
    subprocess.run(["pdftoppm", "-r", "110", "-png", "-f", "1", "-l", "1", "-singlefile", str(pdf),
                    str(ARTIFACTS / "report-page1")], check=True, timeout=60)
    assert (ARTIFACTS / "report-page1.png").stat().st_size > 10_000
    shutil.copy(pdf, ARTIFACTS / "report-sample.pdf")


# ------------------------------------------------------------------------ 1. the must-show
#: Ring targets in simulation seconds; with the clock ×10 they fall due 2, 4 and 6 s after a report.
SIM_RINGS = "a:20,b:40,c:60"
SCALE = 10.0
#: (offset of an update from the report, in simulation seconds) — every offset stays ≥ 4 sim s
#: (0.4 s of wall time, four clock ticks) away from the deadline it is judged against, so the
#: worker (which decides by processing order) and the replay (event time) see the same order.
#: Acknowledgement windows (sim s) that keep the same 4 s distance from every update offset.
SIM_ACK_WINDOWS = "1:12,2:24,3:44"
SCENARIOS: dict[str, list[tuple[float, str, int | None]]] = {
    # name: [(offset_s, kind, ring of the unit that sends it or None)]
    "all_met": [(3, "acknowledged", 1), (8, "on_scene", 1), (16, "on_scene", 2), (30, "on_scene", 3),
                (75, "resolved", None)],
    "late_ring1": [(3, "acknowledged", 1), (16, "on_scene", 2), (30, "on_scene", 1)],  # ring 3 never
    "resolved_early": [(3, "acknowledged", 1), (8, "resolved", None)],
    "resolved_mid": [(3, "acknowledged", 1), (8, "on_scene", 1), (30, "resolved", None)],
    "nobody": [(35, "escalation_acknowledged", 1)],
    "all_late": [(3, "acknowledged", 1), (3, "acknowledged", 2), (3, "acknowledged", 3), (8, "en_route", 1),
                 (30, "on_scene", 1), (50, "on_scene", 2), (70, "on_scene", 3), (80, "resolved", None)],
    # Ring 1's unit never answers: released at its window (12 s), replaced; its late arrival is
    # refused (dead-lettered unit_not_assigned), in the worker and in the replay alike.
    "no_show": [(3, "acknowledged", 2), (8, "en_route", 2), (16, "on_scene", 2), (30, "on_scene", 1)],
    "declined": [(5, "declined", 1), (8, "en_route", 2), (16, "on_scene", 2), (80, "resolved", None)],
}


def _accelerated(new_settings: Any) -> tuple[Settings, date]:
    """Settings whose ×10 clock shows 10:00 local time today right now (the day being reported)."""
    wall0 = time.time()
    day = datetime.fromtimestamp(wall0, CITY_TZ).date()
    sim0 = datetime.combine(day, datetime.min.time(), CITY_TZ) + timedelta(hours=10)
    # clock = epoch + (wall − epoch) × scale; solved for the epoch that gives sim0 at wall0.
    epoch = (SCALE * wall0 - sim0.timestamp()) / (SCALE - 1)
    return new_settings(rings=SIM_RINGS, time_scale=SCALE, time_epoch=epoch, unit_stale_after_s=1e7,
                        drills_enabled=False, ack_windows=SIM_ACK_WINDOWS), day


def _publish_city(settings: Settings, producer: KafkaProducer, units: list[dict[str, Any]]) -> None:
    p, now = settings.topic_prefix, settings.clock()
    for u in units:
        producer.send(p + "units.registry.v1", key=u["unit_id"].encode(), value=orjson.dumps(u))
    stamp = now().isoformat()
    for u in units:
        producer.send(p + "units.status.v1", key=u["unit_id"].encode(), value=orjson.dumps(
            {"event_id": f"{u['unit_id']}-s1", "unit_id": u["unit_id"], "status": "available", "at": stamp, "seq": 1}))
    producer.flush()
    r = redis.Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + 30
    kinds = ("post", "unit", "grid_team", "street_force", "professional")
    while time.monotonic() < deadline and sum(r.zcard(f"kf:geo:avail:{k}") for k in kinds) < len(units):
        time.sleep(0.1)
    assert sum(r.zcard(f"kf:geo:avail:{k}") for k in kinds) == len(units), "units not indexed"


def _last_states(settings: Settings) -> dict[str, dict[str, Any]]:
    """The newest state of every incident on the state topic."""
    consumer = KafkaConsumer(settings.topic_prefix + "incidents.state.v1", bootstrap_servers=settings.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=50,
                             consumer_timeout_ms=1500)
    out: dict[str, dict[str, Any]] = {}
    for rec in consumer:
        st = orjson.loads(rec.value)
        if st["version"] >= out.get(st["incident_id"], {}).get("version", -1):
            out[st["incident_id"]] = st
    consumer.close()
    return out


def _deadlines_pending(settings: Settings) -> int:
    r = redis.Redis.from_url(settings.redis_url)
    n = 0
    for part in range(settings.partitions):
        key = f"kf:clock:{settings.topic_prefix}{part}"
        n += sum(1 for m in r.zrange(key, 0, -1) if m.startswith(b"d|"))
        n += sum(1 for m in r.hkeys(key + ":inflight") if m.startswith(b"d|"))
    return n


def _drive_day(settings: Settings, producer: KafkaProducer, city_units: list[dict[str, Any]],
               n: int = 30) -> dict[str, Any]:
    """Report ``n`` incidents one simulated second apart and send each scenario's updates when
    the shared accelerated clock reaches their event time; returns what was sent."""
    p, now = settings.topic_prefix, settings.clock()
    rng = random.Random(3)
    anchors = rng.sample([u for u in city_units if u["kind"] in ("post", "unit")], n)
    names = list(SCENARIOS)
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_wait_ms=20)
    topic = p + "dispatch.assignments.v1"
    consumer.assign([TopicPartition(topic, part) for part in range(settings.partitions)])
    units: dict[tuple[str, int], str] = {}  # (incident, ring) → first unit of its first assignment
    start = now() + timedelta(seconds=2)
    plan: list[tuple[datetime, int, dict[str, Any]]] = []
    sent: dict[str, Any] = {"reports": 0, "updates": 0, "skipped": 0, "scenario": {}}
    for i, anchor in enumerate(anchors):
        incident_id = f"day-{i:02d}"
        t0 = start + timedelta(seconds=i)
        exercise = i % 10 == 9
        scenario = "nobody" if exercise else names[i % len(names)]
        sent["scenario"][incident_id] = scenario
        plan.append((t0, len(plan), {"report": {
            "event_id": f"{incident_id}-r", "incident_id": incident_id, "category": "medical",
            "severity": 1 if i % 7 == 0 else 3, "reported_at": t0.isoformat(), "location": dict(anchor["home"]),
            "district": anchor["district"], "grid": anchor["grid"], "source": "call_110", "exercise": exercise}}))
        for k, (offset, kind, ring) in enumerate(SCENARIOS[scenario]):
            if exercise and kind == "escalation_acknowledged":
                continue
            plan.append((t0 + timedelta(seconds=offset), len(plan),
                         {"update": (incident_id, f"{incident_id}-u{k}", kind, ring, t0 + timedelta(seconds=offset))}))
    plan.sort(key=lambda e: (e[0], e[1]))
    decided: set[tuple[str, int]] = set()

    def poll() -> None:
        for records in consumer.poll(timeout_ms=10).values():
            for rec in records:
                a = orjson.loads(rec.value)
                if int(a.get("attempt", 0)) == 0:
                    decided.add((a["incident_id"], a["ring"]))
                    if a["units"]:
                        units.setdefault((a["incident_id"], a["ring"]), a["units"][0]["unit_id"])

    for due, _, action in plan:
        while now() < due:
            poll()
        if "update" in action and action["update"][3] is not None:
            # A unit's answer needs its ring decided (the first decisions of a fresh worker
            # take longer than the sim seconds between a report and its first answer).
            waited = time.monotonic() + 5
            while (action["update"][0], action["update"][3]) not in decided and time.monotonic() < waited:
                poll()
        if "report" in action:
            body = action["report"]
            producer.send(p + "incidents.reported.v1", key=body["incident_id"].encode(), value=orjson.dumps(body))
            sent["reports"] += 1
        else:
            incident_id, event_id, kind, ring, at = action["update"]
            body = {"event_id": event_id, "incident_id": incident_id, "kind": kind, "at": at.isoformat()}
            if kind == "declined":
                body["reason"] = "busy"
            if kind == "escalation_acknowledged":
                body["escalation_id"] = f"{incident_id}:r{ring}:ring_deadline_missed:0"
                body["by"] = "duty-officer"
            elif ring is not None:
                unit = units.get((incident_id, ring))
                if unit is None:
                    if kind == "on_scene":
                        sent["skipped"] += 1  # the ring got nobody: it is breached by its deadline
                        continue
                else:
                    body["unit_id"] = unit
            producer.send(p + "incidents.updates.v1", key=incident_id.encode(), value=orjson.dumps(body))
            sent["updates"] += 1
        producer.flush()
    consumer.close()
    sent["last_report"] = start + timedelta(seconds=n - 1)
    return sent


def _publish_drills(settings: Settings, producer: KafkaProducer, units: list[dict[str, Any]], day: date) -> None:
    """Drill records as the scheduler publishes them: three from the day before, stamped with a
    record time long before the window (so the broker's offset-by-time answer is checked and a
    scan is needed), and the day's own with their results."""
    p = settings.topic_prefix
    old_ms = int((time.time() - 3 * 3600) * 1000)
    day_before = datetime.combine(day, datetime.min.time(), CITY_TZ) - timedelta(hours=4)
    for k, u in enumerate(units[:3]):
        body = {"drill_id": f"old-{k}", "unit_id": u["unit_id"], "channel": "radio",
                "issued_at": day_before.isoformat(), "district": u["district"], "grid": u["grid"]}
        producer.send(p + "drills.issued.v1", key=body["drill_id"].encode(), value=orjson.dumps(body),
                      timestamp_ms=old_ms)
    now = settings.clock()()
    for k, u in enumerate(units[3:23]):
        issued = {"drill_id": f"new-{k:02d}", "unit_id": u["unit_id"], "channel": "radio",
                  "issued_at": now.isoformat(), "district": u["district"], "grid": u["grid"]}
        producer.send(p + "drills.issued.v1", key=issued["drill_id"].encode(), value=orjson.dumps(issued))
        result = {**issued, "outcome": ("pass", "late", "pass", "no_answer")[k % 4], "ack_s": 20.0,
                  "muster_s": 90.0, "decided_at": now.isoformat()}
        producer.send(p + "drills.results.v1", key=issued["drill_id"].encode(), value=orjson.dumps(result))
    producer.flush()


@pytest.mark.integration
def test_report_equals_the_worker_counters_for_an_accelerated_day(new_settings, start_worker, tmp_path) -> None:
    settings, day = _accelerated(new_settings)
    worker = start_worker(settings)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks="all")
    city = generate(seed=11, units=2000)
    _publish_city(settings, producer, city.units)
    _publish_drills(settings, producer, city.units, day)
    sent = _drive_day(settings, producer, city.units)
    # Everything consumed and every deadline fired (the last is 60 sim s after the last report).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        consumed = (worker.metric("kaifong_events_in_total", topic=settings.topic_prefix + "incidents.reported.v1"),
                    worker.metric("kaifong_events_in_total", topic=settings.topic_prefix + "incidents.updates.v1"))
        if (consumed == (sent["reports"], sent["updates"]) and settings.clock()() > sent["last_report"]
                + timedelta(seconds=65) and _deadlines_pending(settings) == 0):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"worker did not finish: consumed {consumed}, sent {sent}, "
                    f"deadlines pending {_deadlines_pending(settings)}")
    # Close what is still open: a ring nobody answers keeps being decided again at every
    # no-show, so the worker's counters would move while the report is made.
    closing = settings.clock()()
    for incident_id in sent["scenario"]:
        if "resolved" not in [kind for _, kind, _ in SCENARIOS[sent["scenario"][incident_id]]]:
            producer.send(settings.topic_prefix + "incidents.updates.v1", key=incident_id.encode(), value=orjson.dumps(
                {"event_id": f"{incident_id}-close", "incident_id": incident_id, "kind": "resolved",
                 "at": closing.isoformat()}))
            sent["updates"] += 1
    producer.flush()
    deadline = time.monotonic() + 30
    while worker.metric("kaifong_events_in_total", topic=settings.topic_prefix + "incidents.updates.v1") \
            < sent["updates"]:
        assert time.monotonic() < deadline, "closing updates not consumed"
        time.sleep(0.2)
    time.sleep(1.0)  # and applied
    producer.close()

    out = tmp_path / "report"
    loose = tmp_path / "loose.json"
    loose.write_text('{"a": 40, "b": 80, "c": 120}')
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KAIFONG_")}, **settings.to_env()}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "kaifong.agents.cli", "report", "--from", day.isoformat(),
                           "--to", (day + timedelta(days=1)).isoformat(), "--rings", str(loose), "--out", str(out)],
                          env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    took = time.monotonic() - started
    figures = orjson.loads((out / "figures.json").read_bytes())

    # The must-show: per ring, met and breached equal the worker's own counters exactly.
    rows = {r["ring"]: r for r in figures["compliance"]["real"]["by_ring"]}
    for ring in (1, 2, 3):
        for outcome in ("met", "breached"):
            live = worker.metric("kaifong_ring_outcomes_total", ring=str(ring), outcome=outcome, exercise="false")
            assert rows[ring][outcome] == live, f"ring {ring} {outcome}: report {rows[ring][outcome]}, worker {live}"
    exercise_rows = {r["ring"]: r for r in figures["compliance"]["exercise"]}
    for ring in (1, 2, 3):
        assert exercise_rows[ring]["breached"] == worker.metric(
            "kaifong_ring_outcomes_total", ring=str(ring), outcome="breached", exercise="true")
    # Answers from released units (the no-shows' late arrivals) refused by both, as many.
    refused = worker.metric("kaifong_deadletters_total", stage="clock")
    assert figures["incidents"] == {"real": 27, "exercise": 3, "refused_updates": refused}
    assert worker.metric("kaifong_deadletters_total", stage="clock", error_class="unit_not_assigned") > 0
    # Must-show 4: the response segments from the live metrics, the state topic and the replay agree.
    states = _last_states(settings)
    from_states = segments_from_states(states.values())
    segs = {(r["segment"], r["ring"]): r for r in figures["segments"]}
    assert segs, "no segment measured"
    for (segment, ring), row in segs.items():
        live_n = worker.metric("kaifong_response_segment_seconds_count", segment=segment, ring=str(ring))
        live_sum = worker.metric("kaifong_response_segment_seconds_sum", segment=segment, ring=str(ring))
        assert row["n"] == live_n == len(from_states[(segment, ring)]), (segment, ring, row["n"], live_n)
        assert row["sum_s"] == pytest.approx(live_sum, abs=0.01)
        assert row["sum_s"] == pytest.approx(sum(from_states[(segment, ring)]), abs=0.01)
    assert set(from_states) == set(segs)
    assert {s for s, _ in segs} == {"acknowledgement", "turnout", "travel"}
    # Every breach has a cause; the no-show and the declined scenarios are not "nobody available".
    causes = {r["cause"] for r in figures["breach_causes"]}
    assert causes and causes <= {"late_acknowledgement", "late_turnout", "long_travel", "nobody_available"}
    assert sum(r["count"] for r in figures["breach_causes"]) == sum(rows[r]["breached"] for r in rows)
    assert worker.metric("kaifong_unit_declines_total", reason="busy", exercise="false") > 0
    assert worker.metric("kaifong_unit_no_shows_total", exercise="false") > 0
    assert sum(r["met"] for r in rows.values()) > 0 and sum(r["breached"] for r in rows.values()) > 0
    # Response times: the same arrivals the worker's histogram observed.
    for ring in ("1", "2", "3"):
        rt = figures["response_times"][ring]
        assert rt["n"] == worker.metric("kaifong_response_seconds_count", ring=ring, exercise="false")
        assert sum(rt["values"]) == pytest.approx(
            worker.metric("kaifong_response_seconds_sum", ring=ring, exercise="false"), abs=1e-6)
    # Escalations by level and reason, and their acknowledgements, as the worker counted them.
    for row in figures["escalations"]["by_level_reason"]:
        assert row["count"] == worker.metric("kaifong_escalations_total", level=row["level"], reason=row["reason"],
                                             exercise="false")
    assert sum(r["count"] for r in figures["escalations"]["by_level_reason"]) == worker.metric(
        "kaifong_escalations_total", exercise="false")
    acked = sum(r["acknowledged"] for r in figures["escalations"]["ack_by_level"])
    assert acked == worker.metric("kaifong_escalation_ack_seconds_count") > 0
    # The replay and the worker's live state agree ring by ring.
    assert figures["disagreements"] == []
    assert figures["rings"]["incidents_with_recorded_table"] == 30
    # What-if: the late arrivals (30 s against a 20 s target, 50 s against 40 s …) become met.
    alt = {r["ring"]: r for r in figures["compliance"]["what_if"]["by_ring"]}
    assert all(alt[r]["met"] >= rows[r]["met"] for r in (1, 2, 3))
    assert sum(alt[r]["met"] for r in (1, 2, 3)) > sum(rows[r]["met"] for r in (1, 2, 3))
    # Drills: the day's twenty, not the day before's three; found by a scan where the broker's
    # answer to "offset by time" failed its check.
    assert figures["drills"]["issued"] == 20 and figures["drills"]["results"] == 20
    assert len(figures["drills"]["never_drilled"]) == 2000 - 20
    assert "scan" in figures["sources"]["topics"]["drills.issued.v1"]
    for name in ("report.html", "report.pdf", "compliance_by_district.csv", "compliance_by_grid.csv",
                 "response_times.csv", "escalations.csv", "drills.csv", "slowest.csv", "segments.csv",
                 "breach_causes.csv"):
        assert (out / name).stat().st_size > 0, name
    print(f"skipped {sent['skipped']} arrivals; sources {figures['sources']['topics']}")
    shutil.copytree(out, ARTIFACTS / "report-integration", dirs_exist_ok=True)
    print(f"report of {figures['sources']['records_read']} records in {took:.1f}s; "
          f"ring outcomes {[(r, rows[r]['met'], rows[r]['breached']) for r in (1, 2, 3)]}")

    # The daily report: made once, recorded in Redis for the console.
    path = asyncio.run(report.daily_report_once(settings, day, out_root=tmp_path / "daily", pdf=False))
    assert path is not None and (path / "report.html").exists()
    r = redis.Redis.from_url(settings.redis_url)
    assert r.hget(keys.REPORTS, day.isoformat()) == str(path.resolve()).encode()
    assert asyncio.run(report.daily_report_once(settings, day, out_root=tmp_path / "daily", pdf=False)) is None


class _Raw:
    """A consumed record as :func:`report.select_inputs` sees it."""

    def __init__(self, value: Any, key: str | None = None, offset: int = 0) -> None:
        self.value = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
        self.key = key.encode() if key else None
        self.partition, self.offset, self.timestamp = 0, offset, 0


def test_selection_validates_dedupes_and_filters_like_the_worker() -> None:
    t0 = datetime(2026, 11, 29, 9, 0, tzinfo=CITY_TZ)
    window = Window(t0 - timedelta(hours=9), t0 + timedelta(hours=15), "天河区")

    def rep(incident_id: str, event_id: str, at: datetime, district: str = "天河区", **extra: Any) -> dict[str, Any]:
        return {"event_id": event_id, "incident_id": incident_id, "category": "fire", "severity": 3,
                "reported_at": at.isoformat(), "location": {"lat": 23.14, "lon": 113.37}, "district": district,
                "source": "call_110", "exercise": False, **extra}

    raw = {
        INCIDENTS_REPORTED: [
            _Raw(b"not json"),
            _Raw(rep("i1", "r1", t0, severity=9)),  # invalid (out of range): the worker dead-letters it
            _Raw(rep("i1", "r2", t0)),  # the first valid report of i1 wins …
            _Raw(rep("i1", "r3", t0 + timedelta(minutes=5))),  # … a second caller does not reopen it
            _Raw(rep("i2", "r4", t0 - timedelta(days=1))),  # reported the day before
            _Raw(rep("i3", "r5", t0, district="越秀区")),  # another district
        ],
        INCIDENTS_UPDATES: [
            _Raw({"event_id": "u1", "incident_id": "i1", "kind": "acknowledged", "at": (t0 + timedelta(seconds=5))
                  .isoformat()}),
            _Raw({"event_id": "u1", "incident_id": "i1", "kind": "acknowledged", "at": (t0 + timedelta(seconds=5))
                  .isoformat()}),  # duplicate event id: dropped
            _Raw({"event_id": "u2", "incident_id": "i1", "kind": "resolved", "at": (t0 + timedelta(days=2))
                  .isoformat()}),  # after the read horizon
            _Raw({"event_id": "u3", "incident_id": "i2", "kind": "resolved", "at": t0.isoformat()}),
        ],
        UNITS_REGISTRY: [
            _Raw({"unit_id": "a", "district": "天河区"}, "a"), _Raw({"unit_id": "b", "district": "越秀区"}, "b"),
            _Raw({"unit_id": "c", "district": "天河区"}, "c"), _Raw(None, "c"),  # tombstone: unit c removed
        ],
        DRILLS_ISSUED: [
            _Raw({"drill_id": "d1", "unit_id": "a", "channel": "radio", "issued_at": t0.isoformat()}),
            _Raw({"drill_id": "d2", "unit_id": "b", "channel": "radio", "issued_at": t0.isoformat()}),
        ],
    }
    inputs = Inputs(window)
    report.select_inputs(Settings(), inputs, raw, window.end + timedelta(hours=1))
    assert [(r["incident_id"], r["event_id"]) for r in inputs.reports] == [("i1", "r2")]
    assert [u["event_id"] for u in inputs.updates] == ["u1"]
    assert inputs.invalid == 2
    assert sorted(inputs.registry) == ["a"]
    assert [(d["drill_id"], d["district"]) for d in inputs.drills_issued] == [("d1", "天河区")]
