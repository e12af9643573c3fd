"""kaifong.agents.core.matching — choose units for each response ring: pure functions, clock injected.

Layer: agents/core (pure: no I/O). It imports :mod:`kaifong.streams.settings` (for :class:`Ring`) and
the standard library only. Nothing here reads the clock: every ETA is a duration from the
moment of the decision, and the caller, which holds the injected clock, stamps ``decided_at``
on the assignment it publishes. The same input therefore always yields the same decision,
which is what lets a replayed incident reproduce its assignments.

The caller finds the nearby available units (a Redis GEO search, typically 50–300 of them),
builds :class:`Candidate` objects and an :class:`IncidentView`, and calls :func:`choose_units`
with the configured ring table. Each ring's rule applies only if a ring with that number is
configured (a city may run three rings):

1. **self_rescue** — posts and units at the incident's venue, or that reach it within ring 1's
   target; at most two, venue units first.
2. **mutual_aid** — neighbouring posts and units within ring 2's target, added until the
   incident's needs (responders and equipment, see :data:`RUN_CARDS`) are covered, counting
   what ring 1 brings; at most eight.
3. **grid** — the grid's emergency team (its own grid's team first), 2 teams for severity 1.
4. **street** and 5. **professional** — 1 unit (2 for severity 1); decided at once only for
   severity 1–2 unless the caller names the rings.

Rings 3–5 may take a unit beyond the ring's target (someone late beats no one) and say so in
the reason ``beyond_target``. Ring numbers above 5 have no rule here and are never decided.

Re-dispatch (there is no ``next_candidates`` function): call :func:`choose_units` again with
``exclude`` holding every unit already tried or taken for the incident, and
``rings_to_decide`` naming the rings to redo. Ring 2 counts only the ring-1 picks of the same
call towards the needs, so a caller redoing ring 2 alone should pass the still-missing needs
as ``IncidentView.needs`` (e.g. the previous decision's ``shortfall``).

Cost: one haversine and one sort per ring over the remaining candidates, plus a scan per
missing equipment pick in ring 2 (at most eight), so linear apart from the sorts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kaifong.streams.settings import Ring

__all__ = [
    "DETOUR",
    "RUN_CARDS",
    "SPEED_MPS",
    "TURNOUT_S",
    "AssignedUnit",
    "Candidate",
    "IncidentView",
    "Needs",
    "RingDecision",
    "choose_units",
    "eta_s",
    "haversine_m",
    "load_run_cards",
    "needs_for",
    "rank_candidates",
]

_SEVERITIES = (1, 2, 3, 4)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Needs:
    """What an incident needs on scene: a number of responders and a set of equipment codes."""

    responders: int
    equipment: frozenset[str]

    def __post_init__(self) -> None:
        # A negative count would silently turn into "needs met"; refuse it at construction.
        if self.responders < 0:
            raise ValueError(f"needs: responders must be >= 0, got {self.responders}")


@dataclass(frozen=True, slots=True)
class Candidate:
    """An available unit near the incident, as read from the live unit state.

    ``readiness`` is an optional 0–1 score (e.g. from pull-test drills); it only matters when
    the caller gives it a weight.
    """

    unit_id: str
    kind: str
    lat: float
    lon: float
    responders: int
    equipment: frozenset[str]
    district: str
    grid: str
    venue_id: str | None = None
    readiness: float | None = None


@dataclass(frozen=True, slots=True)
class IncidentView:
    """The part of an incident the matching needs. ``needs`` overrides the run card.

    ``exercise`` is carried but deliberately ignored here: an exercise is matched exactly like
    a real incident (it "rides the real path"); keeping it away from real pagers is the
    dispatching agent's job, not the matcher's.
    """

    incident_id: str
    category: str
    severity: int
    lat: float
    lon: float
    district: str | None
    grid: str | None
    venue_id: str | None
    exercise: bool
    needs: Needs | None = None

    def __post_init__(self) -> None:
        # The run cards and the "2 units for severity 1" rules are keyed on 1..4.
        if self.severity not in _SEVERITIES:
            raise ValueError(f"incident {self.incident_id}: severity must be 1..4, got {self.severity}")


@dataclass(frozen=True, slots=True)
class AssignedUnit:
    """One unit chosen for a ring, with the figures the decision was based on.

    ``rank`` is the unit's 1-based position in that ring's candidate ranking, so a reviewer
    can see when a lower-ranked unit was taken (a venue unit, or one carrying equipment).
    """

    unit_id: str
    kind: str
    distance_m: float
    eta_s: float
    responders: int
    rank: int
    equipment: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RingDecision:
    """The decision for one ring.

    ``shortfall`` is ``None`` when the ring got what it wanted. For ring 2 it holds the
    responders and equipment still missing; for the other rings it carries no quantities
    (``Needs(0, frozenset())``) and means the ring got fewer units than it wanted.
    """

    ring: int
    units: tuple[AssignedUnit, ...]
    shortfall: Needs | None
    reason: str


# --------------------------------------------------------------------------- run cards


def _card(rows: Mapping[int, tuple[int, Iterable[str]]]) -> dict[int, Needs]:
    return {sev: Needs(resp, frozenset(eq)) for sev, (resp, eq) in rows.items()}


#: Default run cards: category x severity (1 most severe) -> needs. Cities override them with
#: :func:`load_run_cards`. Responders count everyone on scene from rings 1–2 (posts and units);
#: equipment codes match the ones units register.
RUN_CARDS: dict[str, dict[int, Needs]] = {
    # Fire: extinguishers first; people to evacuate and hold the stairs.
    "fire": _card({1: (10, ["extinguisher"]), 2: (6, ["extinguisher"]),
                   3: (4, ["extinguisher"]), 4: (2, ["extinguisher"])}),
    # Knife or attack: the "shield, steel fork, baton" kit, and numbers to contain and protect.
    "violence": _card({1: (12, ["shield", "steel_fork", "baton"]), 2: (8, ["shield", "steel_fork", "baton"]),
                       3: (4, ["shield", "baton"]), 4: (2, ["baton"])}),
    # Medical: an AED within minutes matters more than numbers.
    "medical": _card({1: (6, ["aed", "stretcher"]), 2: (4, ["aed", "stretcher"]),
                      3: (2, ["aed"]), 4: (1, [])}),
    "drowning": _card({1: (6, ["life_buoy", "aed", "stretcher"]), 2: (4, ["life_buoy", "aed"]),
                       3: (3, ["life_buoy"]), 4: (2, ["life_buoy"])}),
    # Stampede or crush: many people to open exits and stop the inflow.
    "crowd": _card({1: (20, ["megaphone", "aed", "stretcher"]), 2: (12, ["megaphone", "stretcher"]),
                    3: (6, ["megaphone"]), 4: (3, [])}),
    "traffic": _card({1: (8, ["traffic_cone", "aed", "stretcher"]), 2: (4, ["traffic_cone", "aed"]),
                      3: (2, ["traffic_cone"]), 4: (1, [])}),
    # Hazardous materials: residents cordon and evacuate; they do not go in.
    "hazmat": _card({1: (8, ["cordon_tape", "respirator", "extinguisher"]),
                     2: (6, ["cordon_tape", "respirator"]),
                     3: (4, ["cordon_tape"]), 4: (2, ["cordon_tape"])}),
    # Fallback for any category without a card of its own.
    "other": _card({1: (6, []), 2: (4, []), 3: (2, []), 4: (1, [])}),
}

_ENTRY_KEYS = frozenset({"responders", "equipment"})


def _severity_key(category: str, key: object) -> int:
    # JSON object keys are strings; Python callers may use ints. Both mean the same severity,
    # but "01", " 1" or True are typos, not severities.
    if isinstance(key, int) and not isinstance(key, bool) and key in _SEVERITIES:
        return key
    if isinstance(key, str) and key in {"1", "2", "3", "4"}:
        return int(key)
    raise ValueError(f"run card {category!r}: severity {key!r} is not 1..4")


# Every malformed run card raises ValueError, wrong types included (hence the TRY004 waivers):
# the caller reports a bad run-card file with one `except ValueError`, as for bad settings.


def _parse_entry(category: str, severity: int, entry: object) -> Needs:
    where = f"run card {category!r} severity {severity}"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected an object with responders and equipment")  # noqa: TRY004
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        # A misspelt "responder" would otherwise read as zero responders needed.
        raise ValueError(f"{where}: unknown keys {sorted(map(str, unknown))}")
    if "responders" not in entry:
        raise ValueError(f"{where}: responders is required")
    responders = entry["responders"]
    if isinstance(responders, bool) or not isinstance(responders, int) or responders < 0:
        raise ValueError(f"{where}: responders must be a non-negative integer, got {responders!r}")
    equipment = entry.get("equipment", [])
    if isinstance(equipment, str | bytes) or not isinstance(equipment, list | tuple | set | frozenset):
        raise ValueError(f"{where}: equipment must be a list of codes, got {equipment!r}")  # noqa: TRY004
    for code in equipment:
        if not isinstance(code, str) or not code:
            raise ValueError(f"{where}: equipment codes must be non-empty strings, got {code!r}")
    return Needs(responders, frozenset(equipment))


def load_run_cards(data: Mapping[str, Any]) -> dict[str, dict[int, Needs]]:
    """Parse run cards from a JSON-like dict, validating every entry.

    The shape is ``{"fire": {"1": {"responders": 10, "equipment": ["extinguisher"]}, ...}}``.
    Severities are 1–4 (string or int keys); responders a non-negative integer; equipment a
    list of code strings (optional, default none). A category may list only some severities:
    :func:`needs_for` falls back to ``other`` for the rest.

    >>> load_run_cards({"fire": {"1": {"responders": 10, "equipment": ["extinguisher"]}}})
    {'fire': {1: Needs(responders=10, equipment=frozenset({'extinguisher'}))}}

    :raises ValueError: with the offending category and severity in the message.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"run cards: expected an object of categories, got {type(data).__name__}")  # noqa: TRY004
    cards: dict[str, dict[int, Needs]] = {}
    for category, rows in data.items():
        if not isinstance(category, str) or not category:
            raise ValueError(f"run cards: category must be a non-empty string, got {category!r}")
        if not isinstance(rows, Mapping):
            raise ValueError(f"run card {category!r}: expected an object of severities")  # noqa: TRY004
        card: dict[int, Needs] = {}
        for key, entry in rows.items():
            severity = _severity_key(category, key)
            if severity in card:
                raise ValueError(f"run card {category!r}: severity {severity} given twice")
            card[severity] = _parse_entry(category, severity, entry)
        cards[category] = card
    return cards


