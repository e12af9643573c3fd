"""kaifong.agents.core.drills — pull-test drills: the programme's figures, scoring a drill, readiness.

Layer: agents/core (pure: no I/O, no clock, no global randomness). The caller holds the clock
and the stored state, so one input always gives one score, and a replay reproduces it. Who is
drilled when is :mod:`kaifong.agents.core.drillplan`'s; what a manual order or a query of the
drills may say is :mod:`kaifong.agents.core.drillorders`'.

**Scoring** (:func:`apply_response`, :func:`abort`, :func:`score`, :func:`decide_at`) folds the
unit's answers into a :class:`DrillState` and decides pass / late / fail / no_answer / aborted
(rules on :func:`score`). **Readiness** (:func:`readiness`, :func:`pass_rates`) summarises
results. The rest are the small pure steps of the drill flow: the policy from the settings, the
state rebuilt from what is stored, why a unit cannot be drilled now.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from kaifong.streams.settings import Settings

__all__ = [
    "BUSY",
    "CHANNELS",
    "OUTCOMES",
    "OUTCOME_SCORES",
    "STAGES",
    "DrillPolicy",
    "DrillState",
    "Issued",
    "abort",
    "abort_time",
    "apply_response",
    "aware",
    "busy_reason",
    "busy_why",
    "decide_at",
    "fresh_state",
    "from_ms",
    "issued_record",
    "local_day",
    "open_drill_ttl_s",
    "parse_hours",
    "pass_rates",
    "policy_from_settings",
    "readiness",
    "readiness_of",
    "required_headcount",
    "result_entry",
    "result_record",
    "rfc3339",
    "score",
    "stored_state",
    "to_ms",
]

#: Stages of a unit's answer, as in ``drill-response.schema.json``.
STAGES: tuple[str, ...] = ("acknowledged", "mustered")
#: Outcomes, as in ``drill-result.schema.json``.
OUTCOMES: tuple[str, ...] = ("pass", "late", "fail", "no_answer", "aborted")
#: Weight of each outcome in :func:`readiness`; ``aborted`` says nothing about the unit.
OUTCOME_SCORES: dict[str, float] = {"pass": 1.0, "late": 0.6, "fail": 0.2, "no_answer": 0.0}

#: Unit statuses that make a unit ineligible at issue time. A unit with no status yet (never
#: reported) is eligible: whether it answers is exactly what a pull test finds out. The issue
#: script (``store/lua/drill_issue.lua``) holds the same table; a test keeps the two equal.
BUSY: tuple[str, ...] = ("dispatched", "en_route", "on_scene", "drilling", "off_duty", "out_of_service")
#: How a drill reaches the unit.
CHANNELS: tuple[str, ...] = ("radio", "video")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class DrillPolicy:
    """The drill programme's figures.

    ``daily_rate`` drills a day between ``start_hour`` and ``end_hour`` local time (UTC
    ``+tz_offset_hours``); every unit at least once per ``coverage_days``, aimed
    ``safety_days`` early (None: as early as the capacity allows, see
    :attr:`~kaifong.agents.core.drillplan.DrillPlanner.safety_days`); the random fill skips units drilled in the last
    ``min_gap_days``.
    Scoring: acknowledge within ``ack_target_s`` and muster within ``muster_target_s`` with at
    least ``min_headcount_ratio`` of the expected headcount; no acknowledgement by
    ``no_answer_after_s`` is ``no_answer``, no muster by ``no_muster_after_s`` is ``fail``.
    """

    daily_rate: int = 705
    coverage_days: int = 35
    start_hour: int = 8
    end_hour: int = 20
    ack_target_s: float = 60
    muster_target_s: float = 180
    tz_offset_hours: int = 8
    min_gap_days: int = 7
    safety_days: int | None = None
    min_headcount_ratio: float = 0.6
    no_answer_after_s: float = 180
    no_muster_after_s: float = 540

    def __post_init__(self) -> None:
        if self.daily_rate < 1 or self.coverage_days < 1:
            raise ValueError("daily_rate and coverage_days must be at least 1")
        if not 0 <= self.start_hour < self.end_hour <= 24:
            raise ValueError(f"need 0 <= start_hour < end_hour <= 24, got {self.start_hour}–{self.end_hour}")
        if self.safety_days is not None and not 0 <= self.safety_days < self.coverage_days:
            raise ValueError("safety_days must be in [0, coverage_days)")
        if self.min_gap_days < 0:
            raise ValueError("min_gap_days must not be negative")
        if not 0 < self.min_headcount_ratio <= 1:
            raise ValueError("min_headcount_ratio must be in (0, 1]")
        if not 0 < self.ack_target_s <= self.no_answer_after_s:
            raise ValueError("need 0 < ack_target_s <= no_answer_after_s")
        if not 0 < self.muster_target_s <= self.no_muster_after_s:
            raise ValueError("need 0 < muster_target_s <= no_muster_after_s")

    @property
    def tz(self) -> timezone:
        """The local time zone (a fixed offset: China has no daylight saving)."""
        return timezone(timedelta(hours=self.tz_offset_hours))


def aware(t: datetime, name: str) -> datetime:
    """``t`` itself, refused if naive: a naive time has no instant, so it cannot be compared."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {t.isoformat()}")
    return t


