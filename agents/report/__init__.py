"""kaifong.agents.report — after-action reports: ring compliance, response times, escalations, drills.

Layer: agents/report. Imports core, store, streams and schemas; never flows, web, tools or the
worker. ``kaifong report --from T1 --to T2 --out DIR`` (and the worker's daily report) read the
incident, assignment, escalation, state and drill topics for a time range
(:mod:`~kaifong.agents.report.read`), **replay every incident through the same pure ring-clock
functions the worker runs** (:mod:`~kaifong.agents.report.incident_replay`), compute the figures
(:mod:`~kaifong.agents.report.figures`) and write ``report.html`` (self-contained: inline CSS and
SVG), ``report.pdf`` (the HTML printed by headless Debian ``chromium``), ``figures.json`` and
CSV files (:mod:`~kaifong.agents.report.render`, :mod:`~kaifong.agents.report.files`).
:mod:`~kaifong.agents.report.daily` makes the report of each day once.

Why a replay and not the worker's counters or the compacted state topic: the counters have no
incident, grid or time range, and the state topic keeps only each incident's latest version;
the input topics keep every event for 90 days. An incident belongs to the report when its
``reported_at`` is in ``[from, to)``; its updates are read up to ``to`` + the longest ring
target + :data:`~kaifong.agents.report.run.UPDATE_MARGIN_S`.

This package re-exports the names its callers use (``kaifong.agents.cli``, the worker, tests).
"""

from __future__ import annotations

from kaifong.agents.report.daily import daily_report, daily_report_once, report_cron, reports_root, yesterday
from kaifong.agents.report.figures import compute
from kaifong.agents.report.files import write_files
from kaifong.agents.report.incident_replay import Replayed, replay
from kaifong.agents.report.inputs import CITY_TZ, Inputs, ReportError, Window, day_window, load_rings, parse_when
from kaifong.agents.report.read import read_inputs, select_inputs, start_offsets, to_wall
from kaifong.agents.report.render import render_html, render_pdf
from kaifong.agents.report.run import Result, generate

__all__ = [
    "CITY_TZ",
    "Inputs",
    "Replayed",
    "ReportError",
    "Result",
    "Window",
    "compute",
    "daily_report",
    "daily_report_once",
    "day_window",
    "generate",
    "load_rings",
    "parse_when",
    "read_inputs",
    "render_html",
    "render_pdf",
    "replay",
    "report_cron",
    "reports_root",
    "select_inputs",
    "start_offsets",
    "to_wall",
    "write_files",
    "yesterday",
]