def needs_for(incident: IncidentView, run_cards: Mapping[str, Mapping[int, Needs]] = RUN_CARDS) -> Needs:
    """The incident's needs: its explicit ``needs``, else its run card.

    Lookup order: ``run_cards[category][severity]``, ``run_cards["other"][severity]``, then the
    built-in ``RUN_CARDS["other"]`` — a city's partial cards must never leave an incident with
    no needs at all.
    """
    if incident.needs is not None:
        return incident.needs
    for cards in (run_cards.get(incident.category), run_cards.get("other"), RUN_CARDS["other"]):
        if cards is not None and incident.severity in cards:
            return cards[incident.severity]
    # Unreachable: IncidentView pins severity to 1..4 and RUN_CARDS["other"] has them all.
    raise ValueError(f"no run card for severity {incident.severity}")


# --------------------------------------------------------------------------- travel model

#: Travel speed by unit kind, metres per second (posts walk; units run or cycle; grid teams
#: ride e-bikes; street forces and professionals drive).
SPEED_MPS: dict[str, float] = {
    "post": 1.4,
    "unit": 2.5,
    "grid_team": 5.0,
    "street_force": 8.0,
    "professional": 10.0,
}

#: Turnout by unit kind, seconds: from being paged to moving (a post is already standing;
#: a vehicle crew has to get to the vehicle).
TURNOUT_S: dict[str, float] = {
    "post": 5.0,
    "unit": 20.0,
    "grid_team": 40.0,
    "street_force": 60.0,
    "professional": 90.0,
}

