"""kaifong.agents.report — after-action reports: ring compliance, response times, escalations, drills.

Layer: agents. ``kaifong report --from T1 --to T2 --out DIR`` (and the worker's daily report)
read the incident, assignment, escalation, state and drill topics for a time range, **replay
every incident through the same pure ring-clock functions the worker runs**
(:mod:`kaifong.agents.core.clock`: ``open_incident`` → ``with_assignments`` → ``apply_update`` …
``breach``), and write ``report.html`` (self-contained: inline CSS and SVG), ``report.pdf``
(the HTML printed by headless Debian ``chromium``), ``figures.json`` and CSV files.

Why a replay and not the worker's counters or the compacted state topic: the counters have no
incident, grid or time range, and the state topic keeps only each incident's latest version;
the input topics keep every event for 90 days. Replaying them through ``clock`` means the report
and the worker cannot disagree on a rule, and a different ring table (``--rings``, "what if")
is one more replay with other targets.

Rules of the replay (event time throughout, like the worker's clock):

- an incident belongs to the report when its ``reported_at`` is in ``[from, to)``; its updates
  are read up to ``to`` + the longest ring target + :data:`UPDATE_MARGIN_S`;
- events are applied in event-time order: updates (``at``), then ring deadlines
  (``deadline_at``: a pending ring is breached there, unless the incident was resolved or
  cancelled before), then re-dispatch rounds (``decided_at``) — at equal times in that order,
  because an arrival *at* the deadline meets the ring (``clock.apply_update``);
- a deadline later than the report's horizon (``to`` + longest target, or now if earlier) is
  not decided: that ring is reported as pending;
- exercise incidents never count in compliance; they are counted on their own;
- a what-if replay keeps every arrival and dispatch round as it happened and moves only the
  deadlines: it answers "how would these arrivals have been judged under that table", not
  "what would have been dispatched" (a looser table can only turn breaches into met rings).

The worker decides a ring by *processing* order (an arrival timed before the deadline but
delivered after the deadline timer fired counts as a breach there). The report decides by
event time, and lists every ring where the two disagree (the live state topic is the witness).

Reading the range: each partition's first offset comes from ``offsets_for_times`` where the
broker answers it correctly — checked: the record at the returned offset is at or after the
start and the one before it is earlier — and from a scan from the beginning where it does not
(the embedded Tansu broker answers offset 0 for any time). Record timestamps are wall-clock
times while event times follow the accelerated clock of a simulation (``KAIFONG_TIME_SCALE``),
so the range is mapped back to wall time, with :data:`LOOKBACK_S` of slack for late producers.

The daily report (:func:`daily_report`, :func:`daily_report_once`) covers the previous local day
(UTC+8), is scheduled by the worker at :func:`report_cron` (after the day's last deadline), is
made by one worker (a Redis claim), and is announced in the Redis hash ``kf:reports``
(local date → output directory) for the console to list.
"""

from __future__ import annotations

import asyncio
import csv
import html
import itertools
import logging
import math
import shutil
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from kaifong.agents.core import clock, drillplan
from kaifong.agents.core.errors import Refused
from kaifong.schemas.validation import InvalidEvent, parse
from kaifong.streams.city import DISTRICTS
from kaifong.streams.settings import Ring, Settings, parse_rings
from kaifong.streams.topics import (
    ASSIGNMENTS,
    DRILLS_ISSUED,
    DRILLS_RESULTS,
    ESCALATIONS,
    INCIDENTS_REPORTED,
    INCIDENTS_STATE,
    INCIDENTS_UPDATES,
    UNITS_REGISTRY,
    TopicSpec,
)

log = logging.getLogger(__name__)

__all__ = [
    "CITY_TZ",
    "ReportError",
    "Window",
    "compute",
    "daily_report",
    "daily_report_once",
    "generate",
    "load_rings",
    "parse_when",
    "read_inputs",
    "render_pdf",
    "replay",
    "report_cron",
    "yesterday",
]

#: The city's local time (Asia/Shanghai has no daylight saving): days and dates are local.
CITY_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")
#: Updates are read this long past ``to`` + the longest ring target (late-published milestones).
UPDATE_MARGIN_S = 300.0
#: Wall-clock slack when mapping event times to record timestamps (producer clock skew, late
#: publication); a record this much outside the mapped range is still read and then filtered.
LOOKBACK_S = 900.0
#: Slowest incidents listed with their timelines.
SLOWEST_N = 10
#: A unit with at least this many failed or unanswered drills in the range "fails repeatedly".
REPEAT_FAILS = 2
#: Drill outcomes that count as a failure for :data:`REPEAT_FAILS`.
FAILING = frozenset({"fail", "no_answer"})
#: Redis hash of produced daily reports: local date (ISO) → output directory.
REPORTS_KEY = "kf:reports"
#: How long a worker's claim on producing one day's report holds: a worker that dies while
#: making it hands the day to the others after this (a failure hands it back at once).
CLAIM_TTL_S = 6 * 3600
#: Default local hour of the daily report: after the last deadline of the day (≤ 20 min into
#: the next day with the default rings) plus the update margin.
DEFAULT_REPORT_HOUR = 1
#: CSV files are written with a BOM so that spreadsheet programs read Chinese names as UTF-8.
CSV_ENCODING = "utf-8-sig"

#: Incident-level outcome classes (map colours and the slowest list).
OUTCOME_COLOURS = {"breached": "#c62828", "met": "#2e7d32", "open": "#9e9e9e", "exercise": "#1565c0"}
CJK_FONTS = ('"Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Micro Hei", '
             '"PingFang SC", "Microsoft YaHei", "Noto Serif CJK SC", sans-serif')


class ReportError(Exception):
    """A report could not be made (bad input, broker unreachable, no chromium…): a clear reason."""


# ============================================================================ inputs
@dataclass(frozen=True, slots=True)
class Window:
    """The report's range ``[start, end)`` in event time, and an optional district filter."""

    start: datetime
    end: datetime
    district: str | None = None

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("report times need a UTC offset")
        if self.end <= self.start:
            raise ValueError(f"--to ({self.end.isoformat()}) must be after --from ({self.start.isoformat()})")

    def holds(self, t: datetime) -> bool:
        """True if ``t`` is in ``[start, end)``."""
        return self.start <= t < self.end


def parse_when(text: str) -> datetime:
    """A report bound: an RFC 3339 time, or a local date (midnight in the city's time zone).

    A time without an offset is read as city-local time: the command centre thinks in it.

    >>> parse_when("2026-11-29").isoformat()
    '2026-11-29T00:00:00+08:00'
    >>> parse_when("2026-11-29T14:00:00Z").isoformat()
    '2026-11-29T14:00:00+00:00'
    """
    value = text.strip()
    if len(value) == 10:
        return datetime.combine(date.fromisoformat(value), datetime.min.time(), CITY_TZ)
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither a date (YYYY-MM-DD) nor an RFC 3339 time") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=CITY_TZ)


def day_window(day: date, district: str | None = None) -> Window:
    """The local day ``day`` as a window."""
    start = datetime.combine(day, datetime.min.time(), CITY_TZ)
    return Window(start, start + timedelta(days=1), district)


def load_rings(path: Path) -> tuple[Ring, ...]:
    """A what-if ring table from a file: ``name:seconds,…`` text or JSON.

    JSON may be that same string, an object ``{"name": seconds, …}`` (ring 1 first) or a list
    of ``{"name": …, "target_s": …}``. Every form goes through :func:`parse_rings`, so the
    rules are the ones ``KAIFONG_RINGS`` obeys (positive, increasing targets).
    """
    try:
        text = path.read_text("utf-8").strip()
    except OSError as exc:
        raise ReportError(f"cannot read ring table {path}: {exc}") from None
    if text[:1] in "{[\"":
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ReportError(f"{path}: not valid JSON: {exc}") from None
        if isinstance(data, dict):
            text = ",".join(f"{name}:{seconds}" for name, seconds in data.items())
        elif isinstance(data, list):
            try:
                text = ",".join(f"{r['name']}:{r.get('target_s', r.get('seconds'))}" for r in data)
            except (TypeError, KeyError):
                raise ReportError(f"{path}: expected a list of {{name, target_s}} objects") from None
        elif isinstance(data, str):
            text = data
        else:
            raise ReportError(f"{path}: expected a JSON object, list or string")
    try:
        return parse_rings(text)
    except ValueError as exc:
        raise ReportError(f"{path}: {exc}") from None


@dataclass
class Inputs:
    """Everything read from the topics for one window, already filtered to it."""

    window: Window
    #: Reports of incidents reported in the window (the first valid report of each incident).
    reports: list[dict[str, Any]] = field(default_factory=list)
    #: Valid updates of those incidents (offset order), up to the read horizon.
    updates: list[dict[str, Any]] = field(default_factory=list)
    assignments: list[dict[str, Any]] = field(default_factory=list)
    #: Escalation records (first notifications and re-notifications) of those incidents.
    escalations: list[dict[str, Any]] = field(default_factory=list)
    #: Latest state per incident from the compacted state topic (the worker's live view).
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    drills_issued: list[dict[str, Any]] = field(default_factory=list)
    drill_results: list[dict[str, Any]] = field(default_factory=list)
    #: The unit registry (latest record per unit), filtered to the district if one is given.
    registry: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: How each topic's start offsets were found: topic suffix → method → partitions.
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    records_read: int = 0
    invalid: int = 0


