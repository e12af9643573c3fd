"""kaifong.agents.core.drillplan — pull-test drills: stratified random sampling with a coverage guarantee, and scoring.

Layer: agents (pure: no I/O, no clock, no global randomness). It imports the standard library
only; the caller holds the clock, the ``random.Random`` and the persisted state, so one input
always gives one plan and one score, and a replay reproduces both.

**Scheduling** (:class:`DrillPlanner`). The command centre pull-tests about ``daily_rate`` units
a day, issued between ``start_hour`` and ``end_hour`` local time (Asia/Shanghai, UTC+8). Each
day's selection has two parts:

1. *Coverage* — every unit must be drilled at least once every ``coverage_days``. A unit's
   due date is its last drill's local date + ``coverage_days`` (a never-drilled unit counts
   from the planner's ``epoch``, the first planned day unless given, so the initial
   population is covered within the first ``coverage_days``). The planner aims
   ``safety_days`` before the due date (by default as many days as the capacity allows), so
   a unit that is busy on its aimed day still has that many more days to be caught. It
   schedules the backlog *as late as possible* with ``daily_rate`` drills per future day;
   whatever cannot wait (what that schedule puts on today, plus everything overdue) is taken
   today, most urgent first, at random among equally urgent units.
2. *Random fill* — the rest of the day's drills are a stratified random draw: strata are
   (district, venue type); each stratum's share is proportional to its count of eligible
   units not drilled in the last ``min_gap_days`` (largest-remainder apportionment, the
   leftover seats drawn in proportion to the remainders so small strata are not starved);
   units are uniform at random within a stratum. If too few units are outside the gap, the
   draw falls back to recently drilled ones.

The guarantee is feasible only if ``daily_rate × coverage_days ≥ population``; the constructor
refuses anything else. The programme's figures leave little room: 23,000 units at 705 a day
means one drill per unit every 32.6 days on average against a 35-day limit. So the first
``coverage_days`` are a random order of the whole population, but after that most units are
drilled 33 days after their last drill (aimed 2 days early) and only ~20 drills a day
(~3 %) are a free random draw; the time of day is always random. A unit that is busy
(``eligible`` says no) on every day from its aimed day to its due date is drilled late: no
schedule can avoid that, the margin only makes it rare (3 days at 705 a day, 4 at 719).

**Scoring** (:func:`apply_response`, :func:`abort`, :func:`score`, :func:`decide_at`) folds the
unit's answers into a :class:`DrillState` and decides pass / late / fail / no_answer / aborted
(rules on :func:`score`). **Readiness** (:func:`readiness`, :func:`pass_rates`) summarises
results.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

__all__ = [
    "OUTCOMES",
    "OUTCOME_SCORES",
    "STAGES",
    "DrillPlanner",
    "DrillPolicy",
    "DrillState",
    "UnitInfo",
    "abort",
    "apply_response",
    "apportion",
    "decide_at",
    "drill_id",
    "issued_record",
    "pass_rates",
    "readiness",
    "required_headcount",
    "result_record",
    "score",
]

#: Stages of a unit's answer, as in ``drill-response.schema.json``.
STAGES: tuple[str, ...] = ("acknowledged", "mustered")
#: Outcomes, as in ``drill-result.schema.json``.
OUTCOMES: tuple[str, ...] = ("pass", "late", "fail", "no_answer", "aborted")
#: Weight of each outcome in :func:`readiness`; ``aborted`` says nothing about the unit.
OUTCOME_SCORES: dict[str, float] = {"pass": 1.0, "late": 0.6, "fail": 0.2, "no_answer": 0.0}

# The key under which export_state() stores the epoch: unit ids start with a letter or digit
# (registry schema), so "@" can never collide with one.
_EPOCH_KEY = "@epoch"


@dataclass(frozen=True, slots=True)
class DrillPolicy:
    """The drill programme's figures.

    ``daily_rate`` drills a day between ``start_hour`` and ``end_hour`` local time (UTC
    ``+tz_offset_hours``); every unit at least once per ``coverage_days``, aimed
    ``safety_days`` early (None: as early as the capacity allows, see
    :attr:`DrillPlanner.safety_days`); the random fill skips units drilled in the last
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


@dataclass(frozen=True, slots=True)
class UnitInfo:
    """What the planner needs of a unit: its id, strata (district, venue type), grid, size."""

    unit_id: str
    district: str
    venue_type: str
    grid: str
    responders: int

    @classmethod
    def from_registry(cls, unit: Mapping[str, Any]) -> UnitInfo:
        """Build from a ``unit-registered`` record (as :func:`kaifong.streams.city.generate` makes)."""
        return cls(unit_id=str(unit["unit_id"]), district=str(unit["district"]),
                   venue_type=str(unit["venue"]["type"]), grid=str(unit["grid"]),
                   responders=int(unit["responders"]))


