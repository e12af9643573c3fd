"""kaifong.agents.report.figures — every figure of the report, computed from the inputs (pure: no I/O).

Layer: agents/report. Ring compliance (by ring, district and grid; real, exercise, what-if),
response times, escalations and their acknowledgement, drills, the slowest incidents with their
timelines, and the rings where the worker's live state disagrees with the event-time replay.
An incident belongs to the report when its ``reported_at`` is in the window; exercise
incidents never count in compliance, they are counted on their own.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from kaifong.agents.core import clock, drillplan
from kaifong.agents.report.incident_replay import Replayed, breach_causes, replay, rings_of_state
from kaifong.agents.report.inputs import Inputs
from kaifong.streams.settings import Ring

#: Slowest incidents listed with their timelines.
SLOWEST_N = 10
#: A unit with at least this many failed or unanswered drills in the range "fails repeatedly".
REPEAT_FAILS = 2
#: Drill outcomes that count as a failure for :data:`REPEAT_FAILS`.
FAILING = frozenset({"fail", "no_answer"})


def pct(met: int, breached: int) -> float | None:
    """Share of decided rings met, in percent to one decimal (None if none was decided)."""
    total = met + breached
    return round(100.0 * met / total, 1) if total else None


def _quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile of sorted ``values`` (None if empty)."""
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def _tally(replays: Iterable[Replayed], group: Callable[[Replayed], tuple[str, ...]]
           ) -> dict[tuple[tuple[str, ...], int], Counter[str]]:
    out: dict[tuple[tuple[str, ...], int], Counter[str]] = defaultdict(Counter)
    for rp in replays:
        key = group(rp)
        for ring, st in rp.ring_states().items():
            out[(key, ring)][st] += 1
    return out


def _rows(tally: dict[tuple[tuple[str, ...], int], Counter[str]], names: tuple[str, ...],
          rings: dict[int, Ring]) -> list[dict[str, Any]]:
    rows = []
    for (key, ring), c in sorted(tally.items()):
        r = rings.get(ring)
        rows.append({**dict(zip(names, key, strict=True)), "ring": ring, "name": r.name if r else f"ring {ring}",
                     "target_s": r.target_s if r else None, "met": c["met"], "breached": c["breached"],
                     "stopped": c["stopped"], "pending": c["pending"], "total": c["met"] + c["breached"],
                     "met_pct": pct(c["met"], c["breached"])})
    return rows


def _district(rp: Replayed) -> str:
    return str(rp.report.get("district") or "—")


def _compliance(replays: list[Replayed], rings: tuple[Ring, ...]) -> dict[str, list[dict[str, Any]]]:
    by_number = {r.number: r for r in rings}
    return {
        "by_ring": _rows(_tally(replays, lambda rp: ()), (), by_number),
        "by_district": _rows(_tally(replays, lambda rp: (_district(rp),)), ("district",), by_number),
        "by_grid": _rows(_tally(replays, lambda rp: (_district(rp), str(rp.report.get("grid") or "—"))),
                         ("district", "grid"), by_number),
    }


def _response_times(replays: list[Replayed], rings: tuple[Ring, ...]) -> dict[str, Any]:
    """Per ring: every measured arrival (the worker's response histogram observes the same)."""
    out: dict[str, Any] = {}
    samples: dict[int, list[tuple[float, str, Replayed]]] = defaultdict(list)
    for rp in replays:
        for _, ch in rp.changes:
            if ch.seconds is not None:
                samples[ch.ring].append((ch.seconds, ch.outcome, rp))
    for ring in rings:
        values = sorted(s for s, _, _ in samples.get(ring.number, []))
        within = sum(1 for v in values if v <= ring.target_s)
        out[str(ring.number)] = {
            "ring": ring.number, "name": ring.name, "target_s": ring.target_s, "n": len(values),
            "within_target": within, "p50": _quantile(values, 0.5), "p90": _quantile(values, 0.9),
            "max": values[-1] if values else None, "values": values,
        }
    out["_rows"] = [{"incident_id": rp.incident_id, "district": _district(rp), "grid": rp.report.get("grid") or "",
                     "ring": ring, "seconds": s, "outcome": o}
                    for ring, items in sorted(samples.items()) for s, o, rp in items]
    return out


#: The standards each segment is held against (s): NENA-like acknowledgement, NFPA 1710
#: turnout (EMS) and travel; "90% within" is their objective.
SEGMENT_TARGETS_S = {"acknowledgement": 15.0, "turnout": 60.0, "travel": 240.0}
#: A breach's possible causes (:func:`kaifong.agents.report.incident_replay.breach_causes`).
CAUSES = ("late_acknowledgement", "late_turnout", "long_travel", "nobody_available")