def to_wall(settings: Settings, t: datetime) -> float:
    """Unix wall time at which the (possibly accelerated) clock of ``settings`` shows ``t``.

    Record timestamps are wall time; event times follow ``Settings.clock``, which runs
    ``time_scale`` times faster from ``time_epoch``. This is that clock's inverse.
    """
    ts = t.timestamp()
    if settings.time_scale == 1.0:
        return ts
    return settings.time_epoch + (ts - settings.time_epoch) / settings.time_scale


def _consumer(settings: Settings) -> Any:
    from kafka import KafkaConsumer

    from kaifong.streams import security

    # No group: the report only reads, and must never move the workers' committed offsets.
    return KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                         client_id="kaifong-report", fetch_max_wait_ms=50, auto_offset_reset="earliest",
                         max_partition_fetch_bytes=8 * 1024 * 1024, request_timeout_ms=30_000,
                         **security.kafka_python_kwargs(settings))


def _first_records(consumer: Any, seeks: dict[Any, int], ends: dict[Any, int], count: int = 2,
                   timeout_s: float = 10.0) -> dict[Any, list[Any]]:
    """Up to ``count`` records of each partition from the given offsets, in one poll loop."""
    got: dict[Any, list[Any]] = {tp: [] for tp in seeks}
    todo = {tp for tp, off in seeks.items() if off < ends[tp]}
    if not todo:
        return got
    consumer.assign(list(todo))
    for tp in todo:
        consumer.seek(tp, seeks[tp])
    deadline = time.monotonic() + timeout_s
    while todo and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=200, max_records=500).items():
            if tp not in todo:
                continue
            got[tp].extend(r for r in records if r.offset >= seeks[tp])
            if len(got[tp]) >= count or (records and records[-1].offset + 1 >= ends[tp]):
                got[tp] = got[tp][:count]
                todo.discard(tp)
                consumer.pause(tp)
    consumer.unsubscribe()
    return got


def start_offsets(consumer: Any, parts: list[Any], target_ms: int, beginnings: dict[Any, int],
                  ends: dict[Any, int]) -> tuple[dict[Any, int], dict[Any, str]]:
    """First offset of each partition at or after ``target_ms``, and how it was found.

    ``offsets_for_times`` is trusted only after a check: the record at the answer has a
    timestamp ≥ ``target_ms`` and the record just before it (if any) one < ``target_ms``; an
    answer of "none" needs the partition's last record to be earlier. Anything else (Tansu
    answers offset 0 for every time; an old broker refuses the request) means a scan of the
    partition from its beginning — slower, never wrong.
    """
    from kafka.errors import KafkaError

    starts = {tp: beginnings[tp] for tp in parts}
    methods = dict.fromkeys(parts, "scan")
    live = [tp for tp in parts if ends[tp] > beginnings[tp]]
    if not live:
        return starts, dict.fromkeys(parts, "empty")
    try:
        answers = consumer.offsets_for_times(dict.fromkeys(live, target_ms))
    except (KafkaError, ValueError) as exc:
        log.info("offsets_for_times refused (%s): scanning from the beginning", type(exc).__name__)
        return starts, methods
    seeks: dict[Any, int] = {}
    for tp in live:
        answer = answers.get(tp)
        offset = ends[tp] if answer is None else int(answer.offset)
        # Read from the record before the answer: it and the answer are the two witnesses.
        seeks[tp] = max(beginnings[tp], offset - 1)
    witnesses = _first_records(consumer, seeks, ends)
    for tp in live:
        answer = answers.get(tp)
        offset = ends[tp] if answer is None else int(answer.offset)
        by_offset = {r.offset: r for r in witnesses.get(tp, [])}
        at, before = by_offset.get(offset), by_offset.get(offset - 1)
        ok_at = offset >= ends[tp] or (at is not None and at.timestamp >= target_ms)
        ok_before = offset <= beginnings[tp] or (before is not None and before.timestamp < target_ms)
        if ok_at and ok_before:
            starts[tp], methods[tp] = offset, "offsets_for_times"
    for tp in parts:
        if tp not in live:
            methods[tp] = "empty"
    return starts, methods


def _read(consumer: Any, starts: dict[Any, int], ends: dict[Any, int], stop_ms: int | None,
          idle_timeout_s: float = 20.0) -> Iterator[Any]:
    """Records from ``starts`` to ``ends`` (exclusive), a partition stopping early at the first
    record stamped after ``stop_ms``. Raises :class:`ReportError` if the broker stops answering."""
    todo = {tp for tp in starts if starts[tp] < ends[tp]}
    if not todo:
        return
    consumer.assign(list(todo))
    for tp in todo:
        consumer.seek(tp, starts[tp])
    last_progress = time.monotonic()
    while todo:
        batch = consumer.poll(timeout_ms=200, max_records=5000)
        if not batch and time.monotonic() - last_progress > idle_timeout_s:
            raise ReportError(f"the broker stopped answering while reading {sorted(str(tp) for tp in todo)[:3]}")
        for tp, records in batch.items():
            if tp not in todo:
                continue
            last_progress = time.monotonic()
            done = False
            for rec in records:
                if rec.offset >= ends[tp] or (stop_ms is not None and rec.timestamp > stop_ms):
                    done = True
                    break
                yield rec
            if done or (records and records[-1].offset + 1 >= ends[tp]):
                todo.discard(tp)
                consumer.pause(tp)
    consumer.unsubscribe()


def _parts(consumer: Any, name: str) -> list[Any]:
    from kafka import TopicPartition

    return [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())]


def read_inputs(settings: Settings, window: Window, read_until: datetime, *,
                lookback_s: float = LOOKBACK_S) -> Inputs:
    """Read and filter every topic the report needs (blocking; kafka-python).

    ``read_until`` bounds the updates and decisions read (event time); the start of each
    partition is found by :func:`start_offsets` from ``window.start`` mapped to wall time.
    """
    from kafka.errors import KafkaError

    from kaifong.streams.admin import true_end_offsets

    inputs = Inputs(window)
    try:
        consumer = _consumer(settings)
    except KafkaError as exc:
        raise ReportError(f"broker {settings.broker_url} not reachable: {exc}") from None
    try:
        windowed: tuple[TopicSpec, ...] = (INCIDENTS_REPORTED, INCIDENTS_UPDATES, ASSIGNMENTS, ESCALATIONS,
                                           INCIDENTS_STATE, DRILLS_ISSUED, DRILLS_RESULTS)
        names = {spec: spec.name(settings) for spec in (*windowed, UNITS_REGISTRY)}
        parts = {spec: _parts(consumer, name) for spec, name in names.items()}
        missing = [names[s] for s in (INCIDENTS_REPORTED, INCIDENTS_UPDATES) if not parts[s]]
        if missing:
            raise ReportError(f"topic(s) {', '.join(missing)} not found on {settings.broker_url} "
                              "(wrong KAIFONG_TOPIC_PREFIX or broker?)")
        every = [tp for ps in parts.values() for tp in ps]
        beginnings = consumer.beginning_offsets(every)
        ends = true_end_offsets(consumer, every)  # Tansu's ListOffsets is wrong for batches
        start_ms = int((to_wall(settings, window.start) - lookback_s) * 1000)
        stop_ms = int((to_wall(settings, read_until) + lookback_s) * 1000)
        raw: dict[TopicSpec, list[Any]] = {}
        for spec in windowed:
            starts, methods = start_offsets(consumer, parts[spec], start_ms, beginnings, ends)
            inputs.sources[spec.suffix] = dict(Counter(methods.values()))
            raw[spec] = sorted(_read(consumer, starts, ends, stop_ms), key=lambda r: (r.partition, r.offset))
        # The registry is compacted and small: the whole topic, latest record per unit.
        raw[UNITS_REGISTRY] = sorted(_read(consumer, {tp: beginnings[tp] for tp in parts[UNITS_REGISTRY]}, ends,
                                           None), key=lambda r: (r.partition, r.offset))
        inputs.sources[UNITS_REGISTRY.suffix] = {"beginning": len(parts[UNITS_REGISTRY])}
    except KafkaError as exc:
        raise ReportError(f"reading from {settings.broker_url} failed: {exc}") from None
    finally:
        consumer.close()
    inputs.records_read = sum(len(v) for v in raw.values())
    _select(settings, inputs, raw, read_until)
    return inputs