def _aware(t: datetime, name: str) -> datetime:
    """``t`` itself, refused if naive: a naive time has no instant, so it cannot be compared."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {t.isoformat()}")
    return t


def apportion(total: int, weights: Sequence[int], rng: random.Random | None = None) -> list[int]:
    """Split ``total`` seats by ``weights``: largest-remainder apportionment.

    Every share gets the integer part of its quota ``total·w/Σw``. The leftover seats go to the
    largest remainders when ``rng`` is None (ties to the lower index). With an ``rng`` they are
    drawn by systematic sampling over the remainders instead, so each share gets its extra seat
    with probability exactly equal to its remainder: a daily draw of ~50 seats over ~100 strata
    would otherwise hand the same strata the extra seat day after day and starve the rest.
    Either way the shares sum to ``total`` and never exceed their weight when ``total ≤ Σw``.

    >>> apportion(10, [5, 3, 2])
    [5, 3, 2]
    >>> apportion(3, [1, 1, 1, 1])
    [1, 1, 1, 0]
    """
    wsum = sum(weights)
    if total <= 0 or wsum <= 0:
        return [0] * len(weights)
    # Integer arithmetic: quotas are total·w/wsum exactly, so no seat is lost to rounding.
    counts = [total * w // wsum for w in weights]
    rems = [total * w - c * wsum for w, c in zip(weights, counts, strict=True)]  # remainder × wsum
    left = total - sum(counts)
    if left <= 0:
        return counts
    if rng is None:
        for i in sorted(range(len(weights)), key=lambda i: (-rems[i], i))[:left]:
            counts[i] += 1
        return counts
    # Systematic sampling: points start, start+1, … (in units of wsum) over the cumulated
    # remainders, which sum to exactly `left`; each remainder < 1 seat holds at most one point.
    point = rng.randrange(wsum)
    acc = 0
    for i, r in enumerate(rems):
        acc += r
        while point < acc:
            counts[i] += 1
            point += wsum
    return counts


class DrillPlanner:
    """Chooses each day's pull tests for a population of units.

    ``last_drilled`` (unit id → aware time of the unit's last counted drill) is the state the
    caller persists; :meth:`export_state` / :meth:`from_state` turn it into a flat
    ``{str: str}`` mapping that fits one Redis hash. Call :meth:`mark_drilled` for every drill
    that was actually issued and not aborted; :meth:`plan_day` does not mark anything, so a
    drill that could not be issued leaves its unit urgent for the next plan.

    Raises ``ValueError`` if ``daily_rate × coverage_days`` is below the population: then no
    schedule can drill every unit within ``coverage_days``.
    """

    def __init__(self, population: Iterable[UnitInfo], policy: DrillPolicy | None = None, *,
                 last_drilled: Mapping[str, datetime] | None = None, epoch: date | None = None) -> None:
        self.policy = policy or DrillPolicy()
        self.population: list[UnitInfo] = list(population)
        self._ids = [u.unit_id for u in self.population]
        if len(set(self._ids)) != len(self._ids):
            raise ValueError("unit ids in the population must be unique")
        rate, days, n = self.policy.daily_rate, self.policy.coverage_days, len(self._ids)
        if rate * days < n:
            raise ValueError(
                f"infeasible coverage: {rate} drills/day × {days} days = {rate * days} < {n} units;"
                " raise daily_rate or coverage_days")
        #: Days before its due date that a unit is aimed at. By default the largest margin that
        #: keeps the aimed schedule feasible, ``rate × (days − margin) ≥ n``: every extra day is
        #: one more day a busy unit can still be caught (2 at 23,000 units and 705 a day, 3 at
        #: 719 a day). A larger margin is allowed; the plan then drills strictly by due date.
        self.safety_days: int = (self.policy.safety_days if self.policy.safety_days is not None
                                 else min(days - 1, days - (n + rate - 1) // rate))
        # Strata as small ints in first-seen order (deterministic for a given population order).
        strata: dict[tuple[str, str], int] = {}
        self._stratum = [strata.setdefault((u.district, u.venue_type), len(strata)) for u in self.population]
        self._n_strata = len(strata)
        #: When the coverage clock of never-drilled units started (see the module docstring).
        self.epoch = epoch
        self.last_drilled: dict[str, datetime] = {}
        # Local-date ordinals of last_drilled, kept in step so plan_day does no datetime work.
        self._last_day: dict[str, int] = {}
        for uid, when in (last_drilled or {}).items():
            self.mark_drilled(uid, when)

    # -- state ---------------------------------------------------------------------------

    def _local_day(self, t: datetime) -> int:
        return t.astimezone(self.policy.tz).date().toordinal()

    def mark_drilled(self, unit_id: str, when: datetime) -> None:
        """Record a drill of ``unit_id`` at ``when`` (aware). An older time never moves the clock back."""
        _aware(when, "when")
        prev = self.last_drilled.get(unit_id)
        if prev is None or when > prev:
            self.last_drilled[unit_id] = when
            self._last_day[unit_id] = self._local_day(when)

    def export_state(self) -> dict[str, str]:
        """``last_drilled`` as ``{unit_id: RFC 3339}`` plus ``"@epoch": YYYY-MM-DD`` (if set).

        Flat strings only, so it is one Redis hash (HSET/HGETALL).
        """
        out = {uid: t.isoformat() for uid, t in sorted(self.last_drilled.items())}
        if self.epoch is not None:
            out[_EPOCH_KEY] = self.epoch.isoformat()
        return out

    @classmethod
    def from_state(cls, population: Iterable[UnitInfo], state: Mapping[str | bytes, str | bytes],
                   policy: DrillPolicy | None = None) -> DrillPlanner:
        """A planner restored from :meth:`export_state` output (bytes keys/values, as Redis returns, are fine)."""
        last: dict[str, datetime] = {}
        epoch: date | None = None
        for k, v in state.items():
            key = k.decode() if isinstance(k, bytes) else k
            value = v.decode() if isinstance(v, bytes) else v
            if key == _EPOCH_KEY:
                epoch = date.fromisoformat(value)
            else:
                last[key] = _aware(datetime.fromisoformat(value), key)
        return cls(population, policy, last_drilled=last, epoch=epoch)

    # -- planning ------------------------------------------------------------------------

    def _due(self, uid: str, epoch_due: int) -> int:
        last = self._last_day.get(uid)
        return epoch_due if last is None else last + self.policy.coverage_days

    def plan_day(self, day: date, rng: random.Random,
                 eligible: Callable[[str], bool] = lambda u: True) -> list[tuple[datetime, str]]:
        """The drills for local ``day``: ``(issue time, unit_id)`` sorted by time.

        ``daily_rate`` of them (fewer only if fewer units are eligible), at times drawn uniformly
        over ``[start_hour, end_hour)`` local (whole seconds, aware, UTC+8). ``eligible`` is the
        caller's live check: a unit that is dispatched, off duty or already drilling is never
        chosen; it is skipped today and stays urgent. Sets :attr:`epoch` to ``day`` if unset.

        Cost: two passes over the population and a sort of the day's times, so O(n) per day
        plus ``eligible`` once per unit; nothing is done per drill beyond drawing it.
        """
        p = self.policy
        if self.epoch is None:
            self.epoch = day
        if not self._ids:
            return []
        today = day.toordinal()
        epoch_due = self.epoch.toordinal() + p.coverage_days

        # Pass 1: eligibility, and the backlog bucketed by days until each unit's aimed day
        # (negative: overdue). Counting by day instead of sorting units keeps this linear.
        ok = [eligible(uid) for uid in self._ids]
        buckets: dict[int, list[int]] = {}
        for i, uid in enumerate(self._ids):
            buckets.setdefault(self._due(uid, epoch_due) - self.safety_days - today, []).append(i)

        # As-late-as-possible: walk back from the farthest aimed day, carrying whatever a day
        # of daily_rate drills cannot absorb to the day before. What reaches today (plus all
        # overdue units) must be drilled today or the remaining backlog becomes infeasible.
        carry = 0
        for k in range(max(buckets), 0, -1):
            carry = max(0, carry + len(buckets.get(k, ())) - p.daily_rate)
        must = min(p.daily_rate, carry + sum(len(v) for k, v in buckets.items() if k <= 0))

        # Take the `must` most urgent *eligible* units: an ineligible one is passed over (it
        # keeps its place at the front for tomorrow) and the next in line takes its slot.
        gap_start = today - p.min_gap_days

        def is_recent(uid: str) -> bool:
            last = self._last_day.get(uid)
            return last is not None and last > gap_start

        chosen: list[int] = []
        taken = [False] * len(self._ids)
        for k in sorted(buckets):
            need = must - len(chosen)
            if need <= 0:
                break
            group = [i for i in buckets[k] if ok[i]]
            if len(group) > need:
                # Equally urgent units compete at random, so the cut never follows registry
                # order; a unit drilled in the last min_gap_days (e.g. yesterday's never-drilled
                # peers share its due date) only gets a slot nobody outside the gap can take.
                fresh_group = [i for i in group if not is_recent(self._ids[i])]
                if len(fresh_group) >= need:
                    group = rng.sample(fresh_group, need)
                else:
                    rest = [i for i in group if is_recent(self._ids[i])]
                    group = fresh_group + rng.sample(rest, need - len(fresh_group))
            chosen += group
            for i in group:
                taken[i] = True

        # Pass 2: the random fill, first from units outside the minimum gap, then (only if
        # those run out) from recently drilled ones.
        fresh: list[list[int]] = [[] for _ in range(self._n_strata)]
        recent: list[list[int]] = [[] for _ in range(self._n_strata)]
        for i, uid in enumerate(self._ids):
            if ok[i] and not taken[i]:
                (recent if is_recent(uid) else fresh)[self._stratum[i]].append(i)
        for pool in (fresh, recent):
            want = p.daily_rate - len(chosen)
            if want <= 0:
                break
            chosen += _stratified_draw(pool, want, rng)

        # Times: sorted uniform seconds over the window, dealt to the units in random order so
        # the urgent part of the day is not also the early part.
        rng.shuffle(chosen)
        window_s = (p.end_hour - p.start_hour) * 3600
        offsets = sorted(rng.randrange(window_s) for _ in chosen)
        start = datetime.combine(day, time(p.start_hour), tzinfo=p.tz)
        return [(start + timedelta(seconds=s), self._ids[i]) for s, i in zip(offsets, chosen, strict=True)]

    def coverage_report(self, today: date) -> dict[str, Any]:
        """Coverage as of local ``today``.

        ``units``; ``never_drilled``; ``not_drilled_in_window`` (no drill in the last
        ``coverage_days``, never-drilled included); ``overdue`` (due date before today: the
        guarantee was missed); ``due_today``; ``max_days_since_drill`` (never-drilled units
        count from the epoch; None for an empty population).
        """
        p = self.policy
        t = today.toordinal()
        epoch = (self.epoch or today).toordinal()
        never = window = overdue = due_today = 0
        max_age: int | None = None
        for uid in self._ids:
            last = self._last_day.get(uid)
            if last is None:
                never += 1
                age = t - epoch
                due = epoch + p.coverage_days
            else:
                age = t - last
                due = last + p.coverage_days
            window += age > p.coverage_days or last is None
            overdue += due < t
            due_today += due == t
            max_age = age if max_age is None else max(max_age, age)
        return {"units": len(self._ids), "never_drilled": never, "not_drilled_in_window": window,
                "overdue": overdue, "due_today": due_today, "max_days_since_drill": max_age}


def _stratified_draw(strata: list[list[int]], want: int, rng: random.Random) -> list[int]:
    """Up to ``want`` items, each stratum's share proportional to its size, uniform within it."""
    sizes = [len(s) for s in strata]
    if sum(sizes) <= want:
        return [i for s in strata for i in s]
    out: list[int] = []
    for members, n in zip(strata, apportion(want, sizes, rng), strict=True):
        if n:
            out += rng.sample(members, n)
    return out


def drill_id(unit_id: str, issued_at: datetime) -> str:
    """A deterministic drill id: ``drl-`` + 16 hex of SHA-1(unit id, issue instant in UTC).

    The same instant written in any time zone gives the same id, so a replayed plan re-issues
    the same drills (idempotent downstream).
    """
    instant = _aware(issued_at, "issued_at").astimezone(UTC).isoformat()
    digest = hashlib.sha1(f"{unit_id}|{instant}".encode(), usedforsecurity=False).hexdigest()
    return "drl-" + digest[:16]


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
    if _aware(at, "at") < state.issued_at:
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
    if _aware(at, "at") < state.issued_at:
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
    if _aware(now, "now") < when:
        return None
    return outcome, ack_s, muster_s


def _rfc3339(t: datetime) -> str:
    return t.isoformat(timespec="seconds") if t.microsecond == 0 else t.isoformat()


def issued_record(state: DrillState, policy: DrillPolicy, *, reason: str = "scheduled",
                  district: str | None = None, grid: str | None = None) -> dict[str, Any]:
    """The ``drill-issued`` event for ``state`` (schema ``drill-issued.schema.json``)."""
    rec: dict[str, Any] = {
        "drill_id": state.drill_id, "unit_id": state.unit_id, "channel": state.channel,
        "issued_at": _rfc3339(state.issued_at), "ack_target_s": policy.ack_target_s,
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
        "issued_at": _rfc3339(state.issued_at), "outcome": outcome, "ack_s": ack_s, "muster_s": muster_s,
        "headcount": state.headcount if muster_s is not None else None,
        "decided_at": _rfc3339(decide_at(state, policy)),
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