def _segments(replays: list[Replayed]) -> list[dict[str, Any]]:
    """Per segment and ring: count, sum, p50, p90 and the share within the standard's target —
    the same observations as the worker's ``kaifong_response_segment_seconds``."""
    values: dict[tuple[str, int], list[float]] = defaultdict(list)
    for rp in replays:
        for segment, ring, _kind, seconds in rp.segments:
            values[(segment, ring)].append(seconds)
    rows = []
    for (segment, ring), vs in sorted(values.items(), key=lambda kv: (kv[0][1], SEGMENT_TARGETS_S.get(kv[0][0], 0))):
        vs.sort()
        target = SEGMENT_TARGETS_S[segment]
        rows.append({"segment": segment, "ring": ring, "n": len(vs), "sum_s": round(sum(vs), 3),
                     "p50_s": _quantile(vs, 0.5), "p90_s": _quantile(vs, 0.9), "target_s": target,
                     "within_target_pct": round(100.0 * sum(1 for v in vs if v <= target) / len(vs), 1)})
    return rows


def _causes(replays: list[Replayed]) -> list[dict[str, Any]]:
    """Breached rings by ring and cause."""
    counts: Counter[tuple[int, str]] = Counter()
    for rp in replays:
        for ring, cause in breach_causes(rp).items():
            counts[(ring, cause)] += 1
    return [{"ring": ring, "cause": cause, "count": n} for (ring, cause), n in sorted(counts.items())]


