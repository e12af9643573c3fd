"""kaifong.agents.report.render — the report as one self-contained HTML page, and its PDF print.

Layer: agents/report. ``report.html`` carries inline CSS and SVG (no external resource);
``report.pdf`` is that page printed by headless Debian ``chromium``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from kaifong.agents.core import drillplan
from kaifong.agents.report.charts import (
    esc,
    fmt_pct,
    fmt_s,
    svg_compliance,
    svg_drills,
    svg_ecdf,
    svg_map,
    svg_timeline,
    when,
)
from kaifong.agents.report.figures import REPEAT_FAILS, pct
from kaifong.agents.report.inputs import ReportError

#: Incident-level outcome classes (map colours and the slowest list).
OUTCOME_COLOURS = {"breached": "#c62828", "met": "#2e7d32", "open": "#9e9e9e", "exercise": "#1565c0"}
CJK_FONTS = ('"Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Micro Hei", '
             '"PingFang SC", "Microsoft YaHei", "Noto Serif CJK SC", sans-serif')

CSS = f"""
@page {{ size: A4; margin: 14mm 12mm; }}
* {{ box-sizing: border-box; }}
body {{ font-family: {CJK_FONTS}; color: #1f2328; font-size: 12px; line-height: 1.45; margin: 0 auto;
       max-width: 720px; padding: 8px; -webkit-print-color-adjust: exact; print-color-adjust: exact; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }}
