"""kaifong.agents.report.charts — the report's inline SVG charts and the text formats they share with the HTML.

Layer: agents/report (pure: figures in, markup out).
"""

from __future__ import annotations

import html
import math
from typing import Any

from kaifong.agents.core import clock
from kaifong.agents.report.inputs import CITY_TZ
from kaifong.streams.city import DISTRICTS


def esc(value: Any) -> str:
    """``value`` as HTML text (None is empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def when(value: str | None) -> str:
    """An event time as city-local wall-clock text (inputs may carry any offset)."""
    if not value:
        return "—"
    return esc(clock.parse_time(value).astimezone(CITY_TZ).strftime("%Y-%m-%d %H:%M:%S"))


def fmt_pct(value: float | None) -> str:
    """A percentage as text (— when there is none)."""
    return "—" if value is None else f"{value:.1f} %"


def fmt_s(value: float | None) -> str:
    """A duration as seconds, or minutes from ten minutes on (— when there is none)."""
    if value is None:
        return "—"
    return f"{value:.0f} s" if value < 600 else f"{value / 60:.1f} min"


def svg_compliance(real: list[dict[str, Any]], alt: list[dict[str, Any]] | None) -> str:
    """Horizontal bars: share of rings met, per ring (real, and what-if beside it)."""
    rows: list[tuple[dict[str, Any] | None, dict[str, Any] | None]] = [
        (r, next((a for a in alt or [] if a["ring"] == r["ring"]), None)) for r in real]
    if alt:
        rows += [(None, a) for a in alt if a["ring"] not in {r["ring"] for r in real}]
    bar_h, gap, left, width = 14, 10, 150, 420
    per = bar_h * (2 if alt else 1) + gap
    height = 30 + per * len(rows)
    parts = [f'<svg class="chart" role="img" aria-label="ring compliance" width="{left + width + 70}" '
             f'height="{height}" viewBox="0 0 {left + width + 70} {height}">']
    for x in (0, 25, 50, 75, 100):
        gx = left + width * x / 100
        parts.append(f'<line x1="{gx}" y1="18" x2="{gx}" y2="{height - 4}" class="grid"/>'
                     f'<text x="{gx}" y="12" class="axis" text-anchor="middle">{x}%</text>')
    for i, (r, a) in enumerate(rows):
        y = 22 + i * per
        label = r or a
        assert label is not None
        parts.append(f'<text x="{left - 6}" y="{y + bar_h - 3}" text-anchor="end" class="label">'
                     f'{esc(label["ring"])} · {esc(label["name"])} ({fmt_s(label["target_s"])})</text>')
        for j, (row, cls) in enumerate(((r, "real"), (a, "whatif")) if alt else ((r, "real"),)):
            if row is None:
                continue
            pct = row["met_pct"]
            w = width * (pct or 0) / 100
            yy = y + j * bar_h
            parts.append(f'<rect x="{left}" y="{yy}" width="{width}" height="{bar_h - 2}" class="track"/>'
                         f'<rect x="{left}" y="{yy}" width="{w:.1f}" height="{bar_h - 2}" class="bar-{cls}"/>'
                         f'<text x="{left + width + 4}" y="{yy + bar_h - 3}" class="value">{fmt_pct(pct)}'
                         f' ({row["met"]}/{row["total"]})</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_ecdf(ring: dict[str, Any]) -> str:
    """Empirical CDF of one ring's response times, the target marked."""
    values: list[float] = ring["values"]
    target = float(ring["target_s"])
    w, h, left, bottom, top = 330, 190, 38, 28, 22
    xmax = max([target * 1.25, *(values or [0])]) or 1.0
    pw, ph = w - left - 10, h - top - bottom

    def x(v: float) -> float:
        return left + pw * min(v, xmax) / xmax

    def y(p: float) -> float:
        return top + ph * (1 - p)

    parts = [f'<svg class="chart" role="img" aria-label="response times ring {ring["ring"]}" width="{w}" '
             f'height="{h}" viewBox="0 0 {w} {h}">',
             f'<text x="{left}" y="14" class="title">ring {ring["ring"]} · {esc(ring["name"])} — n={ring["n"]}</text>']
    parts.extend(f'<line x1="{left}" y1="{y(p)}" x2="{w - 10}" y2="{y(p)}" class="grid"/>'
                 f'<text x="{left - 4}" y="{y(p) + 4}" class="axis" text-anchor="end">{int(p * 100)}%</text>'
                 for p in (0, 0.5, 1))
    for k in range(5):
        v = xmax * k / 4
        parts.append(f'<text x="{x(v)}" y="{h - 10}" class="axis" text-anchor="middle">{fmt_s(v)}</text>')
    if values:
        path = [f"M{x(0):.1f},{y(0):.1f}"]
        for i, v in enumerate(values):
            path.append(f"H{x(v):.1f}V{y((i + 1) / len(values)):.1f}")
        path.append(f"H{x(xmax):.1f}")
        parts.append(f'<path d="{"".join(path)}" class="ecdf"/>')
    else:
        parts.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" class="axis" text-anchor="middle">'
                     "no arrivals measured</text>")
    share = f" · {100 * ring['within_target'] / ring['n']:.0f}% within" if ring["n"] else ""
    parts.append(f'<line x1="{x(target):.1f}" y1="{top}" x2="{x(target):.1f}" y2="{top + ph}" class="target"/>'
                 f'<text x="{x(target) + 3:.1f}" y="{top + 10}" class="target-label">target {fmt_s(target)}'
                 f"{share}</text></svg>")
    return "".join(parts)


