"""kaifong.agents.core.seats — duty seats: who is told of an escalation, and where a seat may act.

Layer: agents/core (pure). A :class:`SeatBook` is the parsed seats file
(``schemas/json/seats.schema.json``). Routing (:meth:`SeatBook.route`): an escalation goes to
the on-duty seats of its level whose jurisdiction holds the incident; when there are none, to
the next level up, and so on to the city. The city level never comes back empty: when no city
seat is on duty (a file that says so), every city seat is told anyway — an escalation is never
dropped. Exercise escalations are routed like real ones (the seat sees its drill); delivery
sends them to the seat's exercise receivers only (:mod:`kaifong.agents.tools.alertmanager`).

Scope (:meth:`Seat.covers`): a city seat acts everywhere; a district seat in its districts; a
street seat in its streets or grids; a grid seat in its grids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from kaifong.agents.core.change import Change
from kaifong.agents.core.clock import LEVELS

#: Roles, weakest first: a viewer reads; a dispatcher also acknowledges and orders drills; an
#: admin also manages seats-wide things (merges and manual actions of later features).
ROLES: tuple[str, ...] = ("viewer", "dispatcher", "admin")
DEFAULT_ROLES: frozenset[str] = frozenset({"viewer", "dispatcher"})
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class SeatsInvalid(ValueError):
    """A seats file that cannot be used; ``errors`` names every problem (path: reason)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Window:
    """An on-duty window: from ``start`` to ``end`` minutes after local midnight of ``days``
    (0 = Monday); past midnight when ``end <= start``."""

    days: frozenset[int]
    start: int
    end: int

    def holds(self, local: datetime) -> bool:
        """True when ``local`` (a time in the seats' zone) falls in this window.

        >>> w = Window(frozenset({0}), 22 * 60, 6 * 60)  # Monday 22:00 to Tuesday 06:00
        >>> [w.holds(datetime(2026, 12, 7, h)) for h in (21, 23)], w.holds(datetime(2026, 12, 8, 5))
        ([False, True], True)
        """
        minute = local.hour * 60 + local.minute
        day = local.weekday()
        if self.end > self.start:
            return day in self.days and self.start <= minute < self.end
        # Past midnight: the evening part on its own day, the morning part on the next day.
        return (day in self.days and minute >= self.start) or ((day - 1) % 7 in self.days and minute < self.end)


@dataclass(frozen=True)
class Seat:
    """One duty seat."""

    id: str
    level: str
    name: str = ""
    districts: frozenset[str] = frozenset()
    streets: frozenset[str] = frozenset()
    grids: frozenset[str] = frozenset()
    #: None: always on duty.
    on_duty: tuple[Window, ...] | None = None
    roles: frozenset[str] = DEFAULT_ROLES
    receivers: tuple[dict[str, Any], ...] = ()

    def covers(self, district: str | None, street: str | None, grid: str | None) -> bool:
        """True when an incident at (district, street, grid) is in this seat's jurisdiction.

        >>> Seat("d", "district", districts=frozenset({"越秀区"})).covers("越秀区", None, None)
        True
        >>> Seat("s", "street", streets=frozenset({"YX-S01"})).covers("越秀区", None, "YX-S02-G1")
        False
        """
        if self.level == "city":
            return True
        if self.level == "district":
            return district is not None and district in self.districts
        return (street is not None and street in self.streets) or (grid is not None and grid in self.grids)

    def staffed(self, local: datetime) -> bool:
        """True when the seat is on duty at ``local``."""
        return self.on_duty is None or any(w.holds(local) for w in self.on_duty)

    def public(self) -> dict[str, Any]:
        """What ``/api/seats`` shows of a seat (receivers' addresses are not shown)."""
        return {"id": self.id, "level": self.level, "name": self.name,
                "jurisdiction": {k: sorted(v) for k, v in (("districts", self.districts),
                                                           ("streets", self.streets), ("grids", self.grids)) if v},
                "roles": sorted(self.roles, key=ROLES.index),
                "receivers": sorted({r["type"] + (" (exercise)" if r.get("exercise") else "") for r in self.receivers})}


@dataclass(frozen=True)
class Routing:
    """Where an escalation goes: the seats told and their level (the escalation's own level,
    or higher when no seat of that level covers the incident or is on duty)."""

    level: str
    seats: tuple[str, ...]