h2 {{ font-size: 16px; border-bottom: 2px solid #1f2328; padding-bottom: 2px; margin: 18px 0 8px; }}
h3 {{ font-size: 13px; margin: 12px 0 4px; }}
section.page {{ break-before: page; }}
table {{ border-collapse: collapse; width: 100%; margin: 4px 0 10px; font-size: 11px; }}
th, td {{ border-bottom: 1px solid #d0d7de; padding: 2px 5px; text-align: right; }}
th {{ background: #f3f4f6; }}
th:first-child, td:first-child, td.l {{ text-align: left; }}
tr {{ break-inside: avoid; }}
.muted {{ color: #6e7781; }}
.kpis {{ display: flex; gap: 8px; flex-wrap: wrap; margin: 8px 0; }}
.kpi {{ border: 1px solid #d0d7de; border-radius: 6px; padding: 6px 10px; min-width: 120px; }}
.kpi b {{ display: block; font-size: 18px; }}
.good {{ color: #2e7d32; }} .bad {{ color: #c62828; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 6px; }}
.incident {{ break-inside: avoid; margin-bottom: 10px; }}
.incident ol {{ margin: 2px 0; padding-left: 18px; columns: 2; font-size: 10.5px; }}
svg.chart {{ font-family: {CJK_FONTS}; display: block; max-width: 100%; height: auto; }}
svg .grid {{ stroke: #e5e7eb; }} svg .axis {{ font-size: 9px; fill: #6e7781; }}
svg .label, svg .value {{ font-size: 10px; fill: #1f2328; }} svg .title {{ font-size: 11px; font-weight: bold; }}
svg .track {{ fill: #f3f4f6; }} svg .bar-real {{ fill: #2e7d32; }} svg .bar-whatif {{ fill: #ef6c00; }}
svg .ecdf {{ fill: none; stroke: #1565c0; stroke-width: 1.6; }}
svg .target {{ stroke: #c62828; stroke-dasharray: 4 3; stroke-width: 1.4; }}
svg .target-label {{ font-size: 9px; fill: #c62828; }}
svg .axis-line {{ stroke: #6e7781; }} svg .deadline {{ stroke-dasharray: 3 3; stroke-width: 1.2; }}
svg .dl-met {{ stroke: #2e7d32; }} svg .dl-breached {{ stroke: #c62828; }}
svg .dl-stopped, svg .dl-pending {{ stroke: #9e9e9e; }}
svg .mk {{ stroke: #fff; stroke-width: .8; }} svg .mk-rep {{ fill: #1f2328; }} svg .mk-asg {{ fill: #6e7781; }}
svg .mk-ack, svg .mk-enr {{ fill: #1565c0; }} svg .mk-ons, svg .mk-met {{ fill: #2e7d32; }}
svg .mk-brc {{ fill: #c62828; }} svg .mk-esc {{ fill: #ef6c00; }} svg .mk-eack {{ fill: #8e24aa; }}
svg .mk-res {{ fill: #000; }}
svg .district {{ fill: #eef2f5; stroke: #8c959f; stroke-width: 1; }}
svg .district-name {{ fill: #57606a; }}
svg .inc {{ stroke: #fff; stroke-width: .6; fill-opacity: .85; }}
svg .inc-met {{ fill: {OUTCOME_COLOURS["met"]}; }} svg .inc-breached {{ fill: {OUTCOME_COLOURS["breached"]}; }}
svg .inc-open {{ fill: {OUTCOME_COLOURS["open"]}; }}
svg .inc-exercise {{ fill: none; stroke: {OUTCOME_COLOURS["exercise"]}; stroke-width: 1.2; }}
.legend span {{ display: inline-block; margin-right: 12px; }}
.dot {{ display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 4px; }}
.swatch-real {{ background: #2e7d32; }} .swatch-whatif {{ background: #ef6c00; }}
"""


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td{" class=l" if i < left else ""}>{c}</td>' for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body or ''}</tbody></table>"


def _pct_cell(pct: float | None) -> str:
    if pct is None:
        return "—"
    cls = "good" if pct >= 90 else "bad" if pct < 75 else ""
    return f'<span class="{cls}">{pct:.1f} %</span>'


def _compliance_matrix(rows: list[dict[str, Any]], key: str, rings: list[dict[str, Any]]) -> str:
    """District × ring: met/total and the share met."""
    groups: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        groups[r[key]][r["ring"]] = r
    header = [key, *[f"R{r['ring']} {r['name']}" for r in rings]]
    body = []
    for g in sorted(groups):
        cells = [esc(g)]
        for ring in rings:
            cell = groups[g].get(ring["ring"])
            cells.append("—" if cell is None or not cell["total"]
                         else f"{cell['met']}/{cell['total']} · {_pct_cell(cell['met_pct'])}")
        body.append(cells)
    return _table(header, body)


def render_html(figures: dict[str, Any]) -> str:
    """The report as one self-contained HTML document (inline CSS and SVG, no external resource)."""
    win = figures["window"]
    rings = figures["rings"]["configured"]
    comp = figures["compliance"]
    real_rows, alt = comp["real"], comp["what_if"]
    total_met = sum(r["met"] for r in real_rows["by_ring"])
    total_decided = sum(r["total"] for r in real_rows["by_ring"])
    escalations, drills = figures["escalations"], figures["drills"]
    scope = f" · district {esc(win['district'])}" if win["district"] else ""
    out = [f'<!doctype html><html lang="zh-Hans"><head><meta charset="utf-8"><title>kaifong after-action report '
           f'{when(win["from"])} – {when(win["to"])}</title><style>{CSS}</style></head><body>',
           f"<h1>After-action report · 事后评估报告</h1><p class=muted>{when(win['from'])} → {when(win['to'])}"
           f" (UTC+8){scope} · rings decided up to {when(win['horizon'])}</p>",
           "<section><h2>Summary</h2><div class=kpis>",
           f"<div class=kpi>incidents<b>{figures['incidents']['real']}</b>real</div>",
           f"<div class=kpi>exercises<b>{figures['incidents']['exercise']}</b>not in compliance</div>",
           f"<div class=kpi>rings met<b>{fmt_pct(pct(total_met, total_decided - total_met))}</b>"
           f"{total_met} of {total_decided} decided</div>",
           f"<div class=kpi>escalations<b>{escalations['real']}</b>{escalations['exercise']} in exercises</div>",
           f"<div class=kpi>drills<b>{drills['results']}</b>results · {drills['issued']} issued</div></div>",
           "<p>Ring table in force: "
           + ", ".join(f"R{r['ring']} {esc(r['name'])} {fmt_s(r['target_s'])}" for r in rings)
           + (f"; {figures['rings']['incidents_with_recorded_table']} incident(s) replayed with the table recorded in "
              "their state." if figures["rings"]["incidents_with_recorded_table"] else ".") + "</p>",
           "<p class=muted>Every incident reported in the range was replayed through the worker's ring-clock "
           "functions in event-time order; exercise incidents are counted apart.</p></section>"]
    # -- compliance
    out.append("<section><h2>Ring compliance</h2>")
    if alt:
        out.append("<p class=legend><span><i class='dot swatch-real'></i>real ring table</span><span><i class='dot "
                   "swatch-whatif'></i>what-if: " + ", ".join(f"R{r['ring']} {esc(r['name'])} {fmt_s(r['target_s'])}"
                                                             for r in figures["rings"]["what_if"]) + "</span></p>")
    out.append(svg_compliance(real_rows["by_ring"], alt["by_ring"] if alt else None))
    header = ["ring", "target", "met", "breached", "met %"]
    if alt:
        header += ["what-if target", "met", "breached", "met %", "Δ met"]
    body = []
    alt_by = {r["ring"]: r for r in alt["by_ring"]} if alt else {}
    for r in real_rows["by_ring"]:
        row = [f"R{r['ring']} {esc(r['name'])}", fmt_s(r["target_s"]), r["met"], r["breached"], _pct_cell(r["met_pct"])]
        if alt:
            a = alt_by.get(r["ring"])
            row += ([fmt_s(a["target_s"]), a["met"], a["breached"], _pct_cell(a["met_pct"]),
                     f"{a['met'] - r['met']:+d}"] if a else ["—"] * 5)
        body.append(row)
    out.append(_table(header, body))
    out.append("<p class=muted>Met % of the rings decided (met or breached; stopped and pending rings are not "
               "counted): <span class=good>green</span> from 90 %, <span class=bad>red</span> under 75 %.</p>")
    out.append("<h3>By district</h3>" + _compliance_matrix(real_rows["by_district"], "district", rings))
    if alt:
        out.append("<h3>By district — what-if</h3>" + _compliance_matrix(alt["by_district"], "district",
                                                                         figures["rings"]["what_if"]))
    worst = sorted((r for r in real_rows["by_grid"] if r["total"]), key=lambda r: (r["met_pct"], -r["total"]))[:15]
    out.append("<h3>Grids with the lowest compliance</h3>" + _table(
        ["grid", "district", "ring", "met", "breached", "met %"],
        [[esc(r["grid"]), esc(r["district"]), r["ring"], r["met"], r["breached"], _pct_cell(r["met_pct"])]
         for r in worst],
        left=2) + "<p class=muted>Every grid: compliance_by_grid.csv.</p>")
    if figures["incidents"]["exercise"]:
        out.append("<h3>Exercise incidents (not in compliance)</h3>" + _table(
            ["ring", "met", "breached", "stopped"],
            [[f"R{r['ring']}", r["met"], r["breached"], r["stopped"]] for r in comp["exercise"]]))
    out.append("</section>")
    # -- response times
    rt = figures["response_times"]
    out.append("<section class=page><h2>Response times</h2><p class=muted>Reported → first unit of the ring on "
               "scene, event time; the dashed line is the ring's target.</p><div class=charts>")
    out += [svg_ecdf(rt[str(r["ring"])]) for r in rings]
    out.append("</div>" + _table(["ring", "n", "within target", "p50", "p90", "max"],
                                  [[f"R{r['ring']} {esc(r['name'])}", rt[str(r['ring'])]["n"],
                                    rt[str(r["ring"])]["within_target"], fmt_s(rt[str(r["ring"])]["p50"]),
                                    fmt_s(rt[str(r["ring"])]["p90"]), fmt_s(rt[str(r["ring"])]["max"])]
                                   for r in rings]) + "</section>")
    # -- response segments and breach causes
    out.append("<section><h2>Response segments</h2><p class=muted>Per assigned unit, event time: acknowledgement "
               "(assigned → acknowledged), turnout (assigned → en route), travel (en route → on scene); held "
               "against 15 s, 60 s (NFPA 1710 turnout) and 240 s (travel), 90% objective.</p>")
    out.append(_table(["ring", "segment", "n", "p50", "p90", "target", "within target"],
                      [[f"R{r['ring']}", esc(r["segment"]), r["n"], fmt_s(r["p50_s"]), fmt_s(r["p90_s"]),
                        fmt_s(r["target_s"]), f"{r['within_target_pct']:.1f}%"] for r in figures["segments"]], left=2))
    out.append("<h3>Breaches by cause</h3>" + _table(
        ["ring", "cause", "breaches"],
        [[f"R{r['ring']}", esc(r["cause"].replace("_", " ")), r["count"]] for r in figures["breach_causes"]], left=2)
        + "</section>")
    # -- slowest
    out.append("<section class=page><h2>Slowest incidents</h2><p class=muted>Ordered by how long the scene "
               "waited for its first unit (when nobody came: until the incident was closed). Dashed lines: ring "
               "deadlines (green met, red breached, grey stopped or pending).</p>")
    for i, s in enumerate(figures["slowest"], start=1):
        rings_txt = " ".join(f"R{k} {v}" for k, v in s["rings"].items())
        first = (f"first on scene after {fmt_s(s['first_on_scene_s'])}" if s["first_on_scene_s"] is not None
                 else f"nobody on scene in {fmt_s(s['waited_s'])}")
        out.append(f"<div class=incident><h3>{i}. {esc(s['incident_id'])} · {esc(s['district'])} {esc(s['grid'])} · "
                   f"{esc(s['category'])} sev {esc(s['severity'])} · {first}</h3>"
                   f"<p class=muted>{when(s['reported_at'])} · {esc(s['status'])} · {esc(rings_txt)}</p>"
                   + svg_timeline(s) + "<ol>" + "".join(f"<li>+{fmt_s(e['t_s'])} {esc(e['what'])}</li>"
                                                          for e in s["timeline"]) + "</ol></div>")
    if not figures["slowest"]:
        out.append("<p class=muted>No incidents in this range.</p>")
    out.append("</section>")
    # -- escalations
    out.append("<section class=page><h2>Escalations</h2>")
    out.append(_table(["level", "reason", "raised"], [[esc(r["level"]), esc(r["reason"]), r["count"]]
                                                       for r in escalations["by_level_reason"]], left=2))
    out.append("<h3>Acknowledgement</h3>" + _table(
        ["level", "raised", "acknowledged", "not acknowledged", "p50", "p90", "max"],
        [[esc(r["level"]), r["raised"], r["acknowledged"], r["unacknowledged"], fmt_s(r["p50_s"]),
          fmt_s(r["p90_s"]), fmt_s(r["max_s"])] for r in escalations["ack_by_level"]]))
    out.append(f"<p class=muted>{escalations['exercise']} exercise escalation(s) are not counted above.</p></section>")
    # -- drills
    out.append("<section><h2>Drills</h2>" + svg_drills(drills["rows"]))
    out.append(_table(["district", "units", "issued", "results", *drillplan.OUTCOMES, "pass rate", "never drilled",
                       "failing repeatedly"],
                      [[esc(r["district"]), r["units"], r["issued"], r["results"], *[r[o] for o in drillplan.OUTCOMES],
                        fmt_pct(r["pass_rate"]), r["never_drilled"], r["failing_repeatedly"]]
                       for r in drills["rows"]]))
    never = drills["never_drilled"]
    if drills["registry_units"]:
        out.append(f"<p>{len(never)} of {drills['registry_units']} registered unit(s) had no drill in this range"
                   + (": " + ", ".join(esc(u) for u in never[:20]) + (" …" if len(never) > 20 else "") if never else "")
                   + " (all of them in figures.json).</p>")
    else:
        out.append("<p class=muted>The unit registry topic is empty: units never drilled cannot be listed.</p>")
    if drills["failing_repeatedly"]:
        out.append(f"<h3>Units failing repeatedly (≥ {REPEAT_FAILS} failed or unanswered)</h3>" + _table(
            ["unit", "district", "failures", "outcomes", "last issued"],
            [[esc(f["unit_id"]), esc(f["district"]), f["failures"], esc(", ".join(f["outcomes"])),
              when(f["last_issued_at"])] for f in drills["failing_repeatedly"]], left=2))
    out.append("</section>")
    # -- map
    counts = Counter(i["outcome"] for i in figures["per_incident"])
    out.append("<section class=page><h2>Incident map</h2><p class=legend>" + "".join(
        f"<span><i class=dot style='background:{OUTCOME_COLOURS[k]}'></i>{label} ({counts.get(k, 0)})</span>"
        for k, label in (("met", "all decided rings met"), ("breached", "a ring breached"),
                         ("open", "stopped / pending"), ("exercise", "exercise")))
               + "</p>" + svg_map(figures["per_incident"]) + "</section>")
    # -- method
    src = figures["sources"]
    out.append("<section><h2>Method and data quality</h2><p>Read " + f"{src['records_read']:,}" + " records; "
               f"{src['invalid_input_records']} invalid input record(s) skipped (the worker dead-letters them); "
               f"{figures['incidents']['refused_updates']} update(s) refused by the clock.</p>")
    out.append(_table(["topic", "start offsets"], [[esc(t), esc(", ".join(f"{k}: {v}" for k, v in m.items()))]
                                                   for t, m in src["topics"].items()]))
    dis = figures["disagreements"]
    out.append(f"<p>{len(dis)} ring(s) where the worker's live state differs from the event-time replay "
               "(an arrival delivered after its deadline timer fired counts as a breach live).</p>")
    if dis:
        out.append(_table(["incident", "ring", "report", "live"], [[esc(d["incident_id"]), d["ring"], esc(d["report"]),
                                                                   esc(d["live"])] for d in dis[:30]]))
    out.append("</section></body></html>")
    return "".join(out)


def chromium_binary() -> str:
    """Path of the headless browser that prints the PDF, or :class:`ReportError`."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise ReportError("chromium is not installed, so report.pdf cannot be printed: install Debian's `chromium` "
                      "package (apt-get install chromium), or pass --no-pdf for HTML, JSON and CSV only")


def render_pdf(html_path: Path, pdf_path: Path, timeout_s: float = 120.0) -> Path:
    """Print ``html_path`` to ``pdf_path`` with headless chromium (local file: no network)."""
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="kaifong-chromium-") as profile:
        # A private profile: concurrent runs (and the console tests) never share a lock.
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-extensions",
               f"--user-data-dir={profile}", "--no-pdf-header-footer", "--print-to-pdf-no-header",
               f"--print-to-pdf={pdf_path}", html_path.resolve().as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise ReportError(f"chromium did not print {html_path} within {timeout_s:g}s") from None
    if proc.returncode != 0 or not pdf_path.exists() or pdf_path.stat().st_size == 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise ReportError(f"chromium failed to print the PDF (exit {proc.returncode}): " + " | ".join(tail))
    return pdf_path

