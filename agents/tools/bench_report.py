"""kaifong.agents.tools.bench_report — the bench's figures: the loss check, quantiles, targets, table and JSON.

Layer: agents/tools. Pure arithmetic and formatting; the bench's other modules import it, it imports none of them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson


class BenchLoss(RuntimeError):
    """Events went missing in a phase: its figures must not be reported."""


def check_loss(phase: str, sent: int, received: int) -> None:
    """Raise :class:`BenchLoss` unless every event sent was received.

    >>> check_loss("x", 10, 10)
    >>> check_loss("x", 10, 9)
    Traceback (most recent call last):
    ...
    kaifong.agents.tools.bench_report.BenchLoss: x: 1 of 10 events lost — no figure is reported from this run
    """
    if received < sent:
        raise BenchLoss(f"{phase}: {sent - received} of {sent} events lost — no figure is reported from this run")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values`` by nearest rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus-style quantile from cumulative ``(upper_bound, count)`` buckets."""
    if not buckets or buckets[-1][1] == 0:
        return math.nan
    total = buckets[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / max(count - prev_count, 1e-9))
        prev_bound, prev_count = bound, count
    return prev_bound


TARGETS = {
    "throughput_ratio_vs_aiokafka": (">=", 0.5),
    "dispatch_decision_stored_p99_ms": ("<=", 10.0),
    "dispatch_decision_p99_ms": ("<=", 10.0),
    "decision_stored_p99_ms": ("<=", 10.0),
    "decision_p99_ms": ("<=", 10.0),
    "e2e_p99_over_loaded_floor_ms": ("<=", 15.0),
    "escalation_lateness_p99_ms": ("<=", 500.0),
    "worker_peak_rss_mb": ("<=", 400.0),
}


def verdicts(r: dict[str, Any]) -> dict[str, bool]:
    """Which targets the run met (the e2e one is relative to the same-run broker floor)."""
    out = {}
    for key, (op, bound) in TARGETS.items():
        if key in r:
            out[key] = r[key] >= bound if op == ">=" else r[key] <= bound
    for key in ("dispatch_e2e_p99_ms", "e2e_p99_ms"):
        if key in r and "broker_floor_p99_ms" in r:
            out[key] = r[key] <= r["broker_floor_p99_ms"] + 15
    return out


def table(r: dict[str, Any]) -> str:
    """The human-readable result table."""
    v = verdicts(r)

    def row(label: str, key: str, fmt: str, target: str = "") -> str:
        value = r.get(key)
        if value is None:
            return ""
        text = format(value, fmt)
        mark = "" if key not in v else ("  ✔" if v[key] else "  ✘")
        return f"| {label:<52} | {text:>12} | {target:<26}{mark} |"

    m = r.get("machine", {})
    lines = [f"kaifong bench — {m.get('cores')} cores, Python {m.get('python')}, broker: {m.get('broker')}, "
             f"redis: {m.get('redis')}",
             f"| {'measure':<52} | {'value':>12} | {'target':<28} |",
             "|" + "-" * 54 + "|" + "-" * 14 + "|" + "-" * 30 + "|",
             row("aiokafka pass-through baseline (events/s)", "baseline_events_per_s", ",.0f"),
             row("kaifong unit-status path, 1 worker (events/s)", "kaifong_status_events_per_s", ",.0f"),
             row("ratio to the baseline", "throughput_ratio_vs_aiokafka", ".2f", "≥ 0.50"),
             row("broker floor produce→consume p50 (ms)", "broker_floor_p50_ms", ".1f"),
             row("broker floor produce→consume p99 (ms)", "broker_floor_p99_ms", ".1f"),
             row("dispatch alone: reported→assignment p50 (ms)", "dispatch_e2e_p50_ms", ".1f"),
             row("dispatch alone: reported→assignment p99 (ms)", "dispatch_e2e_p99_ms", ".1f", "≤ floor p99 + 15 ms"),
             row("dispatch alone: decision in the worker p50 (ms)", "dispatch_decision_stored_p50_ms", ".2f"),
             row("dispatch alone: decision in the worker p99 (ms)", "dispatch_decision_stored_p99_ms", ".2f",
                 "≤ 10 ms"),
             row("  … + the broker's ack p50 (ms)", "dispatch_decision_p50_ms", ".2f"),
             row("  … + the broker's ack p99 (ms)", "dispatch_decision_p99_ms", ".2f", "≤ 10 ms, ack counted"),
             row("status traffic during the incident phase (events/s)", "status_background_per_s", ",.0f"),
             row("  … achieved by the traffic process (events/s)", "status_background_achieved_per_s", ",.0f"),
             row("under status load: reported→assignment p50 (ms)", "e2e_p50_ms", ".1f"),
             row("under status load: reported→assignment p95 (ms)", "e2e_p95_ms", ".1f"),
             row("under status load: reported→assignment p99 (ms)", "e2e_p99_ms", ".1f", "≤ floor p99 + 15 ms"),
             row("broker floor under that status load p50 (ms)", "floor_under_load_p50_ms", ".1f"),
             row("broker floor under that status load p99 (ms)", "floor_under_load_p99_ms", ".1f"),
             row("  reported→assignment p99 − that floor p99 (ms)", "e2e_p99_over_loaded_floor_ms", ".1f", "≤ 15 ms"),
             row("under status load: decision in the worker p50 (ms)", "decision_stored_p50_ms", ".2f"),
             row("under status load: decision in the worker p99 (ms)", "decision_stored_p99_ms", ".2f", "≤ 10 ms"),
             row("  … + the broker's ack p50 (ms)", "decision_p50_ms", ".2f"),
             row("  … + the broker's ack p99 (ms)", "decision_p99_ms", ".2f", "≤ 10 ms, ack counted"),
             row("escalation lateness p50 (ms), 1,000 open", "escalation_lateness_p50_ms", ".0f"),
             row("escalation lateness p99 (ms), 1,000 open", "escalation_lateness_p99_ms", ".0f", "≤ 500 ms"),
             row("worker peak RSS (MB, + firehose), city + open", "worker_peak_rss_mb", ".0f", "≤ 400 MB")]
    lines = [line for line in lines if line]  # a phase that did not run has no rows
    cpu = r.get("cpu_seconds_per_1000_events") or {}
    for name, value in cpu.items():
        lines.append(f"| {'CPU s per 1,000 status events: ' + name:<52} | {value:>12.3f} | {'':<28} |")
    if "open_incidents" in r:
        lines.append(f"| {'open incidents held at the RSS reading':<52} | {r['open_incidents']:>12,.0f} | {'':<28} |")
    return "\n".join(lines)


def unverified(r: dict[str, Any], exc: BenchLoss) -> dict[str, Any]:
    """The results of a run that lost events: no figure is reported, the partial ones stay in
    the JSON under their own key, for diagnosis only."""
    return {"machine": r.get("machine"), "error": str(exc),
            "partial_unverified": {k: v for k, v in r.items() if k != "machine"}}


def publish(r: dict[str, Any], json_path: str | None, *, verified: bool) -> None:
    """Print the table of a verified run (its verdicts added to ``r``), and write ``r`` as JSON if asked."""
    if verified:
        print()
        print(table(r))
        r["targets_met"] = verdicts(r)
    if json_path:
        Path(json_path).write_bytes(orjson.dumps(r, option=orjson.OPT_INDENT_2))
        print(f"\nwrote {json_path}")