def _loads(value: bytes | None) -> dict[str, Any] | None:
    """An output record's JSON body, or None for tombstones and anything unreadable."""
    if not value:
        return None
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _select(settings: Settings, inputs: Inputs, raw: dict[TopicSpec, list[Any]], read_until: datetime) -> None:
    """Decode and keep what belongs to the window (the same validation as the worker's intake)."""
    window = inputs.window
    seen_events: set[str] = set()

    def valid(event_type: str, value: bytes | None) -> dict[str, Any] | None:
        # The worker dead-letters what fails this and drops repeated event ids: so do we.
        try:
            data = parse(event_type, value, max_bytes=settings.max_event_bytes)
        except InvalidEvent:
            inputs.invalid += 1
            return None
        key = f"{event_type}:{data['event_id']}"
        if key in seen_events:
            return None
        seen_events.add(key)
        return data

    registry: dict[str, dict[str, Any]] = {}
    for rec in raw.get(UNITS_REGISTRY, []):
        unit_id = rec.key.decode("utf-8", "replace") if rec.key else None
        body = _loads(rec.value)
        if body is None:
            if unit_id:
                registry.pop(unit_id, None)  # a tombstone deletes the unit
            continue
        registry[str(body.get("unit_id", unit_id))] = body
    inputs.registry = {u: b for u, b in registry.items()
                       if window.district is None or b.get("district") == window.district}

    reports: dict[str, dict[str, Any]] = {}
    for rec in raw.get(INCIDENTS_REPORTED, []):
        data = valid("incident-reported", rec.value)
        if data is None or data["incident_id"] in reports:
            continue  # the first report of an incident wins (the worker opens it with SET NX)
        reports[data["incident_id"]] = data
    inputs.reports = [r for r in reports.values()
                      if window.holds(clock.parse_time(r["reported_at"]))
                      and (window.district is None or r.get("district") == window.district)]
    ids = {r["incident_id"] for r in inputs.reports}
    for rec in raw.get(INCIDENTS_UPDATES, []):
        data = valid("incident-update", rec.value)
        if data is not None and data["incident_id"] in ids and clock.parse_time(data["at"]) <= read_until:
            inputs.updates.append(data)
    seen_out: set[tuple[str, ...]] = set()
    for rec in raw.get(ASSIGNMENTS, []):
        body = _loads(rec.value)
        if body is not None and body.get("incident_id") in ids:
            key = ("a", str(body.get("assignment_id")), "")
            if key not in seen_out:  # an outbox re-send repeats a record: keep one
                seen_out.add(key)
                inputs.assignments.append(body)
    for rec in raw.get(ESCALATIONS, []):
        body = _loads(rec.value)
        if body is not None and body.get("incident_id") in ids:
            key = ("e", str(body.get("escalation_id")), str(body.get("notification", 0)))
            if key not in seen_out:
                seen_out.add(key)
                inputs.escalations.append(body)
    for rec in raw.get(INCIDENTS_STATE, []):
        body = _loads(rec.value)
        if body is not None and body.get("incident_id") in ids:
            prev = inputs.states.get(body["incident_id"])
            if prev is None or int(body.get("version", 0)) >= int(prev.get("version", 0)):
                inputs.states[body["incident_id"]] = body
    issued: dict[str, dict[str, Any]] = {}
    for rec in raw.get(DRILLS_ISSUED, []):
        body = _loads(rec.value)
        if body is None or "issued_at" not in body or body.get("drill_id") in issued:
            continue
        district = body.get("district") or registry.get(str(body.get("unit_id")), {}).get("district")
        if window.holds(clock.parse_time(body["issued_at"])) and (window.district in (None, district)):
            issued[body["drill_id"]] = {**body, "district": district}
    inputs.drills_issued = list(issued.values())
    results: dict[str, dict[str, Any]] = {}
    for rec in raw.get(DRILLS_RESULTS, []):
        body = _loads(rec.value)
        if body is None or "issued_at" not in body or "outcome" not in body:
            continue
        district = (body.get("district") or issued.get(str(body.get("drill_id")), {}).get("district")
                    or registry.get(str(body.get("unit_id")), {}).get("district"))
        if window.holds(clock.parse_time(body["issued_at"])) and (window.district in (None, district)):
            results[body["drill_id"]] = {**body, "district": district}  # the latest result of a drill
    inputs.drill_results = list(results.values())


# ============================================================================ replay
@dataclass
class Replayed:
    """One incident replayed through :mod:`kaifong.agents.core.clock` under one ring table."""

    report: dict[str, Any]
    state: dict[str, Any]
    #: Ring changes in the order the clock produced them, with their event time.
    changes: list[tuple[datetime, clock.RingChange]]
    #: Updates the clock refused (before the report, after the incident closed …).
    refused: int = 0
    #: Event time of the update that resolved or cancelled the incident, if one did.
    closed_at: datetime | None = None
    #: Deadlines after this were not decided (the report's horizon for this incident).
    horizon: datetime | None = None

    @property
    def incident_id(self) -> str:
        """The incident's id."""
        return str(self.report["incident_id"])

    @property
    def exercise(self) -> bool:
        """Whether this is an exercise incident (never counted in compliance)."""
        return bool(self.report["exercise"])

    def ring_states(self) -> dict[int, str]:
        """Ring number → met | breached | stopped | pending."""
        return {int(r["ring"]): str(r["state"]) for r in self.state["rings"]}

    def outcome(self) -> str:
        """The incident's class on the map: exercise, breached (any ring), met, or open."""
        if self.exercise:
            return "exercise"
        states = set(self.ring_states().values())
        return "breached" if "breached" in states else "met" if "met" in states else "open"

    def first_on_scene_s(self) -> float | None:
        """Seconds from the report to the first unit on scene (any ring), if any arrived."""
        seconds = [c.seconds for _, c in self.changes if c.seconds is not None]
        return min(seconds) if seconds else None

    def waited_s(self) -> float:
        """How long the scene waited for its first unit: the arrival, or — when nobody came —
        until the incident was closed (or the horizon). A false alarm cancelled after a minute
        waited a minute; an incident nobody reached all day waited all day."""
        first = self.first_on_scene_s()
        if first is not None:
            return first
        end = self.closed_at or self.horizon
        reported = clock.parse_time(self.report["reported_at"])
        return max(0.0, (end - reported).total_seconds()) if end is not None else math.inf


def replay(report: dict[str, Any], assignments: Sequence[dict[str, Any]], updates: Sequence[dict[str, Any]],
           rings: tuple[Ring, ...], horizon: datetime) -> Replayed:
    """Replay one incident: open, first assignments, then updates, deadlines and re-dispatches
    in event-time order, through the worker's own clock functions.

    ``updates`` must be in the order the worker received them (offset order): it breaks ties
    between updates stamped with the same time. Deadlines after ``horizon`` are left pending.
    """
    reported_at = clock.parse_time(report["reported_at"])
    state = clock.open_incident(report, rings, reported_at)
    rounds = sorted(assignments, key=lambda a: (int(a.get("attempt", 0)), a["decided_at"], int(a["ring"])))
    first = [a for a in rounds if int(a.get("attempt", 0)) == 0]
    if first:
        state = clock.with_assignments(state, first, reported_at)
    # (time, order at equal times, arrival order, kind, item): updates before the deadline they
    # share a timestamp with (an arrival *at* the deadline meets it), re-dispatches after it.
    seq = itertools.count()
    queue: list[tuple[datetime, int, int, str, Any]] = []
    queue += [(clock.parse_time(u["at"]), 0, next(seq), "update", u) for u in updates]
    queue += [(clock.parse_time(r["deadline_at"]), 1, next(seq), "deadline", int(r["ring"])) for r in state["rings"]]
    queue += [(clock.parse_time(a["decided_at"]), 2, next(seq), "assign", a)
              for a in rounds if int(a.get("attempt", 0)) > 0]
    queue.sort(key=lambda e: e[:3])
    changes: list[tuple[datetime, clock.RingChange]] = []
    refused = 0
    closed_at: datetime | None = None
    for at, _, _, kind, item in queue:
        if kind == "update":
            if item["kind"] == "escalation_acknowledged":
                continue  # acknowledges an escalation; the ring clocks do not see it
            try:
                state, closed = clock.apply_update(state, item, at)
            except Refused:
                refused += 1
                continue
            changes += [(at, c) for c in closed]
            if state["status"] in clock.TERMINAL and closed_at is None:
                closed_at = at
        elif kind == "deadline":
            if at > horizon:
                continue  # not yet decided when the report was made
            breached = clock.breach(state, item, at)
            if breached is not None:
                state = breached
                changes.append((at, clock.RingChange(item, "breached", None)))
        else:
            state = clock.with_assignments(state, [item], at)
    return Replayed(report, state, changes, refused, closed_at, horizon)


def rings_of_state(state: dict[str, Any]) -> tuple[Ring, ...] | None:
    """The ring table an incident was opened with, as recorded in its state (if complete)."""
    try:
        rings = tuple(Ring(int(r["ring"]), str(r["name"]), float(r["target_s"])) for r in state["rings"])
    except (KeyError, TypeError, ValueError):
        return None
    return rings or None


# ============================================================================ figures
def _pct(met: int, breached: int) -> float | None:
    total = met + breached
    return round(100.0 * met / total, 1) if total else None


