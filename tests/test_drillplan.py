"""Tests for kaifong.agents.core.drillplan: 60 simulated days on the generated city, then scoring.

The simulation: the seed-7 city (23,000 units), 705 drills a day for 60 days from a Monday;
each day a random 3 % of units are busy (dispatched, off duty or drilling) and passed to the
planner as ineligible. scipy is not in the venv, so chi-square p-values use the Wilson–Hilferty
approximation (checked against two table values below).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from kaifong.agents.core.drillplan import (
    DrillPlanner,
    DrillPolicy,
    DrillState,
    UnitInfo,
    abort,
    apply_response,
    apportion,
    decide_at,
    drill_id,
    issued_record,
    pass_rates,
    readiness,
    required_headcount,
    result_record,
    score,
)
from kaifong.schemas.validation import validate
from kaifong.streams.city import generate

CST = timezone(timedelta(hours=8))
DAY0 = date(2026, 3, 2)
DAYS = 60
RATE = 705
COVERAGE = 35
BUSY_SHARE = 0.03


# -- statistics helpers ----------------------------------------------------------------------


def chi2_sf(x: float, dof: int) -> float:
    """P(χ²_dof > x) by the Wilson–Hilferty cube-root normal approximation."""
    if x <= 0:
        return 1.0
    k = float(dof)
    z = ((x / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def chi2_gof(observed: list[float], expected: list[float]) -> tuple[float, int, float]:
    """Goodness of fit: (statistic, degrees of freedom, p-value)."""
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    dof = len(observed) - 1
    return stat, dof, chi2_sf(stat, dof)


def chi2_homogeneity(table: list[list[int]]) -> tuple[float, int, float]:
    """Contingency-table test that every row has the same column distribution."""
    rows = [sum(r) for r in table]
    cols = [sum(c) for c in zip(*table, strict=True)]
    total = sum(rows)
    stat = sum((table[i][j] - rows[i] * cols[j] / total) ** 2 / (rows[i] * cols[j] / total)
               for i in range(len(rows)) for j in range(len(cols)) if cols[j])
    dof = (len(rows) - 1) * (sum(1 for c in cols if c) - 1)
    return stat, dof, chi2_sf(stat, dof)


def test_wilson_hilferty_matches_table_values() -> None:
    # χ² table: P(χ²_10 > 29.588) = 0.001, P(χ²_20 > 31.410) = 0.05.
    assert chi2_sf(29.588, 10) == pytest.approx(0.001, rel=0.15)
    assert chi2_sf(31.410, 20) == pytest.approx(0.05, rel=0.05)
    assert chi2_sf(0.0, 5) == 1.0


# -- the 60-day simulation -------------------------------------------------------------------


@dataclass
class Sim:
    """What 60 planned days produced."""

    planner: DrillPlanner
    units: list[UnitInfo]
    plans: list[list[tuple[datetime, str]]] = field(default_factory=list)
    busy: list[set[str]] = field(default_factory=list)
    drilled_days: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    busy_days: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    seconds: float = 0.0

    def digest(self) -> str:
        h = hashlib.sha256()
        for plan in self.plans:
            for t, u in plan:
                h.update(f"{t.isoformat()} {u}\n".encode())
        return h.hexdigest()


def simulate(seed: int, days: int = DAYS) -> Sim:
    city = generate(seed=7)
    units = [UnitInfo.from_registry(u) for u in city.units]
    planner = DrillPlanner(units, DrillPolicy(daily_rate=RATE, coverage_days=COVERAGE))
    rng = random.Random(seed)
    busy_rng = random.Random(f"busy-{seed}")
    ids = [u.unit_id for u in units]
    sim = Sim(planner, units)
    started = time.perf_counter()
    for k in range(days):
        busy = set(busy_rng.sample(ids, round(BUSY_SHARE * len(ids))))
        plan = planner.plan_day(DAY0 + timedelta(days=k), rng, lambda u, busy=busy: u not in busy)
        for t, uid in plan:
            planner.mark_drilled(uid, t)
            sim.drilled_days[uid].append(k)
        for uid in busy:
            sim.busy_days[uid].add(k)
        sim.plans.append(plan)
        sim.busy.append(busy)
    sim.seconds = time.perf_counter() - started
    return sim


@pytest.fixture(scope="module")
def sim() -> Sim:
    return simulate(seed=7)


def windows(sim: Sim) -> list[tuple[str, int, int]]:
    """(unit, start, end) of every stretch a unit waited: from day 0 or a drill to the next or to the end."""
    out = []
    for u in sim.units:
        days = sim.drilled_days[u.unit_id]
        marks = [0, *days]
        out += [(u.unit_id, a, b) for a, b in zip(marks[:-1], days, strict=True)]
        out.append((u.unit_id, marks[-1], DAYS))  # still open: day DAYS is the first unplanned day
    return out


def test_sixty_days_cover_every_unit(sim: Sim) -> None:
    n = len(sim.units)
    assert n == 23_000
    stretches = windows(sim)
    max_gap = max(b - a for _, a, b in stretches)
    misses = [(u, a, b) for u, a, b in stretches if b - a > COVERAGE]
    # The scheduler aims `safety_days` before the due date; a unit can miss its window only by
    # being busy on every one of those last days (3 % × 3 % × 3 %, ~1 in 37,000 unit-windows
    # at 705 a day: no schedule can drill a unit that is never available).
    margin = sim.planner.safety_days
    assert margin == 2  # ceil(23,000 / 705) = 33 days, so 35 − 33 days to spare
    unexcused = [(u, a, b) for u, a, b in misses
                 if not all(d in sim.busy_days[u] for d in range(a + COVERAGE - margin, a + COVERAGE + 1))]
    covered = sum(1 for u in sim.units if sim.drilled_days[u.unit_id])
    counts = [len(p) for p in sim.plans]
    print(f"\n60 days: {covered}/{n} units covered, max gap {max_gap} days, {len(misses)} windows over "
          f"{COVERAGE} days (all busy on their last {margin + 1} days: {not unexcused}), daily "
          f"{min(counts)}–{max(counts)}, runtime {sim.seconds:.2f} s")
    assert covered == n
    assert not unexcused, unexcused
    assert len(misses) <= 3
    assert max_gap <= COVERAGE + 3
    report = sim.planner.coverage_report(DAY0 + timedelta(days=DAYS))
    assert report["never_drilled"] == 0
    assert report["overdue"] <= len(misses)
    assert report["max_days_since_drill"] <= COVERAGE + 3


def test_initial_population_is_covered_by_day_35(sim: Sim) -> None:
    firsts = [sim.drilled_days[u.unit_id][0] for u in sim.units if sim.drilled_days[u.unit_id]]
    assert len(firsts) == len(sim.units)
    assert max(firsts) <= COVERAGE


def test_no_busy_unit_is_drilled(sim: Sim) -> None:
    for plan, busy in zip(sim.plans, sim.busy, strict=True):
        assert len(busy) == 690
        assert not {u for _, u in plan} & busy


def test_daily_count_and_window(sim: Sim) -> None:
    for k, plan in enumerate(sim.plans):
        assert abs(len(plan) - RATE) <= 0.02 * RATE
        assert len({u for _, u in plan}) == len(plan)  # no unit twice a day
        times = [t for t, _ in plan]
        assert times == sorted(times)
        day = DAY0 + timedelta(days=k)
        lo = datetime(day.year, day.month, day.day, 8, tzinfo=CST)
        assert all(lo <= t < lo + timedelta(hours=12) for t in times)
        assert all(t.utcoffset() == timedelta(hours=8) for t in times)
        # Spread over the window, not bunched: each 3-hour quarter holds about a quarter.
        quarters = Counter((t - lo) // timedelta(hours=3) for t in times)
        assert all(120 <= quarters[q] <= 240 for q in range(4)), quarters
    assert min(len(p) for p in sim.plans) == RATE


def test_draw_is_not_biased_across_strata(sim: Sim) -> None:
    n = len(sim.units)
    total = sum(len(p) for p in sim.plans)
    per_unit = {u.unit_id: len(sim.drilled_days[u.unit_id]) for u in sim.units}

    def gof(key: str) -> tuple[float, int, float]:
        size: Counter[str] = Counter()
        drills: Counter[str] = Counter()
        for u in sim.units:
            k = getattr(u, key)
            size[k] += 1
            drills[k] += per_unit[u.unit_id]
        groups = sorted(size)
        return chi2_gof([drills[g] for g in groups], [total * size[g] / n for g in groups])

    stat, dof, p = gof("district")
    print(f"\ndistrict chi-square {stat:.2f}, dof {dof}, p {p:.4f}")
    assert dof == 10
    assert p > 0.001
    stat_v, dof_v, p_v = gof("venue_type")
    print(f"venue-type chi-square {stat_v:.2f}, dof {dof_v}, p {p_v:.4f}")
    assert p_v > 0.001

    # Every (district, venue type) stratum; strata expecting under 5 drills are pooled.
    size2: Counter[tuple[str, str]] = Counter()
    drills2: Counter[tuple[str, str]] = Counter()
    for u in sim.units:
        size2[u.district, u.venue_type] += 1
        drills2[u.district, u.venue_type] += per_unit[u.unit_id]
    obs, exp, pool_o, pool_e = [], [], 0.0, 0.0
    for s in sorted(size2):
        e = total * size2[s] / n
        if e < 5:
            pool_o, pool_e = pool_o + drills2[s], pool_e + e
        else:
            obs.append(float(drills2[s]))
            exp.append(e)
    if pool_e:
        obs.append(pool_o)
        exp.append(pool_e)
    stat_s, dof_s, p_s = chi2_gof(obs, exp)
    print(f"stratum chi-square {stat_s:.2f}, dof {dof_s}, p {p_s:.4f}")
    assert dof_s >= 60
    assert p_s > 0.001

    # Over 60 days the coverage floor evens the totals out (hence p ≈ 1 above), so the sharp
    # test is the first week: ~4,900 drills, mostly the stratified fill, none forced by a
    # previous drill. Each stratum should get its share of them (cells expecting < 5 pooled).
    week = Counter((u.district, u.venue_type) for u in sim.units if sim.drilled_days[u.unit_id][0] < 7)
    wtotal = sum(week.values())
    obs, exp, pool_o, pool_e = [], [], 0.0, 0.0
    for s in sorted(size2):
        e = wtotal * size2[s] / n
        if e < 5:
            pool_o, pool_e = pool_o + week[s], pool_e + e
        else:
            obs.append(float(week[s]))
            exp.append(e)
    obs.append(pool_o)
    exp.append(pool_e)
    stat_w, dof_w, p_w = chi2_gof(obs, exp)
    print(f"first-week stratum chi-square {stat_w:.2f}, dof {dof_w}, p {p_w:.4f} ({wtotal} drills)")
    assert wtotal == 7 * RATE
    assert p_w > 0.001


def test_draw_is_uniform_within_strata(sim: Sim) -> None:
    # Beyond the floor of one drill, how many a unit got must not depend on its district (the
    # same mix of 1, 2, 3 drills everywhere) ...
    by_district: dict[str, Counter[int]] = defaultdict(Counter)
    for u in sim.units:
        by_district[u.district][min(3, len(sim.drilled_days[u.unit_id]))] += 1
    table = [[by_district[d][c] for c in (1, 2, 3)] for d in sorted(by_district)]
    stat, dof, p = chi2_homogeneity(table)
    print(f"\ndrills-per-unit by district: chi-square {stat:.2f}, dof {dof}, p {p:.4f}")
    assert p > 0.001
    # ... nor does the week of a unit's first drill (the order the initial population is
    # covered in, the sensitive part: totals are evened out by the coverage floor) ...
    weeks: dict[str, Counter[int]] = defaultdict(Counter)
    for u in sim.units:
        weeks[u.district][sim.drilled_days[u.unit_id][0] // 7] += 1
    table = [[weeks[d][w] for w in range(6)] for d in sorted(weeks)]
    stat, dof, p = chi2_homogeneity(table)
    print(f"first-drill week by district: chi-square {stat:.2f}, dof {dof}, p {p:.4f}")
    assert p > 0.001
    # ... nor on where the unit sits in its district's registry order: the first drill day is
    # uncorrelated with the unit's rank by id within its district (|z| = |r|·√n < 4).
    ranks: dict[str, list[str]] = defaultdict(list)
    for u in sim.units:
        ranks[u.district].append(u.unit_id)
    xs, ys = [], []
    for ids in ranks.values():
        for r, uid in enumerate(sorted(ids)):
            xs.append(r / len(ids))
            ys.append(float(sim.drilled_days[uid][0]))
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    r = cov / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
    z = r * math.sqrt(len(xs))
    print(f"id-rank vs first drill day: r {r:.4f}, z {z:.2f}")
    assert abs(z) < 4
    # And the first day, pure random fill, gives every stratum its quota to within one seat.
    day0 = Counter((u.district, u.venue_type) for u in sim.units
                   if sim.drilled_days[u.unit_id] and sim.drilled_days[u.unit_id][0] == 0)
    busy0 = sim.busy[0]
    pool = Counter((u.district, u.venue_type) for u in sim.units if u.unit_id not in busy0)
    size = sum(pool.values())
    assert sum(day0.values()) == RATE
    assert all(abs(day0[s] - RATE * pool[s] / size) < 1 for s in pool)


def test_runs_fast_enough(sim: Sim) -> None:
    assert sim.seconds < 15


def test_same_seed_same_plan_other_seed_other_plan(sim: Sim) -> None:
    again = simulate(seed=7)
    assert again.digest() == sim.digest()
    other = simulate(seed=8, days=5)
    assert other.plans[0] != sim.plans[0]
    assert [len(p) for p in other.plans] == [RATE] * 5


# -- planner units ---------------------------------------------------------------------------


def toy_units(n: int, districts: int = 2) -> list[UnitInfo]:
    return [UnitInfo(f"U{i:03d}", f"D{i % districts}", "residential", f"G{i}", 10) for i in range(n)]


def test_infeasible_coverage_is_refused() -> None:
    with pytest.raises(ValueError, match="infeasible coverage"):
        DrillPlanner(toy_units(71), DrillPolicy(daily_rate=2, coverage_days=35))
    assert DrillPlanner(toy_units(70), DrillPolicy(daily_rate=2, coverage_days=35)).safety_days == 0
    with pytest.raises(ValueError, match="infeasible coverage"):
        DrillPlanner([UnitInfo(f"U{i}", "D", "v", "g", 1) for i in range(23_000)],
                     DrillPolicy(daily_rate=657, coverage_days=35))  # 22,995 < 23,000
    with pytest.raises(ValueError, match="unique"):
        DrillPlanner(toy_units(2) + toy_units(1))


def test_from_registry() -> None:
    unit = generate(seed=7, units=50).units[0]
    info = UnitInfo.from_registry(unit)
    assert info.unit_id == unit["unit_id"]
    assert info.venue_type == unit["venue"]["type"]
    assert (info.district, info.grid, info.responders) == (unit["district"], unit["grid"], unit["responders"])


def test_ineligible_urgent_unit_waits_and_stays_first() -> None:
    units = toy_units(10)
    policy = DrillPolicy(daily_rate=2, coverage_days=5, min_gap_days=0)
    planner = DrillPlanner(units, policy, epoch=DAY0)
    day = DAY0 + timedelta(days=10)
    # U000 was drilled longest ago (due before `day`); the others recently.
    planner.mark_drilled("U000", datetime(2026, 3, 3, 9, tzinfo=CST))
    for i in range(1, 10):
        planner.mark_drilled(f"U{i:03d}", datetime(2026, 3, 10, 9, tzinfo=CST) + timedelta(days=i % 3))
    assert planner.coverage_report(day)["overdue"] == 1
    plan = planner.plan_day(day, random.Random(1), lambda u: u != "U000")
    assert len(plan) == 2
    assert "U000" not in {u for _, u in plan}
    plan = planner.plan_day(day + timedelta(days=1), random.Random(1))
    assert "U000" in {u for _, u in plan}


def test_fewer_drills_only_when_too_few_are_eligible() -> None:
    planner = DrillPlanner(toy_units(10), DrillPolicy(daily_rate=4, coverage_days=5))
    plan = planner.plan_day(DAY0, random.Random(3), lambda u: u in {"U001", "U002"})
    assert sorted(u for _, u in plan) == ["U001", "U002"]
    assert len(planner.plan_day(DAY0, random.Random(3))) == 4


def test_min_gap_is_respected_when_possible() -> None:
    planner = DrillPlanner(toy_units(40), DrillPolicy(daily_rate=4, coverage_days=35, min_gap_days=7))
    rng = random.Random(5)
    seen: dict[str, int] = {}
    for k in range(8):
        for t, u in planner.plan_day(DAY0 + timedelta(days=k), rng):
            assert u not in seen or k - seen[u] >= 7
            seen[u] = k
            planner.mark_drilled(u, t)


def test_state_round_trip_through_a_redis_hash() -> None:
    units = toy_units(30)
    planner = DrillPlanner(units, DrillPolicy(daily_rate=3, coverage_days=10))
    rng = random.Random(11)
    for k in range(4):
        for t, u in planner.plan_day(DAY0 + timedelta(days=k), rng):
            planner.mark_drilled(u, t)
    state = planner.export_state()
    assert state["@epoch"] == DAY0.isoformat()
    assert all(isinstance(v, str) for v in state.values())
    as_redis = {k.encode(): v.encode() for k, v in state.items()}
    restored = DrillPlanner.from_state(units, as_redis, DrillPolicy(daily_rate=3, coverage_days=10))
    assert restored.last_drilled == planner.last_drilled
    assert restored.epoch == planner.epoch
    day = DAY0 + timedelta(days=4)
    assert restored.plan_day(day, random.Random(99)) == planner.plan_day(day, random.Random(99))
    # An older drill never moves the clock back.
    uid = next(iter(planner.last_drilled))
    before = planner.last_drilled[uid]
    planner.mark_drilled(uid, before - timedelta(days=3))
    assert planner.last_drilled[uid] == before
    with pytest.raises(ValueError, match="timezone-aware"):
        planner.mark_drilled(uid, datetime(2026, 3, 2, 9))  # noqa: DTZ001 — the naive time is the point


def test_coverage_report() -> None:
    planner = DrillPlanner(toy_units(4), DrillPolicy(daily_rate=1, coverage_days=5), epoch=DAY0)
    planner.mark_drilled("U000", datetime(2026, 3, 2, 10, tzinfo=CST))
    planner.mark_drilled("U001", datetime(2026, 3, 2, 23, 30, tzinfo=UTC))  # 07:30 on 3 March local
    report = planner.coverage_report(DAY0 + timedelta(days=6))
    assert report == {"units": 4, "never_drilled": 2, "not_drilled_in_window": 3, "overdue": 3,
                      "due_today": 1, "max_days_since_drill": 6}


def test_apportion() -> None:
    assert apportion(10, [5, 3, 2]) == [5, 3, 2]
    assert apportion(7, [1, 1, 1]) == [3, 2, 2]
    assert apportion(0, [1, 2]) == [0, 0]
    assert apportion(5, [0, 0]) == [0, 0]
    rng = random.Random(4)
    tally = [0, 0, 0]
    for _ in range(6000):
        shares = apportion(2, [3, 2, 1], rng)  # quotas 1, 2/3, 1/3
        assert sum(shares) == 2
        assert shares[0] >= 1
        tally = [a + b for a, b in zip(tally, shares, strict=True)]
    assert tally[0] == 6000
    assert abs(tally[1] - 4000) < 150
    assert abs(tally[2] - 2000) < 150


def test_drill_id() -> None:
    t = datetime(2026, 3, 2, 9, 15, tzinfo=CST)
    a = drill_id("BY-S01-PG01-G0001-P01", t)
    assert a == drill_id("BY-S01-PG01-G0001-P01", t.astimezone(UTC))
    assert a != drill_id("BY-S01-PG01-G0001-P02", t)
    assert a != drill_id("BY-S01-PG01-G0001-P01", t + timedelta(seconds=1))
    assert a.startswith("drl-")
    assert len(a) == 20


# -- lifecycle ---------------------------------------------------------------------------------

POLICY = DrillPolicy()
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=CST)


class Clock:
    """An injected clock: starts at the issue time, moves only when told."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def at(self, seconds: float) -> datetime:
        self.now = T0 + timedelta(seconds=seconds)
        return self.now


