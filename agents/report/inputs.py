"""kaifong.agents.report.inputs — the report's window, what is read for it, its error, the what-if table.

Layer: agents/report. Plain values: :mod:`kaifong.agents.report.read` fills :class:`Inputs`,
:mod:`kaifong.agents.report.figures` reads it. Days and dates are city-local (UTC+8).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from kaifong.streams.settings import Ring, parse_rings

#: The city's local time (Asia/Shanghai has no daylight saving): days and dates are local.
CITY_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")


class ReportError(Exception):
    """A report could not be made (bad input, broker unreachable, no chromium…): a clear reason."""


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