def svg_timeline(s: dict[str, Any]) -> str:
    """One incident's timeline: ring deadlines dashed, events as marks."""
    w, h, left = 660, 64, 10
    events = s["timeline"]
    tmax = max([1.0, *(float(e["t_s"]) for e in events), *(float(t) for t in s["targets"].values())]) * 1.05
    pw = w - 2 * left

    def x(t: float) -> float:
        return left + pw * max(0.0, t) / tmax

    parts = [f'<svg class="chart timeline" role="img" aria-label="timeline {esc(s["incident_id"])}" width="{w}" '
             f'height="{h}" viewBox="0 0 {w} {h}">',
             f'<line x1="{left}" y1="30" x2="{w - left}" y2="30" class="axis-line"/>']
    for ring, target in sorted(s["targets"].items()):
        state = s["rings"].get(ring, "pending")
        parts.append(f'<line x1="{x(float(target)):.1f}" y1="12" x2="{x(float(target)):.1f}" y2="48" '
                     f'class="deadline dl-{esc(state)}"/><text x="{x(float(target)):.1f}" y="10" class="axis" '
                     f'text-anchor="middle">R{esc(ring)}</text>')
    marks = {"reported": "rep", "assigned": "asg", "acknowledged": "ack", "en_route": "enr", "on_scene": "ons",
             "resolved": "res", "cancelled": "res", "escalation": "esc", "ack": "eack", "met": "met",
             "breached": "brc"}
    for e in events:
        cls = marks.get(e["kind"], "other")
        parts.append(f'<circle cx="{x(e["t_s"]):.1f}" cy="30" r="4" class="mk mk-{cls}"><title>'
                     f'+{e["t_s"]:g} s {esc(e["what"])}</title></circle>')
    for k in range(5):
        t = tmax * k / 4
        parts.append(f'<text x="{x(t):.1f}" y="60" class="axis" text-anchor="middle">+{fmt_s(t)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_drills(rows: list[dict[str, Any]]) -> str:
    """Pass rate per district (aborted drills excluded), bars."""
    rated = [r for r in rows if r["pass_rate"] is not None]
    if not rated:
        return '<p class="muted">No drill results in this range.</p>'
    bar_h, left, width = 16, 110, 400
    height = 24 + (bar_h + 6) * len(rated)
    parts = [f'<svg class="chart" role="img" aria-label="drill pass rates" width="{left + width + 90}" '
             f'height="{height}" viewBox="0 0 {left + width + 90} {height}">']
    for i, r in enumerate(rated):
        y = 20 + i * (bar_h + 6)
        w = width * r["pass_rate"] / 100
        parts.append(f'<text x="{left - 6}" y="{y + bar_h - 4}" text-anchor="end" class="label">{esc(r["district"])}'
                     f'</text><rect x="{left}" y="{y}" width="{width}" height="{bar_h}" class="track"/>'
                     f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" class="bar-real"/>'
                     f'<text x="{left + width + 4}" y="{y + bar_h - 4}" class="value">{r["pass_rate"]:.1f} % of '
                     f'{r["results"] - r.get("aborted", 0)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_map(incidents: list[dict[str, Any]]) -> str:
    """District outlines (kaifong.streams.city.DISTRICTS) and incidents coloured by ring outcome."""
    lats = [p[0] for d in DISTRICTS for p in d.outline]
    lons = [p[1] for d in DISTRICTS for p in d.outline]
    lat0, lat1, lon0, lon1 = min(lats), max(lats), min(lons), max(lons)
    k = math.cos(math.radians((lat0 + lat1) / 2))  # equirectangular: a degree of longitude is shorter
    width = 430.0  # with its legend, the map and the method section share a page
    scale = width / ((lon1 - lon0) * k)
    height = (lat1 - lat0) * scale

    def xy(lat: float, lon: float) -> tuple[float, float]:
        return 10 + (lon - lon0) * k * scale, 10 + (lat1 - lat) * scale

    parts = [f'<svg class="chart map" role="img" aria-label="incident map" width="{width + 20:.0f}" '
             f'height="{height + 20:.0f}" viewBox="0 0 {width + 20:.0f} {height + 20:.0f}">']
    for d in DISTRICTS:
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in (xy(lat, lon) for lat, lon in d.outline))
        parts.append(f'<polygon points="{pts}" class="district"><title>{esc(d.name)} {esc(d.name_en)}</title>'
                     "</polygon>")
    for d in DISTRICTS:
        cx, cy = xy(*d.centre)
        # The old core's districts are small and close: smaller names keep them legible.
        size = 8 if d.radius_km < 6 else 11
        parts.append(f'<text x="{cx:.1f}" y="{cy:.1f}" class="district-name" font-size="{size}" '
                     f'text-anchor="middle">{esc(d.name)}</text>')
    order = {"open": 0, "exercise": 1, "met": 2, "breached": 3}  # breaches drawn last: on top
    for inc in sorted(incidents, key=lambda i: order.get(i["outcome"], 0)):
        loc = inc.get("location") or {}
        if "lat" not in loc or "lon" not in loc:
            continue
        cx, cy = xy(float(loc["lat"]), float(loc["lon"]))
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.6" class="inc inc-{esc(inc["outcome"])}">'
                     f'<title>{esc(inc["incident_id"])} {esc(inc["outcome"])}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)