def _quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile of sorted ``values`` (None if empty)."""
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def _tally(replays: Iterable[Replayed], group: Callable[[Replayed], tuple[str, ...]]
           ) -> dict[tuple[tuple[str, ...], int], Counter[str]]:
    out: dict[tuple[tuple[str, ...], int], Counter[str]] = defaultdict(Counter)
    for rp in replays:
        key = group(rp)
        for ring, st in rp.ring_states().items():
            out[(key, ring)][st] += 1
    return out


def _rows(tally: dict[tuple[tuple[str, ...], int], Counter[str]], names: tuple[str, ...],
          rings: dict[int, Ring]) -> list[dict[str, Any]]:
    rows = []
    for (key, ring), c in sorted(tally.items()):
        r = rings.get(ring)
        rows.append({**dict(zip(names, key, strict=True)), "ring": ring, "name": r.name if r else f"ring {ring}",
                     "target_s": r.target_s if r else None, "met": c["met"], "breached": c["breached"],
                     "stopped": c["stopped"], "pending": c["pending"], "total": c["met"] + c["breached"],
                     "met_pct": _pct(c["met"], c["breached"])})
    return rows


def _district(rp: Replayed) -> str:
    return str(rp.report.get("district") or "—")


def _compliance(replays: list[Replayed], rings: tuple[Ring, ...]) -> dict[str, list[dict[str, Any]]]:
    by_number = {r.number: r for r in rings}
    return {
        "by_ring": _rows(_tally(replays, lambda rp: ()), (), by_number),
        "by_district": _rows(_tally(replays, lambda rp: (_district(rp),)), ("district",), by_number),
        "by_grid": _rows(_tally(replays, lambda rp: (_district(rp), str(rp.report.get("grid") or "—"))),
                         ("district", "grid"), by_number),
    }


def _response_times(replays: list[Replayed], rings: tuple[Ring, ...]) -> dict[str, Any]:
    """Per ring: every measured arrival (the worker's response histogram observes the same)."""
    out: dict[str, Any] = {}
    samples: dict[int, list[tuple[float, str, Replayed]]] = defaultdict(list)
    for rp in replays:
        for _, ch in rp.changes:
            if ch.seconds is not None:
                samples[ch.ring].append((ch.seconds, ch.outcome, rp))
    for ring in rings:
        values = sorted(s for s, _, _ in samples.get(ring.number, []))
        within = sum(1 for v in values if v <= ring.target_s)
        out[str(ring.number)] = {
            "ring": ring.number, "name": ring.name, "target_s": ring.target_s, "n": len(values),
            "within_target": within, "p50": _quantile(values, 0.5), "p90": _quantile(values, 0.9),
            "max": values[-1] if values else None, "values": values,
        }
    out["_rows"] = [{"incident_id": rp.incident_id, "district": _district(rp), "grid": rp.report.get("grid") or "",
                     "ring": ring, "seconds": s, "outcome": o}
                    for ring, items in sorted(samples.items()) for s, o, rp in items]
    return out


def _ack_index(updates: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The acknowledgement of each escalation: the first one received, as the worker keeps it
    (``updates`` are in offset order, and one incident's updates share a partition)."""
    acks: dict[str, dict[str, Any]] = {}
    for u in updates:
        if u["kind"] == "escalation_acknowledged" and u.get("escalation_id"):
            acks.setdefault(u["escalation_id"], u)
    return acks


def _escalations(inputs: Inputs, by_id: dict[str, dict[str, Any]]) -> dict[str, Any]:
    acks = _ack_index(inputs.updates)
    first = {e["escalation_id"]: e for e in inputs.escalations if int(e.get("notification", 0)) == 0}
    renotified = Counter(e["escalation_id"] for e in inputs.escalations if int(e.get("notification", 0)) > 0)
    rows = []
    for esc_id, e in sorted(first.items(), key=lambda kv: clock.parse_time(kv[1]["raised_at"])):
        ack = acks.get(esc_id)
        ack_s = None
        if ack is not None:
            ack_s = round(max(0.0, (clock.parse_time(ack["at"]) - clock.parse_time(e["raised_at"])).total_seconds()), 3)
        report = by_id.get(e["incident_id"], {})
        rows.append({"escalation_id": esc_id, "incident_id": e["incident_id"],
                     "district": e.get("district") or report.get("district") or "",
                     "grid": e.get("grid") or report.get("grid") or "", "ring": e["ring"], "level": e["level"],
                     "reason": e["reason"], "raised_at": e["raised_at"], "deadline_at": e["deadline_at"],
                     "breached_by_s": e.get("breached_by_s"), "renotifications": renotified.get(esc_id, 0),
                     "acked_at": ack["at"] if ack else None, "acked_by": ack.get("by") if ack else None,
                     "ack_s": ack_s, "exercise": bool(e.get("exercise"))})
    real = [r for r in rows if not r["exercise"]]
    by_level_reason = Counter((r["level"], r["reason"]) for r in real)
    ack_by_level = []
    for level in clock.LEVELS:
        mine = [r for r in real if r["level"] == level]
        times = sorted(r["ack_s"] for r in mine if r["ack_s"] is not None)
        if mine:
            ack_by_level.append({"level": level, "raised": len(mine), "acknowledged": len(times),
                                 "unacknowledged": len(mine) - len(times), "p50_s": _quantile(times, 0.5),
                                 "p90_s": _quantile(times, 0.9), "max_s": times[-1] if times else None})
    return {"rows": rows, "real": len(real), "exercise": len(rows) - len(real),
            "by_level_reason": [{"level": lv, "reason": rs, "count": n}
                                for (lv, rs), n in sorted(by_level_reason.items(),
                                                          key=lambda kv: (clock.LEVELS.index(kv[0][0]), kv[0][1]))],
            "ack_by_level": ack_by_level}


def _drills(inputs: Inputs) -> dict[str, Any]:
    results = inputs.drill_results
    rates = drillplan.pass_rates((r["district"] or "—", r["outcome"]) for r in results)
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        outcomes[r["district"] or "—"][r["outcome"]] += 1
    issued_by: Counter[str] = Counter(d["district"] or "—" for d in inputs.drills_issued)
    drilled = {d["unit_id"] for d in inputs.drills_issued} | {r["unit_id"] for r in results}
    never = sorted(u for u in inputs.registry if u not in drilled)
    never_by: Counter[str] = Counter(str(inputs.registry[u].get("district") or "—") for u in never)
    units_by: Counter[str] = Counter(str(b.get("district") or "—") for b in inputs.registry.values())
    fails: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(results, key=lambda r: clock.parse_time(r["issued_at"])):
        if r["outcome"] in FAILING:
            fails[r["unit_id"]].append(r)
    failing = [{"unit_id": u, "district": rs[0]["district"] or "", "failures": len(rs),
                "outcomes": [r["outcome"] for r in rs], "last_issued_at": rs[-1]["issued_at"]}
               for u, rs in sorted(fails.items()) if len(rs) >= REPEAT_FAILS]
    failing_by = Counter(f["district"] or "—" for f in failing)
    districts = sorted(set(issued_by) | set(outcomes) | set(units_by))
    rows = [{"district": d, "units": units_by.get(d, 0), "issued": issued_by.get(d, 0),
             "results": sum(outcomes[d].values()),
             **{o: outcomes[d].get(o, 0) for o in drillplan.OUTCOMES},
             "pass_rate": round(100 * rates[d], 1) if d in rates else None,
             "never_drilled": never_by.get(d, 0), "failing_repeatedly": failing_by.get(d, 0)}
            for d in districts]
    return {"rows": rows, "issued": len(inputs.drills_issued), "results": len(results),
            "registry_units": len(inputs.registry), "never_drilled": never, "failing_repeatedly": failing}


def _timeline(rp: Replayed, inputs_by_incident: dict[str, dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """What happened to one incident, seconds after its report, in order."""
    t0 = clock.parse_time(rp.report["reported_at"])
    mine = inputs_by_incident.get(rp.incident_id, {})
    entries: list[tuple[datetime, int, str, str]] = [(t0, 0, "reported", f"reported ({rp.report['category']}, "
                                                                           f"severity {rp.report['severity']})")]
    for a in mine.get("assignments", []):
        what = f"ring {a['ring']}: {len(a['units'])} unit(s) assigned" + (
            f" (re-dispatch {a.get('attempt')})" if int(a.get("attempt", 0)) else "")
        entries.append((clock.parse_time(a["decided_at"]), 1, "assigned", what))
    for u in mine.get("updates", []):
        if u["kind"] == "escalation_acknowledged":
            entries.append((clock.parse_time(u["at"]), 3, "ack", f"escalation acknowledged ({u.get('escalation_id')})"))
        else:
            who = f" by {u['unit_id']}" if u.get("unit_id") else ""
            entries.append((clock.parse_time(u["at"]), 2, u["kind"], f"{u['kind']}{who}"))
    entries.extend((clock.parse_time(e["raised_at"]), 3, "escalation",
                    f"escalated to {e['level']} ({e['reason']}, ring {e['ring']})")
                   for e in mine.get("escalations", []) if int(e.get("notification", 0)) == 0)
    for at, ch in rp.changes:
        if ch.outcome in ("met", "breached"):
            extra = f" in {ch.seconds:g} s" if ch.seconds is not None else " (deadline passed)"
            entries.append((at, 4, ch.outcome, f"ring {ch.ring} {ch.outcome}{extra}"))
    entries.sort(key=lambda e: (e[0], e[1]))
    return [{"t_s": round((at - t0).total_seconds(), 3), "kind": kind, "what": what} for at, _, kind, what in entries]


def compute(inputs: Inputs, rings: tuple[Ring, ...], *, what_if: tuple[Ring, ...] | None = None,
            as_of: datetime | None = None) -> dict[str, Any]:
    """Every figure of the report from the inputs (pure: no I/O).

    ``rings`` is the ring table in force (``KAIFONG_RINGS``) for incidents whose state does not
    record its own; ``what_if`` replays every real incident again under another table.
    """
    window = inputs.window
    as_of = as_of or datetime.now(UTC)
    max_target = max(r.target_s for r in rings)
    horizon = min(window.end + timedelta(seconds=max_target), as_of)
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for kind, items in (("updates", inputs.updates), ("assignments", inputs.assignments),
                        ("escalations", inputs.escalations)):
        for item in items:
            grouped[item["incident_id"]][kind].append(item)
    recorded = 0
    real_runs: list[Replayed] = []
    for report in sorted(inputs.reports, key=lambda r: (clock.parse_time(r["reported_at"]), r["incident_id"])):
        mine = grouped.get(report["incident_id"], {})
        state = inputs.states.get(report["incident_id"])
        table = rings_of_state(state) if state is not None else None
        recorded += table is not None
        # Each incident keeps the ring table it was opened with (the table may change over time).
        real_runs.append(replay(report, mine.get("assignments", []), mine.get("updates", []), table or rings,
                                min(window.end + timedelta(seconds=max(r.target_s for r in (table or rings))), as_of)))
    real = [rp for rp in real_runs if not rp.exercise]
    exercise = [rp for rp in real_runs if rp.exercise]
    figures: dict[str, Any] = {
        "window": {"from": window.start.isoformat(), "to": window.end.isoformat(), "district": window.district,
                   "horizon": horizon.isoformat(), "as_of": as_of.isoformat()},
        "rings": {"configured": [_ring_dict(r) for r in rings],
                  "what_if": [_ring_dict(r) for r in what_if] if what_if else None,
                  "incidents_with_recorded_table": recorded},
        "incidents": {"real": len(real), "exercise": len(exercise),
                      "refused_updates": sum(rp.refused for rp in real_runs)},
        "compliance": {"real": _compliance(real, rings), "what_if": None,
                       "exercise": _compliance(exercise, rings)["by_ring"]},
        "response_times": _response_times(real, rings),
    }
    per_incident = [{"incident_id": rp.incident_id, "district": rp.report.get("district"),
                     "grid": rp.report.get("grid"), "exercise": rp.exercise,
                     "reported_at": rp.report["reported_at"], "outcome": rp.outcome(),
                     "location": rp.report["location"], "rings": {str(k): v for k, v in rp.ring_states().items()}}
                    for rp in real_runs]
    if what_if:
        w_max = max(r.target_s for r in what_if)
        w_horizon = min(window.end + timedelta(seconds=w_max), as_of)
        alt = [replay(rp.report, grouped.get(rp.incident_id, {}).get("assignments", []),
                      grouped.get(rp.incident_id, {}).get("updates", []), what_if, w_horizon) for rp in real]
        figures["compliance"]["what_if"] = _compliance(alt, what_if)
        alt_states = {rp.incident_id: rp.ring_states() for rp in alt}
        for row in per_incident:
            if row["incident_id"] in alt_states:
                row["what_if"] = {str(k): v for k, v in alt_states[row["incident_id"]].items()}
    figures["per_incident"] = per_incident
    # Disagreements with the worker's live state: the worker decides by processing order.
    disagreements = []
    for rp in real:
        state = inputs.states.get(rp.incident_id)
        if state is None:
            continue
        live = {int(r["ring"]): r["state"] for r in state.get("rings", [])}
        for ring, st in rp.ring_states().items():
            if live.get(ring) in ("met", "breached") and live.get(ring) != st:
                disagreements.append({"incident_id": rp.incident_id, "ring": ring, "report": st, "live": live[ring]})
    figures["disagreements"] = disagreements
    by_id = {r["incident_id"]: r for r in inputs.reports}
    figures["escalations"] = _escalations(inputs, by_id)
    figures["drills"] = _drills(inputs)
    slow = sorted(real, key=lambda rp: (-rp.waited_s(),
                                        -sum(1 for s in rp.ring_states().values() if s == "breached"),
                                        clock.parse_time(rp.report["reported_at"])))[:SLOWEST_N]
    figures["slowest"] = [{"incident_id": rp.incident_id, "district": rp.report.get("district"),
                           "grid": rp.report.get("grid"), "category": rp.report["category"],
                           "severity": rp.report["severity"], "reported_at": rp.report["reported_at"],
                           "first_on_scene_s": rp.first_on_scene_s(), "waited_s": round(rp.waited_s(), 3),
                           "status": rp.state["status"],
                           "rings": {str(k): v for k, v in rp.ring_states().items()},
                           "targets": {str(r["ring"]): r["target_s"] for r in rp.state["rings"]},
                           "timeline": _timeline(rp, grouped)} for rp in slow]
    figures["sources"] = {"topics": inputs.sources, "records_read": inputs.records_read,
                          "invalid_input_records": inputs.invalid}
    return figures


def _ring_dict(r: Ring) -> dict[str, Any]:
    return {"ring": r.number, "name": r.name, "target_s": r.target_s}


# ============================================================================ files
def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with path.open("w", encoding=CSV_ENCODING, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)


def write_files(figures: dict[str, Any], out: Path) -> list[Path]:
    """``figures.json`` and the CSV files; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures.json").write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    cols = ["ring", "name", "target_s", "met", "breached", "stopped", "pending", "total", "met_pct"]
    tables = [("real", figures["compliance"]["real"])]
    if figures["compliance"]["what_if"]:
        tables.append(("what_if", figures["compliance"]["what_if"]))
    _write_csv(out / "compliance_by_district.csv", ["table", "district", *cols],
               [[t, r["district"], *[r[c] for c in cols]] for t, c in tables for r in c["by_district"]])
    _write_csv(out / "compliance_by_grid.csv", ["table", "district", "grid", *cols],
               [[t, r["district"], r["grid"], *[r[c] for c in cols]] for t, c in tables for r in c["by_grid"]])
    targets = {str(r["ring"]): r for r in figures["rings"]["configured"]}
    _write_csv(out / "response_times.csv",
               ["incident_id", "district", "grid", "ring", "ring_name", "target_s", "seconds", "outcome"],
               [[r["incident_id"], r["district"], r["grid"], r["ring"], targets.get(str(r["ring"]), {}).get("name"),
                 targets.get(str(r["ring"]), {}).get("target_s"), r["seconds"], r["outcome"]]
                for r in figures["response_times"]["_rows"]])
    esc_cols = ["escalation_id", "incident_id", "district", "grid", "ring", "level", "reason", "raised_at",
                "deadline_at", "breached_by_s", "renotifications", "acked_at", "acked_by", "ack_s", "exercise"]
    _write_csv(out / "escalations.csv", esc_cols, [[r[c] for c in esc_cols] for r in figures["escalations"]["rows"]])
    drill_cols = ["district", "units", "issued", "results", *drillplan.OUTCOMES, "pass_rate", "never_drilled",
                  "failing_repeatedly"]
    _write_csv(out / "drills.csv", drill_cols, [[r[c] for c in drill_cols] for r in figures["drills"]["rows"]])
    _write_csv(out / "slowest.csv",
               ["rank", "incident_id", "district", "grid", "category", "severity", "reported_at", "first_on_scene_s",
                "status", "rings", "timeline"],
               [[i, s["incident_id"], s["district"], s["grid"], s["category"], s["severity"], s["reported_at"],
                 s["first_on_scene_s"], s["status"], " ".join(f"{k}:{v}" for k, v in s["rings"].items()),
                 "; ".join(f"+{e['t_s']:g}s {e['what']}" for e in s["timeline"])]
                for i, s in enumerate(figures["slowest"], start=1)])
    return [out / n for n in ("figures.json", "compliance_by_district.csv", "compliance_by_grid.csv",
                              "response_times.csv", "escalations.csv", "drills.csv", "slowest.csv")]


# ============================================================================ HTML and SVG
def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(value: str | None) -> str:
    """An event time as city-local wall-clock text (inputs may carry any offset)."""
    if not value:
        return "—"
    return _e(clock.parse_time(value).astimezone(CITY_TZ).strftime("%Y-%m-%d %H:%M:%S"))


def _fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} %"


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.0f} s" if value < 600 else f"{value / 60:.1f} min"


def _svg_compliance(real: list[dict[str, Any]], alt: list[dict[str, Any]] | None) -> str:
    """Horizontal bars: share of rings met, per ring (real, and what-if beside it)."""
    rows: list[tuple[dict[str, Any] | None, dict[str, Any] | None]] = [
        (r, next((a for a in alt or [] if a["ring"] == r["ring"]), None)) for r in real]
    if alt:
        rows += [(None, a) for a in alt if a["ring"] not in {r["ring"] for r in real}]
    bar_h, gap, left, width = 14, 10, 150, 420
    per = bar_h * (2 if alt else 1) + gap
    height = 30 + per * len(rows)
    parts = [f'<svg class="chart" role="img" aria-label="ring compliance" width="{left + width + 70}" '
             f'height="{height}" viewBox="0 0 {left + width + 70} {height}">']
    for x in (0, 25, 50, 75, 100):
        gx = left + width * x / 100
        parts.append(f'<line x1="{gx}" y1="18" x2="{gx}" y2="{height - 4}" class="grid"/>'
                     f'<text x="{gx}" y="12" class="axis" text-anchor="middle">{x}%</text>')
    for i, (r, a) in enumerate(rows):
        y = 22 + i * per
        label = r or a
        assert label is not None
        parts.append(f'<text x="{left - 6}" y="{y + bar_h - 3}" text-anchor="end" class="label">'
                     f'{_e(label["ring"])} · {_e(label["name"])} ({_fmt_s(label["target_s"])})</text>')
        for j, (row, cls) in enumerate(((r, "real"), (a, "whatif")) if alt else ((r, "real"),)):
            if row is None:
                continue
            pct = row["met_pct"]
            w = width * (pct or 0) / 100
            yy = y + j * bar_h
            parts.append(f'<rect x="{left}" y="{yy}" width="{width}" height="{bar_h - 2}" class="track"/>'
                         f'<rect x="{left}" y="{yy}" width="{w:.1f}" height="{bar_h - 2}" class="bar-{cls}"/>'
                         f'<text x="{left + width + 4}" y="{yy + bar_h - 3}" class="value">{_fmt_pct(pct)}'
                         f' ({row["met"]}/{row["total"]})</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_ecdf(ring: dict[str, Any]) -> str:
    """Empirical CDF of one ring's response times, the target marked."""
    values: list[float] = ring["values"]
    target = float(ring["target_s"])
    w, h, left, bottom, top = 330, 190, 38, 28, 22
    xmax = max([target * 1.25, *(values or [0])]) or 1.0
    pw, ph = w - left - 10, h - top - bottom

    def x(v: float) -> float:
        return left + pw * min(v, xmax) / xmax

    def y(p: float) -> float:
        return top + ph * (1 - p)

    parts = [f'<svg class="chart" role="img" aria-label="response times ring {ring["ring"]}" width="{w}" '
             f'height="{h}" viewBox="0 0 {w} {h}">',
             f'<text x="{left}" y="14" class="title">ring {ring["ring"]} · {_e(ring["name"])} — n={ring["n"]}</text>']
    parts.extend(f'<line x1="{left}" y1="{y(p)}" x2="{w - 10}" y2="{y(p)}" class="grid"/>'
                 f'<text x="{left - 4}" y="{y(p) + 4}" class="axis" text-anchor="end">{int(p * 100)}%</text>'
                 for p in (0, 0.5, 1))
    for k in range(5):
        v = xmax * k / 4
        parts.append(f'<text x="{x(v)}" y="{h - 10}" class="axis" text-anchor="middle">{_fmt_s(v)}</text>')
    if values:
        path = [f"M{x(0):.1f},{y(0):.1f}"]
        for i, v in enumerate(values):
            path.append(f"H{x(v):.1f}V{y((i + 1) / len(values)):.1f}")
        path.append(f"H{x(xmax):.1f}")
        parts.append(f'<path d="{"".join(path)}" class="ecdf"/>')
    else:
        parts.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" class="axis" text-anchor="middle">'
                     "no arrivals measured</text>")
    share = f" · {100 * ring['within_target'] / ring['n']:.0f}% within" if ring["n"] else ""
    parts.append(f'<line x1="{x(target):.1f}" y1="{top}" x2="{x(target):.1f}" y2="{top + ph}" class="target"/>'
                 f'<text x="{x(target) + 3:.1f}" y="{top + 10}" class="target-label">target {_fmt_s(target)}'
                 f"{share}</text></svg>")
    return "".join(parts)


def _svg_timeline(s: dict[str, Any]) -> str:
    """One incident's timeline: ring deadlines dashed, events as marks."""
    w, h, left = 660, 64, 10
    events = s["timeline"]
    tmax = max([1.0, *(float(e["t_s"]) for e in events), *(float(t) for t in s["targets"].values())]) * 1.05
    pw = w - 2 * left

    def x(t: float) -> float:
        return left + pw * max(0.0, t) / tmax

    parts = [f'<svg class="chart timeline" role="img" aria-label="timeline {_e(s["incident_id"])}" width="{w}" '
             f'height="{h}" viewBox="0 0 {w} {h}">',
             f'<line x1="{left}" y1="30" x2="{w - left}" y2="30" class="axis-line"/>']
    for ring, target in sorted(s["targets"].items()):
        state = s["rings"].get(ring, "pending")
        parts.append(f'<line x1="{x(float(target)):.1f}" y1="12" x2="{x(float(target)):.1f}" y2="48" '
                     f'class="deadline dl-{_e(state)}"/><text x="{x(float(target)):.1f}" y="10" class="axis" '
                     f'text-anchor="middle">R{_e(ring)}</text>')
    marks = {"reported": "rep", "assigned": "asg", "acknowledged": "ack", "en_route": "enr", "on_scene": "ons",
             "resolved": "res", "cancelled": "res", "escalation": "esc", "ack": "eack", "met": "met",
             "breached": "brc"}
    for e in events:
        cls = marks.get(e["kind"], "other")
        parts.append(f'<circle cx="{x(e["t_s"]):.1f}" cy="30" r="4" class="mk mk-{cls}"><title>'
                     f'+{e["t_s"]:g} s {_e(e["what"])}</title></circle>')
    for k in range(5):
        t = tmax * k / 4
        parts.append(f'<text x="{x(t):.1f}" y="60" class="axis" text-anchor="middle">+{_fmt_s(t)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_drills(rows: list[dict[str, Any]]) -> str:
    """Pass rate per district (aborted drills excluded), bars."""
    rated = [r for r in rows if r["pass_rate"] is not None]
    if not rated:
        return '<p class="muted">No drill results in this range.</p>'
    bar_h, left, width = 16, 110, 400
    height = 24 + (bar_h + 6) * len(rated)
    parts = [f'<svg class="chart" role="img" aria-label="drill pass rates" width="{left + width + 90}" '
             f'height="{height}" viewBox="0 0 {left + width + 90} {height}">']
    for i, r in enumerate(rated):
        y = 20 + i * (bar_h + 6)
        w = width * r["pass_rate"] / 100
        parts.append(f'<text x="{left - 6}" y="{y + bar_h - 4}" text-anchor="end" class="label">{_e(r["district"])}'
                     f'</text><rect x="{left}" y="{y}" width="{width}" height="{bar_h}" class="track"/>'
                     f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" class="bar-real"/>'
                     f'<text x="{left + width + 4}" y="{y + bar_h - 4}" class="value">{r["pass_rate"]:.1f} % of '
                     f'{r["results"] - r.get("aborted", 0)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_map(incidents: list[dict[str, Any]]) -> str:
    """District outlines (kaifong.streams.city.DISTRICTS) and incidents coloured by ring outcome."""
    lats = [p[0] for d in DISTRICTS for p in d.outline]
    lons = [p[1] for d in DISTRICTS for p in d.outline]
    lat0, lat1, lon0, lon1 = min(lats), max(lats), min(lons), max(lons)
    k = math.cos(math.radians((lat0 + lat1) / 2))  # equirectangular: a degree of longitude is shorter
    width = 430.0  # with its legend, the map and the method section share a page
    scale = width / ((lon1 - lon0) * k)
    height = (lat1 - lat0) * scale

    def xy(lat: float, lon: float) -> tuple[float, float]:
        return 10 + (lon - lon0) * k * scale, 10 + (lat1 - lat) * scale

    parts = [f'<svg class="chart map" role="img" aria-label="incident map" width="{width + 20:.0f}" '
             f'height="{height + 20:.0f}" viewBox="0 0 {width + 20:.0f} {height + 20:.0f}">']
    for d in DISTRICTS:
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in (xy(lat, lon) for lat, lon in d.outline))
        parts.append(f'<polygon points="{pts}" class="district"><title>{_e(d.name)} {_e(d.name_en)}</title></polygon>')
    for d in DISTRICTS:
        cx, cy = xy(*d.centre)
        # The old core's districts are small and close: smaller names keep them legible.
        size = 8 if d.radius_km < 6 else 11
        parts.append(f'<text x="{cx:.1f}" y="{cy:.1f}" class="district-name" font-size="{size}" '
                     f'text-anchor="middle">{_e(d.name)}</text>')
    order = {"open": 0, "exercise": 1, "met": 2, "breached": 3}  # breaches drawn last: on top
    for inc in sorted(incidents, key=lambda i: order.get(i["outcome"], 0)):
        loc = inc.get("location") or {}
        if "lat" not in loc or "lon" not in loc:
            continue
        cx, cy = xy(float(loc["lat"]), float(loc["lon"]))
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.6" class="inc inc-{_e(inc["outcome"])}">'
                     f'<title>{_e(inc["incident_id"])} {_e(inc["outcome"])}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


CSS = f"""
@page {{ size: A4; margin: 14mm 12mm; }}
* {{ box-sizing: border-box; }}
body {{ font-family: {CJK_FONTS}; color: #1f2328; font-size: 12px; line-height: 1.45; margin: 0 auto;
       max-width: 720px; padding: 8px; -webkit-print-color-adjust: exact; print-color-adjust: exact; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }}
h2 {{ font-size: 16px; border-bottom: 2px solid #1f2328; padding-bottom: 2px; margin: 18px 0 8px; }}
h3 {{ font-size: 13px; margin: 12px 0 4px; }}
section.page {{ break-before: page; }}
table {{ border-collapse: collapse; width: 100%; margin: 4px 0 10px; font-size: 11px; }}
th, td {{ border-bottom: 1px solid #d0d7de; padding: 2px 5px; text-align: right; }}
th {{ background: #f3f4f6; }}
th:first-child, td:first-child, td.l {{ text-align: left; }}
tr {{ break-inside: avoid; }}
.muted {{ color: #6e7781; }}
.kpis {{ display: flex; gap: 8px; flex-wrap: wrap; margin: 8px 0; }}
.kpi {{ border: 1px solid #d0d7de; border-radius: 6px; padding: 6px 10px; min-width: 120px; }}
.kpi b {{ display: block; font-size: 18px; }}
.good {{ color: #2e7d32; }} .bad {{ color: #c62828; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 6px; }}
.incident {{ break-inside: avoid; margin-bottom: 10px; }}
.incident ol {{ margin: 2px 0; padding-left: 18px; columns: 2; font-size: 10.5px; }}
svg.chart {{ font-family: {CJK_FONTS}; display: block; max-width: 100%; height: auto; }}
svg .grid {{ stroke: #e5e7eb; }} svg .axis {{ font-size: 9px; fill: #6e7781; }}
svg .label, svg .value {{ font-size: 10px; fill: #1f2328; }} svg .title {{ font-size: 11px; font-weight: bold; }}
svg .track {{ fill: #f3f4f6; }} svg .bar-real {{ fill: #2e7d32; }} svg .bar-whatif {{ fill: #ef6c00; }}
svg .ecdf {{ fill: none; stroke: #1565c0; stroke-width: 1.6; }}
svg .target {{ stroke: #c62828; stroke-dasharray: 4 3; stroke-width: 1.4; }}
svg .target-label {{ font-size: 9px; fill: #c62828; }}
svg .axis-line {{ stroke: #6e7781; }} svg .deadline {{ stroke-dasharray: 3 3; stroke-width: 1.2; }}
svg .dl-met {{ stroke: #2e7d32; }} svg .dl-breached {{ stroke: #c62828; }}
svg .dl-stopped, svg .dl-pending {{ stroke: #9e9e9e; }}
svg .mk {{ stroke: #fff; stroke-width: .8; }} svg .mk-rep {{ fill: #1f2328; }} svg .mk-asg {{ fill: #6e7781; }}
svg .mk-ack, svg .mk-enr {{ fill: #1565c0; }} svg .mk-ons, svg .mk-met {{ fill: #2e7d32; }}
svg .mk-brc {{ fill: #c62828; }} svg .mk-esc {{ fill: #ef6c00; }} svg .mk-eack {{ fill: #8e24aa; }}
svg .mk-res {{ fill: #000; }}
svg .district {{ fill: #eef2f5; stroke: #8c959f; stroke-width: 1; }}
svg .district-name {{ fill: #57606a; }}
svg .inc {{ stroke: #fff; stroke-width: .6; fill-opacity: .85; }}
svg .inc-met {{ fill: {OUTCOME_COLOURS["met"]}; }} svg .inc-breached {{ fill: {OUTCOME_COLOURS["breached"]}; }}
svg .inc-open {{ fill: {OUTCOME_COLOURS["open"]}; }}
svg .inc-exercise {{ fill: none; stroke: {OUTCOME_COLOURS["exercise"]}; stroke-width: 1.2; }}
.legend span {{ display: inline-block; margin-right: 12px; }}
.dot {{ display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 4px; }}
.swatch-real {{ background: #2e7d32; }} .swatch-whatif {{ background: #ef6c00; }}
"""


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td{" class=l" if i < left else ""}>{c}</td>' for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body or ''}</tbody></table>"


def _pct_cell(pct: float | None) -> str:
    if pct is None:
        return "—"
    cls = "good" if pct >= 90 else "bad" if pct < 75 else ""
    return f'<span class="{cls}">{pct:.1f} %</span>'


def _compliance_matrix(rows: list[dict[str, Any]], key: str, rings: list[dict[str, Any]]) -> str:
    """District × ring: met/total and the share met."""
    groups: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        groups[r[key]][r["ring"]] = r
    header = [key, *[f"R{r['ring']} {r['name']}" for r in rings]]
    body = []
    for g in sorted(groups):
        cells = [_e(g)]
        for ring in rings:
            cell = groups[g].get(ring["ring"])
            cells.append("—" if cell is None or not cell["total"]
                         else f"{cell['met']}/{cell['total']} · {_pct_cell(cell['met_pct'])}")
        body.append(cells)
    return _table(header, body)


def render_html(figures: dict[str, Any]) -> str:
    """The report as one self-contained HTML document (inline CSS and SVG, no external resource)."""
    win = figures["window"]
    rings = figures["rings"]["configured"]
    comp = figures["compliance"]
    real_rows, alt = comp["real"], comp["what_if"]
    total_met = sum(r["met"] for r in real_rows["by_ring"])
    total_decided = sum(r["total"] for r in real_rows["by_ring"])
    esc, drills = figures["escalations"], figures["drills"]
    scope = f" · district {_e(win['district'])}" if win["district"] else ""
    out = [f'<!doctype html><html lang="zh-Hans"><head><meta charset="utf-8"><title>kaifong after-action report '
           f'{_when(win["from"])} – {_when(win["to"])}</title><style>{CSS}</style></head><body>',
           f"<h1>After-action report · 事后评估报告</h1><p class=muted>{_when(win['from'])} → {_when(win['to'])}"
           f" (UTC+8){scope} · rings decided up to {_when(win['horizon'])}</p>",
           "<section><h2>Summary</h2><div class=kpis>",
           f"<div class=kpi>incidents<b>{figures['incidents']['real']}</b>real</div>",
           f"<div class=kpi>exercises<b>{figures['incidents']['exercise']}</b>not in compliance</div>",
           f"<div class=kpi>rings met<b>{_fmt_pct(_pct(total_met, total_decided - total_met))}</b>"
           f"{total_met} of {total_decided} decided</div>",
           f"<div class=kpi>escalations<b>{esc['real']}</b>{esc['exercise']} in exercises</div>",
           f"<div class=kpi>drills<b>{drills['results']}</b>results · {drills['issued']} issued</div></div>",
           "<p>Ring table in force: "
           + ", ".join(f"R{r['ring']} {_e(r['name'])} {_fmt_s(r['target_s'])}" for r in rings)
           + (f"; {figures['rings']['incidents_with_recorded_table']} incident(s) replayed with the table recorded in "
              "their state." if figures["rings"]["incidents_with_recorded_table"] else ".") + "</p>",
           "<p class=muted>Every incident reported in the range was replayed through the worker's ring-clock "
           "functions in event-time order; exercise incidents are counted apart.</p></section>"]
    # -- compliance
    out.append("<section><h2>Ring compliance</h2>")
    if alt:
        out.append("<p class=legend><span><i class='dot swatch-real'></i>real ring table</span><span><i class='dot "
                   "swatch-whatif'></i>what-if: " + ", ".join(f"R{r['ring']} {_e(r['name'])} {_fmt_s(r['target_s'])}"
                                                             for r in figures["rings"]["what_if"]) + "</span></p>")
    out.append(_svg_compliance(real_rows["by_ring"], alt["by_ring"] if alt else None))
    header = ["ring", "target", "met", "breached", "met %"]
    if alt:
        header += ["what-if target", "met", "breached", "met %", "Δ met"]
    body = []
    alt_by = {r["ring"]: r for r in alt["by_ring"]} if alt else {}
    for r in real_rows["by_ring"]:
        row = [f"R{r['ring']} {_e(r['name'])}", _fmt_s(r["target_s"]), r["met"], r["breached"], _pct_cell(r["met_pct"])]
        if alt:
            a = alt_by.get(r["ring"])
            row += ([_fmt_s(a["target_s"]), a["met"], a["breached"], _pct_cell(a["met_pct"]),
                     f"{a['met'] - r['met']:+d}"] if a else ["—"] * 5)
        body.append(row)
    out.append(_table(header, body))
    out.append("<p class=muted>Met % of the rings decided (met or breached; stopped and pending rings are not "
               "counted): <span class=good>green</span> from 90 %, <span class=bad>red</span> under 75 %.</p>")
    out.append("<h3>By district</h3>" + _compliance_matrix(real_rows["by_district"], "district", rings))
    if alt:
        out.append("<h3>By district — what-if</h3>" + _compliance_matrix(alt["by_district"], "district",
                                                                         figures["rings"]["what_if"]))
    worst = sorted((r for r in real_rows["by_grid"] if r["total"]), key=lambda r: (r["met_pct"], -r["total"]))[:15]
    out.append("<h3>Grids with the lowest compliance</h3>" + _table(
        ["grid", "district", "ring", "met", "breached", "met %"],
        [[_e(r["grid"]), _e(r["district"]), r["ring"], r["met"], r["breached"], _pct_cell(r["met_pct"])]
         for r in worst],
        left=2) + "<p class=muted>Every grid: compliance_by_grid.csv.</p>")
    if figures["incidents"]["exercise"]:
        out.append("<h3>Exercise incidents (not in compliance)</h3>" + _table(
            ["ring", "met", "breached", "stopped"],
            [[f"R{r['ring']}", r["met"], r["breached"], r["stopped"]] for r in comp["exercise"]]))
    out.append("</section>")
    # -- response times
    rt = figures["response_times"]
    out.append("<section class=page><h2>Response times</h2><p class=muted>Reported → first unit of the ring on "
               "scene, event time; the dashed line is the ring's target.</p><div class=charts>")
    out += [_svg_ecdf(rt[str(r["ring"])]) for r in rings]
    out.append("</div>" + _table(["ring", "n", "within target", "p50", "p90", "max"],
                                  [[f"R{r['ring']} {_e(r['name'])}", rt[str(r['ring'])]["n"],
                                    rt[str(r["ring"])]["within_target"], _fmt_s(rt[str(r["ring"])]["p50"]),
                                    _fmt_s(rt[str(r["ring"])]["p90"]), _fmt_s(rt[str(r["ring"])]["max"])]
                                   for r in rings]) + "</section>")
    # -- slowest
    out.append("<section class=page><h2>Slowest incidents</h2><p class=muted>Ordered by how long the scene "
               "waited for its first unit (when nobody came: until the incident was closed). Dashed lines: ring "
               "deadlines (green met, red breached, grey stopped or pending).</p>")
    for i, s in enumerate(figures["slowest"], start=1):
        rings_txt = " ".join(f"R{k} {v}" for k, v in s["rings"].items())
        first = (f"first on scene after {_fmt_s(s['first_on_scene_s'])}" if s["first_on_scene_s"] is not None
                 else f"nobody on scene in {_fmt_s(s['waited_s'])}")
        out.append(f"<div class=incident><h3>{i}. {_e(s['incident_id'])} · {_e(s['district'])} {_e(s['grid'])} · "
                   f"{_e(s['category'])} sev {_e(s['severity'])} · {first}</h3>"
                   f"<p class=muted>{_when(s['reported_at'])} · {_e(s['status'])} · {_e(rings_txt)}</p>"
                   + _svg_timeline(s) + "<ol>" + "".join(f"<li>+{_fmt_s(e['t_s'])} {_e(e['what'])}</li>"
                                                          for e in s["timeline"]) + "</ol></div>")
    if not figures["slowest"]:
        out.append("<p class=muted>No incidents in this range.</p>")
    out.append("</section>")
    # -- escalations
    out.append("<section class=page><h2>Escalations</h2>")
    out.append(_table(["level", "reason", "raised"], [[_e(r["level"]), _e(r["reason"]), r["count"]]
                                                       for r in esc["by_level_reason"]], left=2))
    out.append("<h3>Acknowledgement</h3>" + _table(
        ["level", "raised", "acknowledged", "not acknowledged", "p50", "p90", "max"],
        [[_e(r["level"]), r["raised"], r["acknowledged"], r["unacknowledged"], _fmt_s(r["p50_s"]),
          _fmt_s(r["p90_s"]), _fmt_s(r["max_s"])] for r in esc["ack_by_level"]]))
    out.append(f"<p class=muted>{esc['exercise']} exercise escalation(s) are not counted above.</p></section>")
    # -- drills
    out.append("<section><h2>Drills</h2>" + _svg_drills(drills["rows"]))
    out.append(_table(["district", "units", "issued", "results", *drillplan.OUTCOMES, "pass rate", "never drilled",
                       "failing repeatedly"],
                      [[_e(r["district"]), r["units"], r["issued"], r["results"], *[r[o] for o in drillplan.OUTCOMES],
                        _fmt_pct(r["pass_rate"]), r["never_drilled"], r["failing_repeatedly"]]
                       for r in drills["rows"]]))
    never = drills["never_drilled"]
    if drills["registry_units"]:
        out.append(f"<p>{len(never)} of {drills['registry_units']} registered unit(s) had no drill in this range"
                   + (": " + ", ".join(_e(u) for u in never[:20]) + (" …" if len(never) > 20 else "") if never else "")
                   + " (all of them in figures.json).</p>")
    else:
        out.append("<p class=muted>The unit registry topic is empty: units never drilled cannot be listed.</p>")
    if drills["failing_repeatedly"]:
        out.append(f"<h3>Units failing repeatedly (≥ {REPEAT_FAILS} failed or unanswered)</h3>" + _table(
            ["unit", "district", "failures", "outcomes", "last issued"],
            [[_e(f["unit_id"]), _e(f["district"]), f["failures"], _e(", ".join(f["outcomes"])),
              _when(f["last_issued_at"])] for f in drills["failing_repeatedly"]], left=2))
    out.append("</section>")
    # -- map
    counts = Counter(i["outcome"] for i in figures["per_incident"])
    out.append("<section class=page><h2>Incident map</h2><p class=legend>" + "".join(
        f"<span><i class=dot style='background:{OUTCOME_COLOURS[k]}'></i>{label} ({counts.get(k, 0)})</span>"
        for k, label in (("met", "all decided rings met"), ("breached", "a ring breached"),
                         ("open", "stopped / pending"), ("exercise", "exercise")))
               + "</p>" + _svg_map(figures["per_incident"]) + "</section>")
    # -- method
    src = figures["sources"]
    out.append("<section><h2>Method and data quality</h2><p>Read " + f"{src['records_read']:,}" + " records; "
               f"{src['invalid_input_records']} invalid input record(s) skipped (the worker dead-letters them); "
               f"{figures['incidents']['refused_updates']} update(s) refused by the clock.</p>")
    out.append(_table(["topic", "start offsets"], [[_e(t), _e(", ".join(f"{k}: {v}" for k, v in m.items()))]
                                                   for t, m in src["topics"].items()]))
    dis = figures["disagreements"]
    out.append(f"<p>{len(dis)} ring(s) where the worker's live state differs from the event-time replay "
               "(an arrival delivered after its deadline timer fired counts as a breach live).</p>")
    if dis:
        out.append(_table(["incident", "ring", "report", "live"], [[_e(d["incident_id"]), d["ring"], _e(d["report"]),
                                                                   _e(d["live"])] for d in dis[:30]]))
    out.append("</section></body></html>")
    return "".join(out)


# ============================================================================ PDF
def chromium_binary() -> str:
    """Path of the headless browser that prints the PDF, or :class:`ReportError`."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise ReportError("chromium is not installed, so report.pdf cannot be printed: install Debian's `chromium` "
                      "package (apt-get install chromium), or pass --no-pdf for HTML, JSON and CSV only")


def render_pdf(html_path: Path, pdf_path: Path, timeout_s: float = 120.0) -> Path:
    """Print ``html_path`` to ``pdf_path`` with headless chromium (local file: no network)."""
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="kaifong-chromium-") as profile:
        # A private profile: concurrent runs (and the console tests) never share a lock.
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-extensions",
               f"--user-data-dir={profile}", "--no-pdf-header-footer", "--print-to-pdf-no-header",
               f"--print-to-pdf={pdf_path}", html_path.resolve().as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise ReportError(f"chromium did not print {html_path} within {timeout_s:g}s") from None
    if proc.returncode != 0 or not pdf_path.exists() or pdf_path.stat().st_size == 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise ReportError(f"chromium failed to print the PDF (exit {proc.returncode}): " + " | ".join(tail))
    return pdf_path


# ============================================================================ entry points
@dataclass
class Result:
    """What a report run wrote."""

    out: Path
    figures: dict[str, Any]
    files: list[Path]


def generate(settings: Settings, window: Window, out: Path, *, what_if: tuple[Ring, ...] | None = None,
             pdf: bool = True, as_of: datetime | None = None) -> Result:
    """Read, replay and write a report for ``window`` to ``out`` (blocking)."""
    if pdf:
        chromium_binary()  # fail before minutes of reading, not after
    rings = settings.ring_table()
    longest = max(r.target_s for r in (*rings, *(what_if or ())))
    read_until = window.end + timedelta(seconds=longest + UPDATE_MARGIN_S)
    inputs = read_inputs(settings, window, read_until)
    figures = compute(inputs, rings, what_if=what_if, as_of=as_of or settings.clock()())
    figures["window"]["generated_at"] = datetime.now(UTC).isoformat()
    files = write_files(figures, out)
    html_path = out / "report.html"
    html_path.write_text(render_html(figures), "utf-8")
    files.append(html_path)
    if pdf:
        files.append(render_pdf(html_path, out / "report.pdf"))
    return Result(out, figures, files)


def report_cron(settings: Settings) -> str:
    """Crontab line (city-local time) of the daily report: at ``KAIFONG_REPORT_HOUR`` if the
    settings define it, else :data:`DEFAULT_REPORT_HOUR`.

    >>> report_cron(Settings())
    '0 1 * * *'
    """
    hour = int(getattr(settings, "report_hour", DEFAULT_REPORT_HOUR))
    if not 0 <= hour <= 23:
        raise ValueError(f"KAIFONG_REPORT_HOUR={hour}: expected an hour 0-23")
    return f"0 {hour} * * *"


def reports_root(settings: Settings) -> Path:
    """Where daily reports go: ``KAIFONG_REPORT_DIR`` if the settings define it, else
    ``<KAIFONG_DATA_DIR>/reports`` (one directory per local date)."""
    configured = str(getattr(settings, "report_dir", "") or "")
    return Path(configured) if configured else Path(settings.data_dir) / "reports"


async def daily_report(settings: Settings, day: date, *, out_root: Path | None = None, pdf: bool = True) -> Path:
    """Produce the report of local day ``day`` and record it in Redis (``kf:reports``: date → dir).

    Runs the blocking work in a thread so the worker's event loop keeps serving. Without
    chromium the PDF is skipped (logged) rather than losing the day's figures.
    """
    from kaifong.streams.redisio import connect

    out = (out_root or reports_root(settings)) / day.isoformat()
    window = day_window(day)
    try:
        await asyncio.to_thread(generate, settings, window, out, pdf=pdf)
    except ReportError as exc:
        if not pdf or "chromium" not in str(exc):
            raise
        log.warning("daily report %s without PDF: %s", day.isoformat(), exc)
        await asyncio.to_thread(generate, settings, window, out, pdf=False)
    redis = connect(settings)
    try:
        await redis.hset(REPORTS_KEY, day.isoformat(), str(out.resolve()))  # type: ignore[misc]
    finally:
        await redis.aclose()
    log.info("daily report %s written to %s", day.isoformat(), out)
    return out


async def daily_report_once(settings: Settings, day: date, **kwargs: Any) -> Path | None:
    """:func:`daily_report`, made by exactly one of the workers that call it for ``day``.

    The workers have no Faust leader (``topic_disable_leader``), so the first to claim the day
    in Redis (``SET NX``) makes the report; the others return None at once.
    """
    from kaifong.streams.redisio import connect

    claim = f"{REPORTS_KEY}:claim:{day.isoformat()}"
    redis = connect(settings)
    try:
        if await redis.hexists(REPORTS_KEY, day.isoformat()):  # type: ignore[misc]
            return None
        if not await redis.set(claim, b"1", nx=True, ex=CLAIM_TTL_S):
            return None
        try:
            return await daily_report(settings, day, **kwargs)
        except BaseException:
            # Give the day back: the next scheduled run (on any worker) tries again.
            await redis.delete(claim)
            raise
    finally:
        await redis.aclose()


def yesterday(settings: Settings) -> date:
    """The local date before today on the settings' clock (the day a daily run reports on)."""
    return (settings.clock()().astimezone(CITY_TZ) - timedelta(days=1)).date()