def _ack_index(updates: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The acknowledgement of each escalation: the first one received, as the worker keeps it
    (``updates`` are in offset order, and one incident's updates share a partition)."""
    acks: dict[str, dict[str, Any]] = {}
    for u in updates:
        if u["kind"] == "escalation_acknowledged" and u.get("escalation_id"):
            acks.setdefault(u["escalation_id"], u)
    return acks


def _escalations(inputs: Inputs, by_id: dict[str, dict[str, Any]]) -> dict[str, Any]:
    acks = _ack_index(inputs.updates)
    first = {e["escalation_id"]: e for e in inputs.escalations if int(e.get("notification", 0)) == 0}
    renotified = Counter(e["escalation_id"] for e in inputs.escalations if int(e.get("notification", 0)) > 0)
    rows = []
    for esc_id, e in sorted(first.items(), key=lambda kv: clock.parse_time(kv[1]["raised_at"])):
        ack = acks.get(esc_id)
        ack_s = None
        if ack is not None:
            ack_s = round(max(0.0, (clock.parse_time(ack["at"]) - clock.parse_time(e["raised_at"])).total_seconds()), 3)
        report = by_id.get(e["incident_id"], {})
        rows.append({"escalation_id": esc_id, "incident_id": e["incident_id"],
                     "district": e.get("district") or report.get("district") or "",
                     "grid": e.get("grid") or report.get("grid") or "", "ring": e["ring"], "level": e["level"],
                     "reason": e["reason"], "raised_at": e["raised_at"], "deadline_at": e["deadline_at"],
                     "breached_by_s": e.get("breached_by_s"), "renotifications": renotified.get(esc_id, 0),
                     "acked_at": ack["at"] if ack else None, "acked_by": ack.get("by") if ack else None,
                     "ack_s": ack_s, "exercise": bool(e.get("exercise"))})
    real = [r for r in rows if not r["exercise"]]
    by_level_reason = Counter((r["level"], r["reason"]) for r in real)
    ack_by_level = []
    for level in clock.LEVELS:
        mine = [r for r in real if r["level"] == level]
        times = sorted(r["ack_s"] for r in mine if r["ack_s"] is not None)
        if mine:
            ack_by_level.append({"level": level, "raised": len(mine), "acknowledged": len(times),
                                 "unacknowledged": len(mine) - len(times), "p50_s": _quantile(times, 0.5),
                                 "p90_s": _quantile(times, 0.9), "max_s": times[-1] if times else None})
    return {"rows": rows, "real": len(real), "exercise": len(rows) - len(real),
            "by_level_reason": [{"level": lv, "reason": rs, "count": n}
                                for (lv, rs), n in sorted(by_level_reason.items(),
                                                          key=lambda kv: (clock.LEVELS.index(kv[0][0]), kv[0][1]))],
            "ack_by_level": ack_by_level}


def _drills(inputs: Inputs) -> dict[str, Any]:
    results = inputs.drill_results
    rates = drillplan.pass_rates((r["district"] or "—", r["outcome"]) for r in results)
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        outcomes[r["district"] or "—"][r["outcome"]] += 1
    issued_by: Counter[str] = Counter(d["district"] or "—" for d in inputs.drills_issued)
    drilled = {d["unit_id"] for d in inputs.drills_issued} | {r["unit_id"] for r in results}
    never = sorted(u for u in inputs.registry if u not in drilled)
    never_by: Counter[str] = Counter(str(inputs.registry[u].get("district") or "—") for u in never)
    units_by: Counter[str] = Counter(str(b.get("district") or "—") for b in inputs.registry.values())
    fails: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(results, key=lambda r: clock.parse_time(r["issued_at"])):
        if r["outcome"] in FAILING:
            fails[r["unit_id"]].append(r)
    failing = [{"unit_id": u, "district": rs[0]["district"] or "", "failures": len(rs),
                "outcomes": [r["outcome"] for r in rs], "last_issued_at": rs[-1]["issued_at"]}
               for u, rs in sorted(fails.items()) if len(rs) >= REPEAT_FAILS]
    failing_by = Counter(f["district"] or "—" for f in failing)
    districts = sorted(set(issued_by) | set(outcomes) | set(units_by))
    rows = [{"district": d, "units": units_by.get(d, 0), "issued": issued_by.get(d, 0),
             "results": sum(outcomes[d].values()),
             **{o: outcomes[d].get(o, 0) for o in drillplan.OUTCOMES},
             "pass_rate": round(100 * rates[d], 1) if d in rates else None,
             "never_drilled": never_by.get(d, 0), "failing_repeatedly": failing_by.get(d, 0)}
            for d in districts]
    return {"rows": rows, "issued": len(inputs.drills_issued), "results": len(results),
            "registry_units": len(inputs.registry), "never_drilled": never, "failing_repeatedly": failing}


def _timeline(rp: Replayed, inputs_by_incident: dict[str, dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """What happened to one incident, seconds after its report, in order."""
    t0 = clock.parse_time(rp.report["reported_at"])
    mine = inputs_by_incident.get(rp.incident_id, {})
    entries: list[tuple[datetime, int, str, str]] = [(t0, 0, "reported", f"reported ({rp.report['category']}, "
                                                                           f"severity {rp.report['severity']})")]
    for a in mine.get("assignments", []):
        what = f"ring {a['ring']}: {len(a['units'])} unit(s) assigned" + (
            f" (re-dispatch {a.get('attempt')})" if int(a.get("attempt", 0)) else "")
        entries.append((clock.parse_time(a["decided_at"]), 1, "assigned", what))
    for u in mine.get("updates", []):
        if u["kind"] == "escalation_acknowledged":
            entries.append((clock.parse_time(u["at"]), 3, "ack", f"escalation acknowledged ({u.get('escalation_id')})"))
        else:
            who = f" by {u['unit_id']}" if u.get("unit_id") else ""
            entries.append((clock.parse_time(u["at"]), 2, u["kind"], f"{u['kind']}{who}"))
    entries.extend((clock.parse_time(e["raised_at"]), 3, "escalation",
                    f"escalated to {e['level']} ({e['reason']}, ring {e['ring']})")
                   for e in mine.get("escalations", []) if int(e.get("notification", 0)) == 0)
    for at, ch in rp.changes:
        if ch.outcome in ("met", "breached"):
            extra = f" in {ch.seconds:g} s" if ch.seconds is not None else " (deadline passed)"
            entries.append((at, 4, ch.outcome, f"ring {ch.ring} {ch.outcome}{extra}"))
    entries.sort(key=lambda e: (e[0], e[1]))
    return [{"t_s": round((at - t0).total_seconds(), 3), "kind": kind, "what": what} for at, _, kind, what in entries]


def compute(inputs: Inputs, rings: tuple[Ring, ...], *, what_if: tuple[Ring, ...] | None = None,
            as_of: datetime | None = None, ack_windows: Mapping[int, float] | None = None) -> dict[str, Any]:
    """Every figure of the report from the inputs (pure: no I/O).

    ``rings`` is the ring table in force (``KAIFONG_RINGS``) for incidents whose state does not
    record its own; ``what_if`` replays every real incident again under another table;
    ``ack_windows`` are the worker's acknowledgement windows per ring (no-shows as it decides).
    """
    window = inputs.window
    as_of = as_of or datetime.now(UTC)
    max_target = max(r.target_s for r in rings)
    horizon = min(window.end + timedelta(seconds=max_target), as_of)
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for kind, items in (("updates", inputs.updates), ("assignments", inputs.assignments),
                        ("escalations", inputs.escalations)):
        for item in items:
            grouped[item["incident_id"]][kind].append(item)
    recorded = 0
    real_runs: list[Replayed] = []
    for report in sorted(inputs.reports, key=lambda r: (clock.parse_time(r["reported_at"]), r["incident_id"])):
        mine = grouped.get(report["incident_id"], {})
        state = inputs.states.get(report["incident_id"])
        table = rings_of_state(state) if state is not None else None
        recorded += table is not None
        # Each incident keeps the ring table it was opened with (the table may change over time).
        real_runs.append(replay(report, mine.get("assignments", []), mine.get("updates", []), table or rings,
                                min(window.end + timedelta(seconds=max(r.target_s for r in (table or rings))), as_of),
                                ack_windows=ack_windows))
    real = [rp for rp in real_runs if not rp.exercise]
    exercise = [rp for rp in real_runs if rp.exercise]
    figures: dict[str, Any] = {
        "window": {"from": window.start.isoformat(), "to": window.end.isoformat(), "district": window.district,
                   "horizon": horizon.isoformat(), "as_of": as_of.isoformat()},
        "rings": {"configured": [_ring_dict(r) for r in rings],
                  "what_if": [_ring_dict(r) for r in what_if] if what_if else None,
                  "incidents_with_recorded_table": recorded},
        "incidents": {"real": len(real), "exercise": len(exercise),
                      "refused_updates": sum(rp.refused for rp in real_runs)},
        "compliance": {"real": _compliance(real, rings), "what_if": None,
                       "exercise": _compliance(exercise, rings)["by_ring"]},
        "response_times": _response_times(real, rings),
        "segments": _segments(real),
        "breach_causes": _causes(real),
    }
    per_incident = [{"incident_id": rp.incident_id, "district": rp.report.get("district"),
                     "grid": rp.report.get("grid"), "exercise": rp.exercise,
                     "reported_at": rp.report["reported_at"], "outcome": rp.outcome(),
                     "location": rp.report["location"], "rings": {str(k): v for k, v in rp.ring_states().items()},
                     "breach_causes": {str(k): v for k, v in breach_causes(rp).items()}}
                    for rp in real_runs]
    if what_if:
        w_max = max(r.target_s for r in what_if)
        w_horizon = min(window.end + timedelta(seconds=w_max), as_of)
        alt = [replay(rp.report, grouped.get(rp.incident_id, {}).get("assignments", []),
                      grouped.get(rp.incident_id, {}).get("updates", []), what_if, w_horizon, ack_windows=ack_windows)
               for rp in real]
        figures["compliance"]["what_if"] = _compliance(alt, what_if)
        alt_states = {rp.incident_id: rp.ring_states() for rp in alt}
        for row in per_incident:
            if row["incident_id"] in alt_states:
                row["what_if"] = {str(k): v for k, v in alt_states[row["incident_id"]].items()}
    figures["per_incident"] = per_incident
    # Disagreements with the worker's live state: the worker decides by processing order.
    disagreements = []
    for rp in real:
        state = inputs.states.get(rp.incident_id)
        if state is None:
            continue
        live = {int(r["ring"]): r["state"] for r in state.get("rings", [])}
        for ring, st in rp.ring_states().items():
            if live.get(ring) in ("met", "breached") and live.get(ring) != st:
                disagreements.append({"incident_id": rp.incident_id, "ring": ring, "report": st, "live": live[ring]})
    figures["disagreements"] = disagreements
    by_id = {r["incident_id"]: r for r in inputs.reports}
    figures["escalations"] = _escalations(inputs, by_id)
    figures["drills"] = _drills(inputs)
    slow = sorted(real, key=lambda rp: (-rp.waited_s(),
                                        -sum(1 for s in rp.ring_states().values() if s == "breached"),
                                        clock.parse_time(rp.report["reported_at"])))[:SLOWEST_N]
    figures["slowest"] = [{"incident_id": rp.incident_id, "district": rp.report.get("district"),
                           "grid": rp.report.get("grid"), "category": rp.report["category"],
                           "severity": rp.report["severity"], "reported_at": rp.report["reported_at"],
                           "first_on_scene_s": rp.first_on_scene_s(), "waited_s": round(rp.waited_s(), 3),
                           "status": rp.state["status"],
                           "rings": {str(k): v for k, v in rp.ring_states().items()},
                           "targets": {str(r["ring"]): r["target_s"] for r in rp.state["rings"]},
                           "timeline": _timeline(rp, grouped)} for rp in slow]
    figures["sources"] = {"topics": inputs.sources, "records_read": inputs.records_read,
                          "invalid_input_records": inputs.invalid}
    return figures


def _ring_dict(r: Ring) -> dict[str, Any]:
    return {"ring": r.number, "name": r.name, "target_s": r.target_s}