def issued(expected: int = 10) -> DrillState:
    return DrillState(drill_id=drill_id("U1", T0), unit_id="U1", channel="radio", issued_at=T0,
                      expected_headcount=expected)


def run(*events: tuple[str, float, int | None]) -> tuple[DrillState, Clock]:
    clock = Clock(T0)
    s = issued()
    for stage, secs, headcount in events:
        s = apply_response(s, stage, clock.at(secs), headcount)
    return s, clock


def test_pass() -> None:
    s, clock = run(("acknowledged", 40, None), ("mustered", 150, 8))
    assert score(s, clock.now, POLICY) == ("pass", 40.0, 150.0)
    assert decide_at(s, POLICY) == T0 + timedelta(seconds=150)
    rec = result_record(s, clock.now, POLICY, district="天河区", grid="TH-G1")
    assert rec is not None
    assert validate("drill-result", rec)["outcome"] == "pass"
    assert rec["headcount"] == 8
    assert rec["decided_at"] == "2026-03-02T09:02:30+08:00"
    assert validate("drill-issued", issued_record(s, POLICY, district="天河区"))["expected_headcount"] == 10


def test_late_ack() -> None:
    s, clock = run(("acknowledged", 75, None), ("mustered", 170, 10))
    assert score(s, clock.now, POLICY) == ("late", 75.0, 170.0)