#: Road distance over straight-line distance: streets and stairs are not straight lines.
DETOUR = 1.3

_EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two points given in degrees.

    >>> round(haversine_m(23.0, 113.0, 24.0, 113.0) / 1000, 1)
    111.2
    """
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    # min(): rounding can push a just above 1 for antipodal points, and asin would raise.
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def eta_s(distance_m: float, kind: str) -> float:
    """Estimated seconds to arrive: turnout + road distance (``DETOUR`` x straight) / speed.

    >>> eta_s(1000.0, "grid_team")
    300.0

    :raises ValueError: for an unknown kind or a negative distance.
    """
    if kind not in SPEED_MPS:
        raise ValueError(f"unknown unit kind {kind!r}; expected one of {sorted(SPEED_MPS)}")
    if distance_m < 0:
        raise ValueError(f"distance must be >= 0, got {distance_m}")
    return TURNOUT_S[kind] + distance_m * DETOUR / SPEED_MPS[kind]


# --------------------------------------------------------------------------- ranking

_Ranked = tuple[Candidate, float, float]


def rank_candidates(
    incident: IncidentView,
    candidates: Iterable[Candidate],
    kinds: frozenset[str],
    grid_bonus_s: float = 30.0,
    readiness_weight: float = 0.0,
) -> list[_Ranked]:
    """Candidates of the given kinds as ``(candidate, distance_m, eta_s)``, best first.

    Score (lower is better) = ETA − ``grid_bonus_s`` if the candidate belongs to the
    incident's grid − ``readiness_weight`` x readiness x 60. The grid bonus prefers the people
    who know the streets and answer to the grid when the difference is small; it never makes
    a far unit beat a much nearer one. Ties break by ``unit_id`` so the order does not depend
    on the order the GEO search returned.
    """
    scored: list[tuple[float, str, Candidate, float, float]] = []
    for c in candidates:
        if c.kind not in kinds:
            continue
        distance = haversine_m(incident.lat, incident.lon, c.lat, c.lon)
        eta = eta_s(distance, c.kind)
        score = eta
        if incident.grid is not None and c.grid == incident.grid:
            score -= grid_bonus_s
        if readiness_weight:
            score -= readiness_weight * (c.readiness or 0.0) * 60.0
        scored.append((score, c.unit_id, c, distance, eta))
    # Sort on (score, unit_id) only: Candidate has no ordering, and a full-tuple sort would
    # try to compare candidates when two entries share a unit_id.
    scored.sort(key=lambda row: (row[0], row[1]))
    return [(c, distance, eta) for _, _, c, distance, eta in scored]


# --------------------------------------------------------------------------- choosing

_FOOT_KINDS = frozenset({"post", "unit"})
_RING_KINDS: dict[int, frozenset[str]] = {
    3: frozenset({"grid_team"}),
    4: frozenset({"street_force"}),
    5: frozenset({"professional"}),
}
_RING1_MAX = 2
_RING2_MAX = 8
_EMPTY = Needs(0, frozenset())


def _assigned(c: Candidate, distance: float, eta: float, rank: int) -> AssignedUnit:
    return AssignedUnit(c.unit_id, c.kind, distance, eta, c.responders, rank, tuple(sorted(c.equipment)))


def _decide_ring1(incident: IncidentView, ranked: list[_Ranked], ring: Ring) -> RingDecision:
    if not ranked:
        return RingDecision(ring.number, (), _EMPTY, "no_candidate")
    # Nobody on an empty post can act, so responders == 0 never counts for self-rescue.
    venue: list[AssignedUnit] = []
    nearby: list[AssignedUnit] = []
    for rank, (c, distance, eta) in enumerate(ranked, start=1):
        if c.responders <= 0:
            continue
        # A unit at the venue is chosen even beyond the target: in a mall or a campus the
        # people already inside are the fastest help, whatever the straight line says.
        if incident.venue_id is not None and c.venue_id == incident.venue_id:
            venue.append(_assigned(c, distance, eta, rank))
        elif eta <= ring.target_s:
            nearby.append(_assigned(c, distance, eta, rank))
    picks = (venue + nearby)[:_RING1_MAX]
    if not picks:
        return RingDecision(ring.number, (), _EMPTY, "none_in_reach")
    return RingDecision(ring.number, tuple(picks), None, "venue" if venue else "nearby")


def _decide_ring2(ranked: list[_Ranked], ring: Ring, needs: Needs, already: Sequence[AssignedUnit],
                  equipment_of: Mapping[str, frozenset[str]]) -> RingDecision:
    missing_resp = max(0, needs.responders - sum(u.responders for u in already))
    have: set[str] = set()
    for u in already:
        have |= equipment_of[u.unit_id]
    missing_eq = set(needs.equipment) - have
    if missing_resp == 0 and not missing_eq:
        return RingDecision(ring.number, (), None, "needs_met")
    if not ranked:
        return RingDecision(ring.number, (), Needs(missing_resp, frozenset(missing_eq)), "no_candidate")

    # Mutual aid is people on foot or bicycle: only those who make the target count, and a
    # unit with nobody on it brings nothing.
    reach = [(rank, row) for rank, row in enumerate(ranked, start=1)
             if row[2] <= ring.target_s and row[0].responders > 0]
    chosen: list[AssignedUnit] = []
    chosen_ids: set[str] = set()

    def take(rank: int, row: _Ranked) -> None:
        nonlocal missing_resp
        c, distance, eta = row
        chosen.append(_assigned(c, distance, eta, rank))
        chosen_ids.add(c.unit_id)
        missing_resp = max(0, missing_resp - c.responders)
        missing_eq.difference_update(c.equipment)

    # Equipment first: responders are interchangeable, a shield is not. Filling responders
    # first by ETA could spend all eight places before the one unit with a shield. Each pass
    # takes the best-ranked reachable unit carrying something still missing.
    while missing_eq and len(chosen) < _RING2_MAX:
        found = next(((rank, row) for rank, row in reach
                      if row[0].unit_id not in chosen_ids and not missing_eq.isdisjoint(row[0].equipment)),
                     None)
        if found is None:
            break
        take(*found)
    # Then responders, nearest first.
    for rank, row in reach:
        if missing_resp <= 0 or len(chosen) >= _RING2_MAX:
            break
        if row[0].unit_id not in chosen_ids:
            take(rank, row)

    chosen.sort(key=lambda u: u.rank)
    if missing_resp == 0 and not missing_eq:
        return RingDecision(ring.number, tuple(chosen), None, "needs_met")
    return RingDecision(ring.number, tuple(chosen), Needs(missing_resp, frozenset(missing_eq)), "shortfall")


def _decide_outer(incident: IncidentView, ranked: list[_Ranked], ring: Ring) -> RingDecision:
    if not ranked:
        return RingDecision(ring.number, (), _EMPTY, "no_candidate")
    want = 2 if incident.severity == 1 else 1
    numbered = list(enumerate(ranked, start=1))
    picks: list[tuple[int, _Ranked]] = []
    own_grid = False
    if ring.number == 3 and incident.grid is not None:
        own = next(((rank, row) for rank, row in numbered if row[0].grid == incident.grid), None)
        # The grid's own team goes first — it is "the grid's emergency team" — unless it would
        # miss the target while a neighbouring grid's team would make it: then the ring is
        # better served by the ranking.
        if own is not None and (own[1][2] <= ring.target_s
                                or not any(row[2] <= ring.target_s for _, row in numbered)):
            picks.append(own)
            own_grid = True
    for rank, row in numbered:
        if len(picks) >= want:
            break
        if all(row[0].unit_id != p[1][0].unit_id for p in picks):
            picks.append((rank, row))
    units = tuple(_assigned(c, distance, eta, rank) for rank, (c, distance, eta) in picks)
    shortfall = None if len(units) >= want else _EMPTY
    # Someone late beats no one: a unit beyond the target is still sent, and the reason says
    # so, so the ring clock's escalation is expected rather than a surprise.
    if min(u.eta_s for u in units) > ring.target_s:
        reason = "beyond_target"
    elif own_grid:
        reason = "own_grid"
    else:
        reason = "nearest"
    return RingDecision(ring.number, units, shortfall, reason)


def choose_units(
    incident: IncidentView,
    candidates: Sequence[Candidate],
    rings: Sequence[Ring],
    run_cards: Mapping[str, Mapping[int, Needs]] = RUN_CARDS,
    *,
    rings_to_decide: Iterable[int] | None = None,
    exclude: frozenset[str] = frozenset(),
    readiness_weight: float = 0.0,
) -> list[RingDecision]:
    """Decide the rings of an incident: one :class:`RingDecision` per ring decided, in order.

    ``rings_to_decide`` defaults to rings 1–3, plus 4–5 for severity 1–2; either way only
    configured rings with a rule (1–5) are decided. ``exclude`` holds unit ids already taken
    or tried; they are never chosen. A unit is chosen for at most one ring, and a unit listed
    twice in ``candidates`` counts once (its first entry).

    Reasons — ring 1: ``venue``, ``nearby``, ``none_in_reach``; ring 2: ``needs_met``,
    ``shortfall``; ring 3: ``own_grid``, ``nearest``; rings 4–5: ``nearest``; rings 3–5:
    ``beyond_target`` when even the best chosen unit misses the target; any ring:
    ``no_candidate`` when no unit of its kinds is left at all.
    """
    by_number = {r.number: r for r in rings}
    if rings_to_decide is None:
        wanted = {1, 2, 3} | ({4, 5} if incident.severity <= 2 else set())
    else:
        wanted = set(rings_to_decide)
    numbers = sorted(n for n in wanted if n in by_number and 1 <= n <= 5)

    # Drop excluded units and repeated ids once, up front; `taken` then grows ring by ring.
    pool: list[Candidate] = []
    seen: set[str] = set(exclude)
    for c in candidates:
        if c.unit_id not in seen:
            seen.add(c.unit_id)
            pool.append(c)
    equipment_of = {c.unit_id: c.equipment for c in pool}
    taken: set[str] = set()
    ring1_units: tuple[AssignedUnit, ...] = ()
    decisions: list[RingDecision] = []

    for number in numbers:
        ring = by_number[number]
        kinds = _FOOT_KINDS if number <= 2 else _RING_KINDS[number]
        ranked = rank_candidates(incident, (c for c in pool if c.unit_id not in taken), kinds,
                                 readiness_weight=readiness_weight)
        if number == 1:
            decision = _decide_ring1(incident, ranked, ring)
            ring1_units = decision.units
        elif number == 2:
            decision = _decide_ring2(ranked, ring, needs_for(incident, run_cards), ring1_units, equipment_of)
        else:
            decision = _decide_outer(incident, ranked, ring)
        taken.update(u.unit_id for u in decision.units)
        decisions.append(decision)
    return decisions
