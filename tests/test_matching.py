"""Tests for kaifong.agents.core.matching: hand-built scenes around one incident, plus properties.

Distances are laid out in metres north/east of the incident so each expected ETA can be worked
out by hand: eta = turnout + 1.3 x distance / speed (post 1.4 m/s + 5 s, unit 2.5 m/s + 20 s,
grid_team 5 m/s + 40 s, street_force 8 m/s + 60 s, professional 10 m/s + 90 s).
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaifong.agents.core.matching import (
    DETOUR,
    RUN_CARDS,
    SPEED_MPS,
    TURNOUT_S,
    Candidate,
    IncidentView,
    Needs,
    RingDecision,
    choose_units,
    eta_s,
    haversine_m,
    load_run_cards,
    needs_for,
    rank_candidates,
)
from kaifong.streams.settings import DEFAULT_RINGS, parse_rings

RINGS = parse_rings(DEFAULT_RINGS)
THREE_RINGS = parse_rings("self_rescue:60,mutual_aid:180,grid:300")
LAT0, LON0 = 23.1291, 113.2644  # Tianhe, roughly
M_PER_DEG = math.pi * 6_371_008.8 / 180
NO_NEEDS = Needs(0, frozenset())


def offset(north_m: float, east_m: float = 0.0) -> tuple[float, float]:
    return (LAT0 + north_m / M_PER_DEG,
            LON0 + east_m / (M_PER_DEG * math.cos(math.radians(LAT0))))


def cand(uid: str, kind: str, north_m: float, *, east_m: float = 0.0, responders: int = 2,
         equipment: tuple[str, ...] = (), grid: str = "G1", venue: str | None = None,
         readiness: float | None = None) -> Candidate:
    lat, lon = offset(north_m, east_m)
    return Candidate(uid, kind, lat, lon, responders, frozenset(equipment), "tianhe", grid,
                     venue_id=venue, readiness=readiness)


def incident(*, severity: int = 3, category: str = "other", grid: str | None = "G1",
             venue: str | None = None, needs: Needs | None = NO_NEEDS) -> IncidentView:
    return IncidentView("inc-1", category, severity, LAT0, LON0, "tianhe", grid, venue,
                        exercise=False, needs=needs)


def ids(decision: RingDecision) -> list[str]:
    return [u.unit_id for u in decision.units]


def by_ring(decisions: list[RingDecision]) -> dict[int, RingDecision]:
    return {d.ring: d for d in decisions}


# --------------------------------------------------------------------------- geometry


def test_haversine_one_degree_of_latitude_is_about_111_km() -> None:
    d = haversine_m(23.0, 113.0, 24.0, 113.0)
    assert d == pytest.approx(111_195, rel=1e-3)
    # A degree of longitude shrinks with cos(latitude): half as long at 60°.
    assert haversine_m(60.0, 0.0, 60.0, 1.0) == pytest.approx(d / 2, rel=1e-2)
    assert haversine_m(LAT0, LON0, LAT0, LON0) == 0.0
    a, b = offset(300, 400), offset(-120, 50)
    assert haversine_m(*a, *b) == pytest.approx(haversine_m(*b, *a))
    # The test helper itself lays units out where it says it does.
    assert haversine_m(LAT0, LON0, *offset(300, 400)) == pytest.approx(500, rel=1e-3)


def test_eta_is_turnout_plus_road_distance_over_speed() -> None:
    assert DETOUR == 1.3
    assert eta_s(0, "post") == TURNOUT_S["post"] == 5.0
    assert eta_s(1000, "grid_team") == pytest.approx(40 + 1300 / 5)
    assert eta_s(3000, "professional") == pytest.approx(90 + 3900 / 10)
    # Slower kinds always take longer for the same long distance.
    speeds = sorted(SPEED_MPS, key=SPEED_MPS.__getitem__)
    etas = [eta_s(10_000, k) for k in speeds]
    assert etas == sorted(etas, reverse=True)
    with pytest.raises(ValueError, match="unknown unit kind 'drone'"):
        eta_s(100, "drone")
    with pytest.raises(ValueError, match="distance"):
        eta_s(-1, "post")


# --------------------------------------------------------------------------- ranking


def test_eta_beats_raw_distance_across_kinds() -> None:
    post = cand("post-2km", "post", 2000)
    prof = cand("police-3km", "professional", 0, east_m=3000)
    ranked = rank_candidates(incident(grid=None), [post, prof], frozenset({"post", "professional"}))
    assert [c.unit_id for c, _, _ in ranked] == ["police-3km", "post-2km"]
    (_, d_prof, eta_prof), (_, d_post, eta_post) = ranked
    assert d_post < d_prof  # the post is nearer...
    assert eta_prof == pytest.approx(480, abs=1)  # 90 + 3900/10
    assert eta_post == pytest.approx(5 + 2600 / 1.4, abs=2)  # ...but walks for half an hour
    assert eta_prof < eta_post


def test_rank_candidates_filters_kinds() -> None:
    cands = [cand("p", "post", 10), cand("g", "grid_team", 10), cand("s", "street_force", 10)]
    ranked = rank_candidates(incident(), cands, frozenset({"grid_team"}))
    assert [c.unit_id for c, _, _ in ranked] == ["g"]
    assert rank_candidates(incident(), cands, frozenset()) == []


def test_grid_bonus_wins_small_differences_only() -> None:
    own = cand("gt-own", "grid_team", 600, grid="G1")  # eta 196 s, score 166
    slightly_nearer = cand("gt-near", "grid_team", 500, grid="G2")  # eta 170 s
    much_nearer = cand("gt-close", "grid_team", 100, grid="G2")  # eta 66 s
    kinds = frozenset({"grid_team"})
    ranked = rank_candidates(incident(grid="G1"), [slightly_nearer, own], kinds)
    assert [c.unit_id for c, _, _ in ranked] == ["gt-own", "gt-near"]
    ranked = rank_candidates(incident(grid="G1"), [much_nearer, own], kinds)
    assert [c.unit_id for c, _, _ in ranked] == ["gt-close", "gt-own"]
    # Without the bonus the nearer team wins, so the bonus is what decided the first case.
    ranked = rank_candidates(incident(grid="G1"), [slightly_nearer, own], kinds, grid_bonus_s=0)
    assert [c.unit_id for c, _, _ in ranked] == ["gt-near", "gt-own"]
    # An incident with no grid gives nobody the bonus.
    ranked = rank_candidates(incident(grid=None), [slightly_nearer, own], kinds)
    assert [c.unit_id for c, _, _ in ranked] == ["gt-near", "gt-own"]


def test_readiness_weight_moves_a_ready_unit_up() -> None:
    ready = cand("u-ready", "unit", 100, readiness=1.0)  # eta 72 s
    sleepy = cand("u-sleepy", "unit", 60, readiness=0.0)  # eta 51.2 s
    kinds = frozenset({"unit"})
    assert [c.unit_id for c, _, _ in rank_candidates(incident(), [ready, sleepy], kinds)] == [
        "u-sleepy", "u-ready"]
    ranked = rank_candidates(incident(), [ready, sleepy], kinds, readiness_weight=1.0)
    assert [c.unit_id for c, _, _ in ranked] == ["u-ready", "u-sleepy"]


def test_ties_break_by_unit_id_whatever_the_input_order() -> None:
    cands = [cand(f"u-{i}", "unit", 50) for i in (3, 1, 2)]
    for order in (cands, cands[::-1]):
        ranked = rank_candidates(incident(), order, frozenset({"unit"}))
        assert [c.unit_id for c, _, _ in ranked] == ["u-1", "u-2", "u-3"]


# --------------------------------------------------------------------------- ring 1


def test_venue_unit_is_chosen_first_in_ring1_even_when_others_are_nearer() -> None:
    venue_post = cand("p-venue", "post", 120, venue="mall-1")  # eta ~116 s: beyond 60, but inside
    near_a = cand("u-a", "unit", 20)  # eta ~30 s
    near_b = cand("u-b", "unit", 30)  # eta ~36 s
    [ring1] = choose_units(incident(venue="mall-1"), [near_a, near_b, venue_post], RINGS,
                           rings_to_decide=[1])
    assert ring1.ring == 1
    assert ids(ring1) == ["p-venue", "u-a"]  # at most two, venue first
    assert ring1.reason == "venue"
    assert ring1.shortfall is None
    assert ring1.units[0].rank == 3  # it ranked last on ETA and was still taken first
    assert ring1.units[0].eta_s > RINGS[0].target_s

    # Same scene, incident without a venue: plain nearest two within the target.
    [ring1] = choose_units(incident(), [near_a, near_b, venue_post], RINGS, rings_to_decide=[1])
    assert ids(ring1) == ["u-a", "u-b"]
    assert ring1.reason == "nearby"


def test_ring1_none_in_reach_and_empty_posts() -> None:
    far = cand("u-far", "unit", 500)
    empty = cand("p-empty", "post", 5, responders=0)  # nobody on it: cannot self-rescue
    [ring1] = choose_units(incident(), [far, empty], RINGS, rings_to_decide=[1])
    assert ring1.units == ()
    assert ring1.reason == "none_in_reach"
    assert ring1.shortfall == NO_NEEDS
    [ring1] = choose_units(incident(), [cand("g", "grid_team", 5)], RINGS, rings_to_decide=[1])
    assert ring1.reason == "no_candidate"
    assert ring1.shortfall == NO_NEEDS


# --------------------------------------------------------------------------- ring 2


def test_ring2_picks_a_farther_unit_with_the_needed_shield() -> None:
    cands = [
        cand("u1", "unit", 20),  # ring 1
        cand("u2", "unit", 30),  # ring 1
        cand("u3", "unit", 100),  # nearer, no shield
        cand("u4", "unit", 250, equipment=("shield",)),  # eta 150 s: within 180
    ]
    r = by_ring(choose_units(incident(needs=Needs(3, frozenset({"shield"}))), cands, RINGS,
                             rings_to_decide=[1, 2]))
    assert ids(r[1]) == ["u1", "u2"]  # 4 responders: the count is met by ring 1
    assert ids(r[2]) == ["u4"]  # u3 would add nothing needed
    assert r[2].reason == "needs_met"
    assert r[2].shortfall is None
    assert r[2].units[0].equipment == ("shield",)
    assert r[2].units[0].rank == 2  # second in ring 2's ranking (u3 is first)


def test_ring2_takes_equipment_before_filling_responders() -> None:
    # Ten units could fill the eight places; the shield carrier is the farthest but must go.
    cands = [cand(f"u{i:02d}", "unit", 100 + 10 * i) for i in range(10)]
    cands.append(cand("u-shield", "unit", 280, equipment=("shield", "baton")))
    [ring2] = choose_units(incident(needs=Needs(20, frozenset({"shield"}))), cands, RINGS,
                           rings_to_decide=[2])
    assert len(ring2.units) == 8
    assert "u-shield" in ids(ring2)
    assert set(ids(ring2)) - {"u-shield"} == {f"u{i:02d}" for i in range(7)}
    assert [u.rank for u in ring2.units] == sorted(u.rank for u in ring2.units)
    assert ring2.reason == "shortfall"
    assert ring2.shortfall == Needs(20 - 8 * 2, frozenset())


def test_shortfall_when_needs_cannot_be_met_within_target() -> None:
    cands = [
        cand("u1", "unit", 20),  # ring 1
        cand("u2", "unit", 100),  # eta 72 s: ring 2
        cand("u-far", "unit", 400, responders=6, equipment=("shield", "aed")),  # eta 228 s > 180
    ]
    r = by_ring(choose_units(incident(needs=Needs(10, frozenset({"shield", "aed"}))), cands, RINGS,
                             rings_to_decide=[1, 2]))
    assert ids(r[1]) == ["u1"]
    assert ids(r[2]) == ["u2"]
    assert r[2].reason == "shortfall"
    assert r[2].shortfall == Needs(6, frozenset({"shield", "aed"}))


def test_ring2_counts_ring1_equipment_and_can_need_nobody() -> None:
    cands = [cand("u1", "unit", 20, responders=4, equipment=("aed",)), cand("u2", "unit", 100)]
    r = by_ring(choose_units(incident(needs=Needs(4, frozenset({"aed"}))), cands, RINGS,
                             rings_to_decide=[1, 2]))
    assert ids(r[1]) == ["u1"]
    assert r[2] == RingDecision(2, (), None, "needs_met")


def test_ring2_with_no_candidate_reports_the_full_remaining_needs() -> None:
    needs = Needs(5, frozenset({"aed"}))
    [ring2] = choose_units(incident(needs=needs), [cand("g", "grid_team", 50)], RINGS,
                           rings_to_decide=[2])
    assert ring2 == RingDecision(2, (), needs, "no_candidate")


def test_ring2_uses_the_run_card_when_no_needs_are_given() -> None:
    # violence sev 1: 12 responders + shield, steel_fork, baton.
    kit = cand("u-kit", "unit", 200, responders=3, equipment=("shield", "steel_fork", "baton"))
    cands = [cand(f"u{i}", "unit", 100 + i, responders=3) for i in range(3)] + [kit]
    [ring2] = choose_units(incident(category="violence", severity=1, needs=None), cands, RINGS,
                           rings_to_decide=[2])
    assert set(ids(ring2)) == {"u-kit", "u0", "u1", "u2"}
    assert ring2.reason == "needs_met"


# --------------------------------------------------------------------------- rings 3–5


def test_ring3_prefers_the_incident_grids_own_team() -> None:
    own = cand("gt-own", "grid_team", 900, grid="G1")  # eta 274 s, within 300
    other = cand("gt-other", "grid_team", 100, grid="G2")  # eta 66 s
    [ring3] = choose_units(incident(grid="G1"), [other, own], RINGS, rings_to_decide=[3])
    assert ids(ring3) == ["gt-own"]  # one team for severity 3, and it is the grid's own
    assert ring3.reason == "own_grid"
    assert ring3.shortfall is None
    # Severity 1 wants two teams: the own team first, then the best of the rest.
    [ring3] = choose_units(incident(grid="G1", severity=1), [other, own], RINGS, rings_to_decide=[3])
    assert ids(ring3) == ["gt-own", "gt-other"]


def test_ring3_own_team_that_would_miss_the_target_yields_to_one_that_makes_it() -> None:
    own_far = cand("gt-own", "grid_team", 3000, grid="G1")  # eta 820 s
    other = cand("gt-other", "grid_team", 500, grid="G2")  # eta 170 s
    [ring3] = choose_units(incident(grid="G1"), [own_far, other], RINGS, rings_to_decide=[3])
    assert ids(ring3) == ["gt-other"]
    assert ring3.reason == "nearest"


def test_ring3_beyond_target_is_still_sent_and_says_so() -> None:
    far = cand("gt-far", "grid_team", 5000, grid="G9")  # eta 1340 s > 300
    [ring3] = choose_units(incident(), [far], RINGS, rings_to_decide=[3])
    assert ids(ring3) == ["gt-far"]
    assert ring3.reason == "beyond_target"
    assert ring3.shortfall is None
    assert ring3.units[0].eta_s > RINGS[2].target_s


def test_rings_3_to_5_with_too_few_or_no_units() -> None:
    cands = [cand("gt", "grid_team", 400), cand("sf", "street_force", 1000)]
    r = by_ring(choose_units(incident(severity=1), cands, RINGS, rings_to_decide=[3, 4, 5]))
    assert ids(r[3]) == ["gt"]
    assert r[3].shortfall == NO_NEEDS  # severity 1 wanted two teams
    assert ids(r[4]) == ["sf"]
    assert r[5] == RingDecision(5, (), NO_NEEDS, "no_candidate")


def test_severity_1_decides_rings_4_and_5_and_severity_3_does_not() -> None:
    cands = [cand(f"sf{i}", "street_force", 1000 + i) for i in range(3)]
    cands += [cand(f"pro{i}", "professional", 2000 + i) for i in range(3)]
    sev1 = by_ring(choose_units(incident(severity=1), cands, RINGS))
    assert sorted(sev1) == [1, 2, 3, 4, 5]
    assert ids(sev1[4]) == ["sf0", "sf1"]  # two units for severity 1
    assert ids(sev1[5]) == ["pro0", "pro1"]
    assert sev1[4].reason == "nearest"
    sev2 = choose_units(incident(severity=2), cands, RINGS)
    assert [d.ring for d in sev2] == [1, 2, 3, 4, 5]
    assert len(by_ring(sev2)[4].units) == 1
    sev3 = choose_units(incident(severity=3), cands, RINGS)
    assert [d.ring for d in sev3] == [1, 2, 3]
    # ...unless the caller asks for them (an escalation).
    [ring4] = choose_units(incident(severity=3), cands, RINGS, rings_to_decide=[4])
    assert ids(ring4) == ["sf0"]


def test_a_three_ring_table_never_yields_rings_4_or_5() -> None:
    cands = [cand("sf", "street_force", 500), cand("pro", "professional", 500),
             cand("gt", "grid_team", 500)]
    decisions = choose_units(incident(severity=1), cands, THREE_RINGS)
    assert [d.ring for d in decisions] == [1, 2, 3]
    assert choose_units(incident(severity=1), cands, THREE_RINGS, rings_to_decide=[4, 5]) == []
    # Unknown ring numbers are ignored rather than invented.
    assert choose_units(incident(severity=1), cands, RINGS, rings_to_decide=[0, 6, 9]) == []


# --------------------------------------------------------------------------- cross-ring rules


def test_a_unit_is_never_chosen_twice() -> None:
    unit = cand("u-dup", "unit", 20)
    # The same unit twice (a stale GEO entry) and enough needs to tempt ring 2 into it again.
    cands = [unit, unit, cand("u-b", "unit", 30), cand("u-c", "unit", 100)]
    r = by_ring(choose_units(incident(needs=Needs(50, frozenset())), cands, RINGS,
                             rings_to_decide=[1, 2]))
    assert ids(r[1]) == ["u-dup", "u-b"]
    assert ids(r[2]) == ["u-c"]
    assert r[2].shortfall == Needs(44, frozenset())


def test_exclude_is_honoured() -> None:
    cands = [cand("u-a", "unit", 20), cand("u-b", "unit", 30), cand("u-c", "unit", 40),
             cand("gt-1", "grid_team", 100), cand("gt-2", "grid_team", 200)]
    r = by_ring(choose_units(incident(), cands, RINGS, exclude=frozenset({"u-a", "gt-1"})))
    assert ids(r[1]) == ["u-b", "u-c"]
    assert ids(r[3]) == ["gt-2"]
    chosen = {u.unit_id for d in r.values() for u in d.units}
    assert not chosen & {"u-a", "gt-1"}


def test_same_input_same_output() -> None:
    rng = random.Random(7)
    kinds = sorted(SPEED_MPS)
    cands = [cand(f"c{i:03d}", rng.choice(kinds), rng.uniform(-600, 600),
                  east_m=rng.uniform(-600, 600), responders=rng.randint(0, 5),
                  equipment=tuple(rng.sample(["shield", "baton", "aed", "steel_fork"], rng.randint(0, 2))),
                  grid=rng.choice(["G1", "G2"]), venue=rng.choice([None, "mall-1"]))
             for i in range(200)]
    inc = incident(category="violence", severity=1, venue="mall-1", needs=None)
    first = choose_units(inc, cands, RINGS)
    assert choose_units(inc, cands, RINGS) == first
    shuffled = cands[:]
    rng.shuffle(shuffled)
    assert choose_units(inc, shuffled, RINGS) == first
    assert [d.ring for d in first] == [1, 2, 3, 4, 5]
    assert all(d.units for d in first)  # 200 units around: every ring is staffed


# Random scenes: the invariants every decision must keep, whatever the input.
_KINDS = sorted(SPEED_MPS)
_candidate = st.builds(
    lambda i, kind, n, e, resp, eq, grid, venue: cand(
        f"c{i}", kind, n, east_m=e, responders=resp, equipment=tuple(eq), grid=grid, venue=venue),
    st.integers(0, 40), st.sampled_from(_KINDS), st.floats(-3000, 3000), st.floats(-3000, 3000),
    st.integers(0, 6), st.sets(st.sampled_from(["shield", "aed", "baton"]), max_size=2),
    st.sampled_from(["G1", "G2"]), st.sampled_from([None, "v1"]))


@settings(max_examples=150, deadline=None)
@given(cands=st.lists(_candidate, max_size=60), severity=st.integers(1, 4),
       responders=st.integers(0, 30), equipment=st.sets(st.sampled_from(["shield", "aed", "baton"])),
       excluded=st.sets(st.integers(0, 40).map(lambda i: f"c{i}"), max_size=5))
def test_invariants_on_random_scenes(cands: list[Candidate], severity: int, responders: int,
                                     equipment: set[str], excluded: set[str]) -> None:
    needs = Needs(responders, frozenset(equipment))
    inc = incident(severity=severity, venue="v1", needs=needs)
    decisions = choose_units(inc, cands, RINGS, exclude=frozenset(excluded))
    assert [d.ring for d in decisions] == ([1, 2, 3, 4, 5] if severity <= 2 else [1, 2, 3])
    chosen = [u.unit_id for d in decisions for u in d.units]
    assert len(chosen) == len(set(chosen))
    assert not set(chosen) & excluded
    r = by_ring(decisions)
    assert len(r[1].units) <= 2
    assert len(r[2].units) <= 8
    assert all(u.kind in {"post", "unit"} for u in r[1].units + r[2].units)
    assert all(u.eta_s <= 180 for u in r[2].units)
    for ring, kind in ((3, "grid_team"), (4, "street_force"), (5, "professional")):
        if ring in r:
            assert all(u.kind == kind for u in r[ring].units)
            assert len(r[ring].units) <= (2 if severity == 1 else 1)
    # Ring 2's shortfall is exactly what rings 1–2 together leave uncovered.
    brought = r[1].units + r[2].units
    have = {e for u in brought for e in u.equipment}
    missing = Needs(max(0, responders - sum(u.responders for u in brought)),
                    frozenset(equipment - have))
    assert r[2].shortfall == (None if missing == NO_NEEDS else missing)
    assert (r[2].reason == "needs_met") == (r[2].shortfall is None)


# --------------------------------------------------------------------------- run cards


def test_default_run_cards_are_sensible() -> None:
    assert set(RUN_CARDS) >= {"fire", "violence", "medical", "drowning", "crowd", "traffic",
                              "hazmat", "other"}
    for category, card in RUN_CARDS.items():
        assert sorted(card) == [1, 2, 3, 4], category
        counts = [card[s].responders for s in (1, 2, 3, 4)]
        assert counts == sorted(counts, reverse=True), category  # lower severity, fewer people
    assert RUN_CARDS["violence"][1] == Needs(12, frozenset({"shield", "steel_fork", "baton"}))
    assert RUN_CARDS["fire"][1] == Needs(10, frozenset({"extinguisher"}))
    assert {"aed", "stretcher"} <= RUN_CARDS["medical"][1].equipment
    assert "life_buoy" in RUN_CARDS["drowning"][1].equipment


def test_needs_for_lookup_order() -> None:
    explicit = Needs(3, frozenset({"aed"}))
    assert needs_for(incident(category="fire", needs=explicit), RUN_CARDS) == explicit
    assert needs_for(incident(category="fire", severity=2, needs=None), RUN_CARDS) == RUN_CARDS["fire"][2]
    assert needs_for(incident(category="meteor", severity=1, needs=None), RUN_CARDS) == RUN_CARDS["other"][1]
    # A city's partial cards: missing severities fall back to its "other", then to the built-in one.
    cards = load_run_cards({"fire": {"1": {"responders": 20}}, "other": {"2": {"responders": 9}}})
    assert needs_for(incident(category="fire", severity=1, needs=None), cards) == Needs(20, frozenset())
    assert needs_for(incident(category="fire", severity=2, needs=None), cards) == Needs(9, frozenset())
    assert needs_for(incident(category="fire", severity=3, needs=None), cards) == RUN_CARDS["other"][3]


def test_load_run_cards_parses_a_json_like_dict() -> None:
    cards = load_run_cards({
        "fire": {"1": {"responders": 10, "equipment": ["extinguisher"]},
                 2: {"responders": 6, "equipment": []}},
        "other": {"4": {"responders": 0}},
    })
    assert cards == {
        "fire": {1: Needs(10, frozenset({"extinguisher"})), 2: Needs(6, frozenset())},
        "other": {4: Needs(0, frozenset())},
    }


@pytest.mark.parametrize(("data", "message"), [
    ({"fire": {"5": {"responders": 1}}}, r"'fire': severity '5' is not 1\.\.4"),
    ({"fire": {"0": {"responders": 1}}}, r"severity '0' is not 1\.\.4"),
    ({"fire": {"01": {"responders": 1}}}, r"severity '01' is not 1\.\.4"),
    ({"fire": {True: {"responders": 1}}}, r"severity True is not 1\.\.4"),
    ({"fire": {1: {"responders": 1}, "1": {"responders": 2}}}, "severity 1 given twice"),
    ({"fire": {"1": {"responders": -1}}}, "'fire' severity 1: responders must be a non-negative integer"),
    ({"fire": {"1": {"responders": "3"}}}, "responders must be a non-negative integer, got '3'"),
    ({"fire": {"1": {"responders": 2.5}}}, "responders must be a non-negative integer"),
    ({"fire": {"1": {"responders": True}}}, "responders must be a non-negative integer"),
    ({"fire": {"1": {"equipment": ["aed"]}}}, "responders is required"),
    ({"fire": {"1": {"responder": 3}}}, r"unknown keys \['responder'\]"),
    ({"fire": {"1": {"responders": 3, "equipment": "aed"}}}, "equipment must be a list of codes"),
    ({"fire": {"1": {"responders": 3, "equipment": [1]}}}, "equipment codes must be non-empty strings"),
    ({"fire": {"1": [10, "extinguisher"]}}, "expected an object with responders and equipment"),
    ({"fire": [{"responders": 1}]}, "'fire': expected an object of severities"),
    ({"": {"1": {"responders": 1}}}, "category must be a non-empty string"),
])
def test_load_run_cards_rejects_bad_input(data: dict[Any, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_run_cards(data)


def test_records_refuse_impossible_values() -> None:
    with pytest.raises(ValueError, match="responders must be >= 0"):
        Needs(-1, frozenset())
    with pytest.raises(ValueError, match=r"severity must be 1\.\.4"):
        incident(severity=5)