def test_late_muster() -> None:
    s, clock = run(("acknowledged", 30, None), ("mustered", 300, 10))
    assert score(s, clock.now, POLICY) == ("late", 30.0, 300.0)


def test_fail_headcount_short() -> None:
    assert required_headcount(10, POLICY) == 6
    assert required_headcount(0, POLICY) == 1
    assert required_headcount(7, POLICY) == 5
    s, clock = run(("acknowledged", 30, None), ("mustered", 120, 5))
    assert score(s, clock.now, POLICY) == ("fail", 30.0, 120.0)
    s, clock = run(("acknowledged", 30, None), ("mustered", 120, 6))
    assert score(s, clock.now, POLICY) == ("pass", 30.0, 120.0)
    s, clock = run(("acknowledged", 30, None), ("mustered", 120, None))  # no headcount reported
    assert score(s, clock.now, POLICY) == ("fail", 30.0, 120.0)


def test_fail_never_mustered() -> None:
    s, clock = run(("acknowledged", 20, None))
    assert decide_at(s, POLICY) == T0 + timedelta(seconds=540)
    assert score(s, clock.at(539), POLICY) is None
    assert score(s, clock.at(540), POLICY) == ("fail", 20.0, None)
    # A muster after the cut-off does not reopen it.
    s = apply_response(s, "mustered", clock.at(600), 10)
    assert score(s, clock.now, POLICY) == ("fail", 20.0, None)
    rec = result_record(s, clock.now, POLICY)
    assert rec is not None
    assert validate("drill-result", rec)["headcount"] is None


