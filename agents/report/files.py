"""kaifong.agents.report.files — the report's data files: ``figures.json`` and the CSV tables.

Layer: agents/report.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from kaifong.agents.core import drillplan

#: CSV files are written with a BOM so that spreadsheet programs read Chinese names as UTF-8.
CSV_ENCODING = "utf-8-sig"


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with path.open("w", encoding=CSV_ENCODING, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)


def write_files(figures: dict[str, Any], out: Path) -> list[Path]:
    """``figures.json`` and the CSV files; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures.json").write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    cols = ["ring", "name", "target_s", "met", "breached", "stopped", "pending", "total", "met_pct"]
    tables = [("real", figures["compliance"]["real"])]
    if figures["compliance"]["what_if"]:
        tables.append(("what_if", figures["compliance"]["what_if"]))
    _write_csv(out / "compliance_by_district.csv", ["table", "district", *cols],
               [[t, r["district"], *[r[c] for c in cols]] for t, c in tables for r in c["by_district"]])
    _write_csv(out / "compliance_by_grid.csv", ["table", "district", "grid", *cols],
               [[t, r["district"], r["grid"], *[r[c] for c in cols]] for t, c in tables for r in c["by_grid"]])
    targets = {str(r["ring"]): r for r in figures["rings"]["configured"]}
    _write_csv(out / "response_times.csv",
               ["incident_id", "district", "grid", "ring", "ring_name", "target_s", "seconds", "outcome"],
               [[r["incident_id"], r["district"], r["grid"], r["ring"], targets.get(str(r["ring"]), {}).get("name"),
                 targets.get(str(r["ring"]), {}).get("target_s"), r["seconds"], r["outcome"]]
                for r in figures["response_times"]["_rows"]])
    esc_cols = ["escalation_id", "incident_id", "district", "grid", "ring", "level", "reason", "raised_at",
                "deadline_at", "breached_by_s", "renotifications", "acked_at", "acked_by", "ack_s", "exercise"]
    _write_csv(out / "escalations.csv", esc_cols, [[r[c] for c in esc_cols] for r in figures["escalations"]["rows"]])
    drill_cols = ["district", "units", "issued", "results", *drillplan.OUTCOMES, "pass_rate", "never_drilled",
                  "failing_repeatedly"]
    _write_csv(out / "drills.csv", drill_cols, [[r[c] for c in drill_cols] for r in figures["drills"]["rows"]])
    seg_cols = ["ring", "segment", "n", "sum_s", "p50_s", "p90_s", "target_s", "within_target_pct"]
    _write_csv(out / "segments.csv", seg_cols, [[r[c] for c in seg_cols] for r in figures["segments"]])
    _write_csv(out / "breach_causes.csv", ["ring", "cause", "count"],
               [[r["ring"], r["cause"], r["count"]] for r in figures["breach_causes"]])
    _write_csv(out / "slowest.csv",
               ["rank", "incident_id", "district", "grid", "category", "severity", "reported_at", "first_on_scene_s",
                "status", "rings", "timeline"],
               [[i, s["incident_id"], s["district"], s["grid"], s["category"], s["severity"], s["reported_at"],
                 s["first_on_scene_s"], s["status"], " ".join(f"{k}:{v}" for k, v in s["rings"].items()),
                 "; ".join(f"+{e['t_s']:g}s {e['what']}" for e in s["timeline"])]
                for i, s in enumerate(figures["slowest"], start=1)])
    return [out / n for n in ("figures.json", "compliance_by_district.csv", "compliance_by_grid.csv",
                              "response_times.csv", "escalations.csv", "drills.csv", "slowest.csv")]