def parse_hours(text: str) -> tuple[int, int]:
    """``"8-20"`` → ``(8, 20)``.

    >>> parse_hours("0-24")
    (0, 24)
    """
    start, sep, end = text.partition("-")
    if sep and start.strip().isdigit() and end.strip().isdigit():
        return int(start), int(end)
    raise ValueError(f"KAIFONG_DRILL_HOURS={text!r}: expected start-end, e.g. 8-20")


def policy_from_settings(settings: Settings) -> DrillPolicy:
    """The drill programme as configured. The no-answer and no-muster cut-offs are 3 × their
    targets, the programme's defaults (180 s and 540 s), so shrinking a target for a test or a
    demo shrinks its cut-off with it."""
    start, end = parse_hours(settings.drill_hours)
    ack, muster = float(settings.drill_ack_target_s), float(settings.drill_muster_target_s)
    return DrillPolicy(daily_rate=settings.drills_per_day, coverage_days=settings.drill_coverage_days,
                       start_hour=start, end_hour=end, ack_target_s=ack, muster_target_s=muster,
                       no_answer_after_s=3 * ack, no_muster_after_s=3 * muster)


def to_ms(t: datetime) -> int:
    """Milliseconds since the epoch (what the stored plans, day lists and timers are scored by)."""
    return round(t.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    """An aware UTC time from milliseconds, exactly (integer arithmetic, no float rounding)."""
    return _EPOCH + timedelta(milliseconds=ms)


def local_day(t: datetime, policy: DrillPolicy) -> date:
    """The city's local date of ``t`` (UTC+8): the day a drill is counted on."""
    return t.astimezone(policy.tz).date()


# -- lifecycle -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DrillState:
    """One drill as the scorer sees it: issue facts and the first answer of each stage."""

    drill_id: str
    unit_id: str
    channel: str
    issued_at: datetime
    expected_headcount: int
    ack_at: datetime | None = None
    muster_at: datetime | None = None
    headcount: int | None = None
    aborted_at: datetime | None = None


def required_headcount(expected: int, policy: DrillPolicy) -> int:
    """Responders a muster must report: ``ceil(min_headcount_ratio × expected)``, at least 1."""
    # The epsilon keeps e.g. 0.6 × 10 = 6.000000000000001 from demanding a seventh person.
    return max(1, math.ceil(policy.min_headcount_ratio * expected - 1e-9))


def apply_response(state: DrillState, stage: str, at: datetime, headcount: int | None = None) -> DrillState:
    """``state`` with a unit's answer folded in; the first answer of each stage wins.

    ``stage`` is ``acknowledged`` or ``mustered`` (``headcount`` goes with the muster; a muster
    without one counts as a headcount of 0). An answer stamped before ``issued_at`` is refused
    with ``ValueError`` (a clock error or a stale message, not an answer). A duplicate stage
    returns ``state`` unchanged. Answers after the result was decided are recorded here but do
    not change :func:`score`'s result; the caller does not need to apply them at all.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    if aware(at, "at") < state.issued_at:
        raise ValueError(f"{stage} at {at.isoformat()} is before the drill was issued "
                         f"({state.issued_at.isoformat()})")
    if stage == "acknowledged":
        return state if state.ack_at is not None else replace(state, ack_at=at)
    if state.muster_at is not None:
        return state
    return replace(state, muster_at=at, headcount=headcount)


def abort(state: DrillState, at: datetime) -> DrillState:
    """``state`` aborted at ``at``: the unit was dispatched to a real incident.

    The drill stops counting against the unit and the unit is fully available for dispatch (the
    caller releases it). An abort after the result was decided changes nothing (:func:`score`
    keeps the result); a second abort keeps the first time.
    """
    if aware(at, "at") < state.issued_at:
        raise ValueError("abort before the drill was issued")
    return state if state.aborted_at is not None else replace(state, aborted_at=at)


def _decision(state: DrillState, policy: DrillPolicy) -> tuple[datetime, str, float | None, float | None]:
    """(when the result is decided if nothing else arrives, outcome, ack_s, muster_s)."""
    issued = state.issued_at

    def secs(t: datetime) -> float:
        return (t - issued).total_seconds()

    # A muster proves the call was heard, so it stands in for a missing (or later) acknowledgement.
    heard = min((t for t in (state.ack_at, state.muster_at) if t is not None), default=None)
    ack_deadline = issued + timedelta(seconds=policy.no_answer_after_s)
    muster_deadline = issued + timedelta(seconds=policy.no_muster_after_s)
    if heard is None or heard > ack_deadline:
        when, outcome, ack_s, muster_s = ack_deadline, "no_answer", None, None
    elif state.muster_at is None or state.muster_at > muster_deadline:
        when, outcome, ack_s, muster_s = muster_deadline, "fail", secs(heard), None
    else:
        when, ack_s, muster_s = state.muster_at, secs(heard), secs(state.muster_at)
        if (state.headcount or 0) < required_headcount(state.expected_headcount, policy):
            outcome = "fail"
        elif ack_s <= policy.ack_target_s and muster_s <= policy.muster_target_s:
            outcome = "pass"
        else:
            outcome = "late"
    if state.aborted_at is not None and state.aborted_at < when:
        early_ack = secs(heard) if heard is not None and heard <= state.aborted_at else None
        return state.aborted_at, "aborted", early_ack, None
    return when, outcome, ack_s, muster_s


def decide_at(state: DrillState, policy: DrillPolicy) -> datetime:
    """When the clock must look at the drill again if nothing else arrives.

    The next deadline (no-answer, then no-muster) while the drill is open; the deciding moment
    (muster or abort time) once it is decided. ``score(state, now)`` is None exactly while
    ``now < decide_at(state)``.
    """
    return _decision(state, policy)[0]


def score(state: DrillState, now: datetime, policy: DrillPolicy) -> tuple[str, float | None, float | None] | None:
    """``(outcome, ack_s, muster_s)`` once decidable at ``now``, else None.

    Seconds are measured from ``issued_at``; a muster also counts as the acknowledgement if
    none came earlier. The rules, in order:

    - ``aborted`` — aborted (real dispatch) before the result below was decided; ``ack_s`` if
      acknowledged before the abort, ``muster_s`` None. An abort after the decision is ignored.
    - ``no_answer`` — no acknowledgement within ``no_answer_after_s`` (default 180 s, 3 × the
      60 s target); decided at that deadline; both seconds None.
    - ``fail`` — acknowledged, but no muster within ``no_muster_after_s`` (default 540 s, 3 × the
      180 s target); decided at that deadline; ``muster_s`` None.
    - ``fail`` — mustered in time but the headcount is below :func:`required_headcount`
      (``ceil(min_headcount_ratio × expected_headcount)``, at least 1); decided at the muster.
    - ``pass`` — ``ack_s ≤ ack_target_s`` and ``muster_s ≤ muster_target_s``, headcount enough.
    - ``late`` — both stages within the cut-offs and headcount enough, but a stage over target.
    """
    when, outcome, ack_s, muster_s = _decision(state, policy)
    if aware(now, "now") < when:
        return None
    return outcome, ack_s, muster_s


def rfc3339(t: datetime) -> str:
    return t.isoformat(timespec="seconds") if t.microsecond == 0 else t.isoformat()


def issued_record(state: DrillState, policy: DrillPolicy, *, reason: str = "scheduled",
                  district: str | None = None, grid: str | None = None) -> dict[str, Any]:
    """The ``drill-issued`` event for ``state`` (schema ``drill-issued.schema.json``)."""
    rec: dict[str, Any] = {
        "drill_id": state.drill_id, "unit_id": state.unit_id, "channel": state.channel,
        "issued_at": rfc3339(state.issued_at), "ack_target_s": policy.ack_target_s,
        "muster_target_s": policy.muster_target_s, "expected_headcount": state.expected_headcount,
        "reason": reason,
    }
    if district is not None:
        rec["district"] = district
    if grid is not None:
        rec["grid"] = grid
    return rec


def result_record(state: DrillState, now: datetime, policy: DrillPolicy, *, district: str | None = None,
                  grid: str | None = None) -> dict[str, Any] | None:
    """The ``drill-result`` event once decidable at ``now`` (``decided_at`` = :func:`decide_at`), else None."""
    scored = score(state, now, policy)
    if scored is None:
        return None
    outcome, ack_s, muster_s = scored
    rec: dict[str, Any] = {
        "drill_id": state.drill_id, "unit_id": state.unit_id, "channel": state.channel,
        "issued_at": rfc3339(state.issued_at), "outcome": outcome, "ack_s": ack_s, "muster_s": muster_s,
        "headcount": state.headcount if muster_s is not None else None,
        "decided_at": rfc3339(decide_at(state, policy)),
    }
    if district is not None:
        rec["district"] = district
    if grid is not None:
        rec["grid"] = grid
    return rec


# -- readiness -----------------------------------------------------------------------------


def readiness(results: Iterable[tuple[datetime, str]] | None, now: datetime, half_life_days: float = 30) -> float:
    """Readiness in [0, 1]: the mean outcome score, each result weighted ``0.5 ** (age / half_life)``.

    Scores are :data:`OUTCOME_SCORES` (pass 1.0, late 0.6, fail 0.2, no_answer 0.0); aborted
    results are ignored. No scored result at all gives 0.5: unknown, neither ready nor not.
    A result stamped after ``now`` counts as age 0.
    """
    if half_life_days <= 0:
        raise ValueError("half_life_days must be positive")
    num = den = 0.0
    for at, outcome in results or ():
        if outcome == "aborted":
            continue
        if outcome not in OUTCOME_SCORES:
            raise ValueError(f"unknown outcome {outcome!r}")
        age_days = max(0.0, (now - at).total_seconds() / 86_400)
        w = 0.5 ** (age_days / half_life_days)
        num += w * OUTCOME_SCORES[outcome]
        den += w
    # A weight can underflow to 0 for results thousands of half-lives old: then nothing is known.
    return num / den if den > 0 else 0.5


def pass_rates(results: Iterable[tuple[str, str]]) -> dict[str, float]:
    """Pass rate per group from ``(group, outcome)`` pairs, aborted drills excluded.

    A group with only aborted drills has no rate and is left out. Keys come out sorted.
    """
    passed: dict[str, int] = {}
    total: dict[str, int] = {}
    for group, outcome in results:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        if outcome == "aborted":
            continue
        total[group] = total.get(group, 0) + 1
        passed[group] = passed.get(group, 0) + (outcome == "pass")
    return {g: passed[g] / total[g] for g in sorted(total)}


# -- the drill flow's small decisions ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Issued:
    """What issuing a drill did: ``issued``, ``duplicate`` (it existed), ``busy`` or ``unknown``."""

    status: str
    record: dict[str, Any] | None = None
    why: str = ""


def open_drill_ttl_s(policy: DrillPolicy) -> int:
    """How long a unit's open-drill mark outlives its issue: well past the last cut-off, so a
    mark whose drill was never decided (its timer lost with its Redis) does not block the unit
    for good."""
    return int(policy.no_muster_after_s * 2 + 3600)


def busy_why(unit_id: str, verdict: str) -> str:
    """The reason of the issue script's ``busy:<why>`` verdict, for a person."""
    return f"unit {unit_id} is {verdict.removeprefix('busy:').replace('_', ' ')}"


def busy_reason(unit_id: str, status: str | None, reserved: bool, open_drill: bool) -> str | None:
    """Why ``unit_id`` cannot be drilled now (the issue script's checks, in its order), or None."""
    if open_drill:
        return f"unit {unit_id} has an open drill"
    if reserved:
        return f"unit {unit_id} is reserved for an incident"
    if status is not None and status in BUSY:
        return f"unit {unit_id} is {status.replace('_', ' ')}"
    return None


def fresh_state(record: Mapping[str, Any]) -> DrillState:
    """The state of a drill from its ``drill-issued`` record, before any answer."""
    return DrillState(record["drill_id"], record["unit_id"], record["channel"],
                      datetime.fromisoformat(record["issued_at"]), int(record.get("expected_headcount") or 0))


def stored_state(record: Mapping[str, Any], answers: Mapping[str, Mapping[str, Any]],
                 aborted_at: str | None) -> DrillState:
    """The state of a drill from what is stored of it: its record, the first answer of each
    stage (``{"at", "headcount"?}``) and when it was aborted."""
    state = fresh_state(record)
    for stage in STAGES:
        answer = answers.get(stage)
        if answer is not None:
            state = apply_response(state, stage, datetime.fromisoformat(answer["at"]), answer.get("headcount"))
    if aborted_at is not None:
        state = abort(state, datetime.fromisoformat(aborted_at))
    return state


def abort_time(state: DrillState, reserved_ms: int | None, now: datetime) -> datetime:
    """When a drill whose unit got reserved is aborted: as of the reservation (``now`` if its
    time is unknown), never before the issue. A unit reserved after it mustered still passed."""
    when = from_ms(reserved_ms) if reserved_ms is not None else now
    return max(state.issued_at, when)


def result_entry(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a unit's result list keeps of a result (None for an aborted drill: not the unit's)."""
    if result["outcome"] == "aborted":
        return None
    return {"at": result["decided_at"], "outcome": result["outcome"]}


def readiness_of(entries: Iterable[Mapping[str, Any]], now: datetime) -> float:
    """:func:`readiness` of a unit's stored result entries (:func:`result_entry`)."""
    return readiness([(datetime.fromisoformat(e["at"]), e["outcome"]) for e in entries], now)