def test_no_answer() -> None:
    clock = Clock(T0)
    s = issued()
    assert decide_at(s, POLICY) == T0 + timedelta(seconds=180)
    assert score(s, clock.at(179), POLICY) is None
    assert result_record(s, clock.now, POLICY) is None
    assert score(s, clock.at(180), POLICY) == ("no_answer", None, None)
    s = apply_response(s, "acknowledged", clock.at(200))  # too late to count
    assert score(s, clock.now, POLICY) == ("no_answer", None, None)


def test_muster_stands_in_for_a_missing_ack() -> None:
    s, clock = run(("mustered", 50, 10))
    assert score(s, clock.now, POLICY) == ("pass", 50.0, 50.0)


def test_aborted_by_a_real_incident() -> None:
    s, clock = run(("acknowledged", 30, None))
    s = abort(s, clock.at(90))
    assert score(s, clock.now, POLICY) == ("aborted", 30.0, None)
    assert decide_at(s, POLICY) == T0 + timedelta(seconds=90)
    # A muster after the abort changes nothing, nor does a second abort.
    s2 = abort(apply_response(s, "mustered", clock.at(150), 10), clock.at(160))
    assert s2.aborted_at == T0 + timedelta(seconds=90)
    assert score(s2, clock.now, POLICY) == ("aborted", 30.0, None)
    # Aborted before any answer: no seconds at all.
    assert score(abort(issued(), T0 + timedelta(seconds=10)), clock.now, POLICY) == ("aborted", None, None)


