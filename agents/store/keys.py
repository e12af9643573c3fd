"""kaifong.agents.store.keys — every Redis key kaifong names, in one place.

Layer: agents/store. No other Python module spells a ``kf:`` key (a test greps for it); the Lua
scripts in ``lua/`` compute the few keys they derive from ids (``kf:unit:<id>:live``,
``kf:geo:<pool>:<kind>``, ``kf:units:district:<d>``), and their names match the functions here.
Keys scoped by the topic prefix let two pipelines (e.g. test runs) share one Redis.

Single Redis: the scripts touch keys they compute, so Redis Cluster would need hash tags.
"""

from __future__ import annotations

# -- units -------------------------------------------------------------------------------------
#: Set of every registered unit id.
ALL_UNITS = "kf:units:all"
#: Counter bumped by every registry change (a worker's registry cache compares it).
REGISTRY_VERSION = "kf:units:regver"
#: Hash ``district|kind`` → dispatchable units (the availability gauge).
AVAILABLE_COUNTS = "kf:units:avail"
#: Sorted set: last arrival time (ms) per unit, for heartbeat staleness.
UNITS_SEEN = "kf:units:seen"
#: Drill readiness score per unit (what the matcher may weigh).
READINESS = "kf:readiness"


def unit_live(unit_id: str) -> str:
    """Hash of a unit's live state: status, seq, position, reservation, staleness."""
    return f"kf:unit:{unit_id}:live"


def unit_registry(unit_id: str) -> str:
    """A unit's registry entry (JSON)."""
    return f"kf:unit:{unit_id}:reg"


def geo(pool: str, kind: str) -> str:
    """GEO set of dispatchable units of a kind; pool ``avail`` (real) or ``drill`` (exercise)."""
    return f"kf:geo:{pool}:{kind}"


def district_units(district: str) -> str:
    """Set of the units registered in a district."""
    return f"kf:units:district:{district}"


# -- intake ------------------------------------------------------------------------------------
def seen(event_type: str, event_id: str) -> str:
    """Dedupe ledger entry of one input event (expires after the dedupe window)."""
    return f"kf:seen:{event_type}:{event_id}"


# -- incidents ---------------------------------------------------------------------------------
def incident(incident_id: str) -> str:
    """An incident's stored document: state, decisions, escalations, applied updates."""
    return f"kf:inc:{incident_id}"


def incident_outbox(incident_id: str) -> str:
    """The records an incident's last change has yet to see acknowledged by the broker."""
    return f"kf:inc:{incident_id}:outbox"


def incident_units(incident_id: str) -> str:
    """Set of the units reserved for an incident (a replay finds what a decision held)."""
    return f"kf:inc:{incident_id}:units"


def early_updates(incident_id: str) -> str:
    """List of updates that arrived before their incident's report."""
    return f"kf:early:{incident_id}"


def open_incidents(prefix: str, exercise: bool) -> str:
    """Set of open incident ids, real or exercise."""
    return f"kf:inc:open:{prefix}{'exercise' if exercise else 'real'}"


def open_escalations(prefix: str) -> str:
    """Hash escalation id → level of the open (unacknowledged) real escalations."""
    return f"kf:esc:open:{prefix}"


# -- timers ------------------------------------------------------------------------------------
def timers_due(prefix: str, partition: int) -> str:
    """Sorted set of one partition's pending timers, scored by due time (ms)."""
    return f"kf:clock:{prefix}{partition}"


def timers_inflight(prefix: str, partition: int) -> str:
    """Hash of one partition's timers claimed and being fired."""
    return f"kf:clock:{prefix}{partition}:inflight"


#: Timer namespace of the drills (prefixed to the topic prefix): their own sorted sets.
DRILL_TIMERS = "drills:"

# -- drills ------------------------------------------------------------------------------------
def drill(drill_id: str) -> str:
    """Hash of one drill: ``doc`` (the issue facts, written once), result fields."""
    return f"kf:drill:{drill_id}"


def drill_responses(drill_id: str) -> str:
    """Hash stage → the first answer of that stage."""
    return f"kf:drill:{drill_id}:responses"


def unit_drill(unit_id: str) -> str:
    """A unit's open drill (at most one)."""
    return f"kf:unit:{unit_id}:drill"


def unit_drill_results(unit_id: str) -> str:
    """A unit's last drill results."""
    return f"kf:unit:{unit_id}:drills"


def drills_today(day: str) -> str:
    """Hash outcome → count of the drills issued on local ``day``."""
    return f"kf:drills:today:{day}"


def drills_of_day(day: str) -> str:
    """Sorted set of the drill ids issued on local ``day``, by issue time."""
    return f"kf:drills:day:{day}"


def drill_rates(by: str) -> str:
    """Hash of drill pass counts per district or grid."""
    return f"kf:drills:rates:{by}"


def drills_leader(prefix: str) -> str:
    """The drill scheduler's lease."""
    return f"kf:drills:leader:{prefix}"


def drills_plan(prefix: str) -> str:
    """Planned drills (``unit|ms``) scored by issue time."""
    return f"kf:drills:plan:{prefix}"


def drills_planner(prefix: str) -> str:
    """The planner's state (unit → last drill, ``@epoch``)."""
    return f"kf:drills:planner:{prefix}"


def drills_planned(prefix: str, day: str) -> str:
    """Set once local ``day`` is planned."""
    return f"kf:drills:planned:{prefix}{day}"


def drills_open(prefix: str, partition: int) -> str:
    """Open drills (drill id → unit id) of one partition."""
    return f"kf:drills:open:{prefix}{partition}"


# -- reports -----------------------------------------------------------------------------------
#: Hash local date → directory of the after-action report made for that day.
REPORTS = "kf:reports"


def report_claim(day: str) -> str:
    """A worker's claim on making local ``day``'s report (expires, so a dead maker hands it on)."""
    return f"kf:reports:claim:{day}"


def notify_leader(prefix: str) -> str:
    """The notifier's lease (one worker pushes escalations to Alertmanager)."""
    return f"kf:notify:leader:{prefix}"


def notify_firing(prefix: str) -> str:
    """Hash alert key → the alert last pushed as firing (so a new leader can resolve it)."""
    return f"kf:notify:firing:{prefix}"
