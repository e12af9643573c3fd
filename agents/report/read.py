"""kaifong.agents.report.read — read a time range of the topics and keep what belongs to the window.

Layer: agents/report (blocking, kafka-python; never a consumer group, so the workers'
committed offsets never move).

Each partition's first offset comes from ``offsets_for_times`` where the broker answers it
correctly — checked: the record at the returned offset is at or after the start and the one
before it is earlier — and from a scan from the beginning where it does not (the embedded Tansu
broker answers offset 0 for any time). Record timestamps are wall-clock times while event times
follow the accelerated clock of a simulation (``KAIFONG_TIME_SCALE``), so the range is mapped
back to wall time, with :data:`LOOKBACK_S` of slack for late producers. The records read are
then validated and deduplicated as the worker's intake does (:func:`select_inputs`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson

from kaifong.agents.core import clock
from kaifong.agents.report.inputs import Inputs, ReportError, Window
from kaifong.schemas.validation import InvalidEvent, parse
from kaifong.streams.settings import Settings
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

#: Wall-clock slack when mapping event times to record timestamps (producer clock skew, late
#: publication); a record this much outside the mapped range is still read and then filtered.
LOOKBACK_S = 900.0


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
    select_inputs(settings, inputs, raw, read_until)
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


def select_inputs(settings: Settings, inputs: Inputs, raw: dict[TopicSpec, list[Any]], read_until: datetime) -> None:
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

