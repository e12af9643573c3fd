"""kaifong.agents.core.drillplan — pull-test drills: stratified random sampling with a coverage guarantee.

Layer: agents/core (pure: no I/O, no clock, no global randomness). It imports the standard library
and :mod:`kaifong.agents.core.drills` only; the caller holds the clock, the ``random.Random`` and
the persisted state, so one input always gives one plan, and a replay reproduces it.

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

Scoring and readiness are :mod:`kaifong.agents.core.drills`'; their names are re-exported here
(``from kaifong.agents.core.drillplan import score`` keeps working).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from kaifong.agents.core.drills import (
    OUTCOME_SCORES,
    OUTCOMES,
    STAGES,
    DrillPolicy,
    DrillState,
    abort,
    apply_response,
    decide_at,
    from_ms,
    issued_record,
    pass_rates,
    readiness,
    required_headcount,
    result_record,
    score,
    to_ms,
)
from kaifong.agents.core.drills import aware as _aware

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
    "feasible_policy",
    "fit",
    "issued_record",
    "pass_rates",
    "readiness",
    "required_headcount",
    "result_record",
    "score",
]


# The key under which export_state() stores the epoch: unit ids start with a letter or digit
# (registry schema), so "@" can never collide with one.
_EPOCH_KEY = "@epoch"


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



def feasible_policy(policy: DrillPolicy, units: int) -> DrillPolicy:
    """``policy``, or, when ``units`` outgrew it (``daily_rate × coverage_days < units``), the
    same policy at the lowest daily rate that keeps the coverage promise (the promise is the
    programme's point; the caller says so loudly)."""
    if policy.daily_rate * policy.coverage_days < units:
        return replace(policy, daily_rate=-(-units // policy.coverage_days))
    return policy


def fit(plan: list[tuple[datetime, str]], day: date, now: datetime, policy: DrillPolicy,
        spread_s: float = 0.0) -> list[tuple[datetime, str]]:
    """Map the planned times onto what is left of the day (or onto ``spread_s`` from ``now``).

    The planner spreads a day over the whole drill window; planned after the window opened
    (a first start, a restart after the plan was lost), the times are compressed, in order,
    into the rest of the window rather than issued at once. Planned after the window closed,
    nothing is issued: unmarked units stay urgent for tomorrow. ``spread_s`` > 0 (tests and
    demos, KAIFONG_DRILL_SPREAD_S) squeezes the whole day into that many seconds from ``now``.
    """
    p = policy
    start = datetime.combine(day, time(p.start_hour), tzinfo=p.tz)
    end = start + timedelta(hours=p.end_hour - p.start_hour)
    if spread_s > 0:
        dst_start, dst_end = now, now + timedelta(seconds=spread_s)
    elif now > start:
        dst_start, dst_end = now, end
    else:
        return plan
    if dst_end <= dst_start:
        return []
    scale = (dst_end - dst_start) / (end - start)
    return [(from_ms(to_ms(dst_start + (t - start) * scale)), u) for t, u in plan]