def test_abort_after_a_result_changes_nothing() -> None:
    s, clock = run(("acknowledged", 30, None), ("mustered", 120, 9))
    s = abort(s, clock.at(130))
    assert score(s, clock.now, POLICY) == ("pass", 30.0, 120.0)
    clock = Clock(T0)
    s = abort(issued(), clock.at(400))  # long after the no-answer cut-off
    assert score(s, clock.now, POLICY) == ("no_answer", None, None)


def test_responses_before_issue_are_refused() -> None:
    with pytest.raises(ValueError, match="before the drill was issued"):
        apply_response(issued(), "acknowledged", T0 - timedelta(seconds=1))
    with pytest.raises(ValueError, match="before the drill was issued"):
        abort(issued(), T0 - timedelta(seconds=1))
    with pytest.raises(ValueError, match="unknown stage"):
        apply_response(issued(), "arrived", T0)


def test_duplicate_stage_keeps_the_first() -> None:
    s, clock = run(("acknowledged", 30, None), ("acknowledged", 10, None), ("mustered", 100, 9),
                   ("mustered", 90, 2))
    assert s.ack_at == T0 + timedelta(seconds=30)
    assert (s.muster_at, s.headcount) == (T0 + timedelta(seconds=100), 9)
    assert score(s, clock.at(100), POLICY) == ("pass", 30.0, 100.0)