@dataclass(frozen=True)
class SeatBook:
    """The parsed seats file."""

    seats: tuple[Seat, ...]
    tz: tzinfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    #: A digest of the file's content: tells a reload that changed nothing from one that did.
    digest: str = ""
    by_id: dict[str, Seat] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.by_id.update({s.id: s for s in self.seats})

    def route(self, level: str, district: str | None, street: str | None, grid: str | None, now: datetime
              ) -> Routing:
        """The seats an escalation of ``level`` at (district, street, grid) is addressed to at ``now``.

        >>> book = SeatBook((Seat("c", "city"), Seat("d", "district", districts=frozenset({"A"}))))
        >>> from datetime import UTC
        >>> book.route("grid", "A", None, "g1", datetime(2026, 1, 1, tzinfo=UTC))
        Routing(level='district', seats=('d',))
        >>> book.route("district", "B", None, None, datetime(2026, 1, 1, tzinfo=UTC))
        Routing(level='city', seats=('c',))
        """
        local = now.astimezone(self.tz)
        start = LEVELS.index(level) if level in LEVELS else 0
        for lvl in LEVELS[start:]:
            found = tuple(s.id for s in self.seats
                          if s.level == lvl and s.covers(district, street, grid) and s.staffed(local))
            if found:
                return Routing(lvl, found)
        # Nobody on duty anywhere up to the city: tell every city seat anyway (never dropped).
        return Routing("city", tuple(s.id for s in self.seats if s.level == "city"))

    def counts(self) -> dict[str, int]:
        """Seats per level."""
        return {lvl: sum(1 for s in self.seats if s.level == lvl) for lvl in LEVELS}


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def _window(raw: dict[str, Any]) -> Window:
    days = frozenset(_DAYS.index(d) for d in raw.get("days", _DAYS))
    return Window(days, _minutes(raw["from"]), _minutes(raw["to"]))  # "24:00" is 1440: the whole day


def book_of(data: dict[str, Any], *, schema_errors: list[str] | None = None) -> SeatBook:
    """The seat book of a parsed seats file already checked against its JSON Schema (its
    reasons, if any, in ``schema_errors``); raise :class:`SeatsInvalid` naming every problem
    the schema cannot see (duplicate ids, a level's missing jurisdiction, no city seat…)."""
    errors = list(schema_errors or [])
    if errors:
        raise SeatsInvalid(errors)
    tz_name = data.get("timezone", "Asia/Shanghai")
    try:
        tz: tzinfo = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        errors.append(f"timezone: unknown time zone {tz_name!r}")
        tz = ZoneInfo("Asia/Shanghai")
    seats: list[Seat] = []
    seen: set[str] = set()
    for i, raw in enumerate(data["seats"]):
        where = f"seats[{i}] ({raw['id']})"
        if raw["id"] in seen:
            errors.append(f"{where}: duplicate seat id")
        seen.add(raw["id"])
        j = raw["jurisdiction"]
        level = raw["level"]
        if level == "city" and j:
            errors.append(f"{where}: a city seat covers the whole city; its jurisdiction must be {{}}")
        if level == "district" and (not j.get("districts") or set(j) - {"districts"}):
            errors.append(f"{where}: a district seat's jurisdiction is {{\"districts\": [...]}}")
        if level in ("street", "grid") and "districts" in j:
            errors.append(f"{where}: a {level} seat's jurisdiction names streets or grids, not districts")
        if level == "street" and not (j.get("streets") or j.get("grids")):
            errors.append(f"{where}: a street seat needs streets or grids")
        if level == "grid" and (not j.get("grids") or "streets" in j):
            errors.append(f"{where}: a grid seat's jurisdiction is {{\"grids\": [...]}}")
        if not raw["receivers"]:
            errors.append(f"{where}: no receivers (an escalation addressed to it would reach nobody)")
        windows = tuple(_window(w) for w in raw["on_duty"]) if "on_duty" in raw else None
        for k, w in enumerate(windows or ()):
            if w.start == w.end:
                errors.append(f"{where}: on_duty[{k}] is empty (from == to)")
        seats.append(Seat(raw["id"], level, raw.get("name", ""), frozenset(j.get("districts", ())),
                          frozenset(j.get("streets", ())), frozenset(j.get("grids", ())), windows,
                          frozenset(raw.get("roles", DEFAULT_ROLES)), tuple(raw["receivers"])))
    if not any(s.level == "city" for s in seats):
        errors.append("seats: no city seat (the top of every escalation chain must be somebody)")
    if errors:
        raise SeatsInvalid(errors)
    digest = hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    return SeatBook(tuple(seats), tz, digest)


# -- addressing escalations ----------------------------------------------------------------------
def addressed(body: dict[str, Any], book: SeatBook, now: datetime) -> dict[str, Any]:
    """The escalation ``body`` with the seats it is addressed to (``seats``, ``seat_level``)."""
    r = book.route(body["level"], body.get("district"), body.get("street"), body.get("grid"), now)
    return {**body, "seats": list(r.seats), "seat_level": r.level}


def address_change(change: Change, book: SeatBook | None, now: datetime) -> Change:
    """``change`` with every escalation it publishes addressed to its seats at ``now``, and the
    stored entries of newly raised ones too (a re-notification is addressed anew: it goes to
    whoever is on duty when it is sent). Without a seat book, ``change`` unchanged."""
    if book is None or not any(kind == "escalation" for kind, _ in change.publish):
        return change
    publish = tuple((kind, addressed(body, book, now) if kind == "escalation" else body)
                    for kind, body in change.publish)
    by_id = {body["escalation_id"]: body for kind, body in publish if kind == "escalation"}
    entries = change.doc.get("escalations") or {}
    fresh = {eid: {**e, "body": {**e["body"], "seats": by_id[eid]["seats"], "seat_level": by_id[eid]["seat_level"]}}
             for eid, e in entries.items() if eid in by_id and "seats" not in e["body"]}
    doc = {**change.doc, "escalations": {**entries, **fresh}} if fresh else change.doc
    raised = tuple(by_id.get(e["escalation_id"], e) for e in change.escalations)
    return replace(change, doc=doc, publish=publish, escalations=raised)