# -- readiness ---------------------------------------------------------------------------------


def test_readiness_decays_with_age() -> None:
    now = T0
    assert readiness([], now) == 0.5
    assert readiness(None, now) == 0.5
    assert readiness([(now, "aborted")], now) == 0.5
    assert readiness([(now, "pass")], now) == 1.0
    assert readiness([(now, "no_answer")], now) == 0.0
    # A fail 30 days ago weighs half of today's pass: (0.5·0.2 + 1·1.0) / 1.5.
    mixed = readiness([(now - timedelta(days=30), "fail"), (now, "pass")], now)
    assert mixed == pytest.approx(1.1 / 1.5)
    # The same two results the other way round: the recent fail dominates.
    assert readiness([(now, "fail"), (now - timedelta(days=30), "pass")], now) == pytest.approx(0.7 / 1.5)
    # The older the fail beside today's pass, the less it counts.
    by_age = [readiness([(now - timedelta(days=d), "fail"), (now, "pass")], now) for d in (0, 30, 90, 365)]
    assert by_age == sorted(by_age)
    assert by_age[0] == pytest.approx(0.6)
    assert by_age[-1] > 0.99
    assert 0.0 <= readiness([(now - timedelta(days=d), "late") for d in range(100)], now) <= 1.0


def test_pass_rates() -> None:
    rates = pass_rates([("天河区", "pass"), ("天河区", "late"), ("天河区", "aborted"), ("海珠区", "pass"),
                        ("白云区", "aborted")])
    assert rates == {"天河区": 0.5, "海珠区": 1.0}
    assert pass_rates([]) == {}
    with pytest.raises(ValueError, match="unknown outcome"):
        pass_rates([("x", "maybe")])
