"""kaifong.agents.report.run — one report run: read the range, replay, compute, write the files.

Layer: agents/report. What ``kaifong report`` and the daily report call (blocking).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kaifong.agents.report.figures import compute
from kaifong.agents.report.files import write_files
from kaifong.agents.report.inputs import Window
from kaifong.agents.report.read import read_inputs
from kaifong.agents.report.render import chromium_binary, render_html, render_pdf
from kaifong.streams.settings import Ring, Settings

#: Updates are read this long past ``to`` + the longest ring target (late-published milestones).
UPDATE_MARGIN_S = 300.0


@dataclass
class Result:
    """What a report run wrote."""

    out: Path
    figures: dict[str, Any]
    files: list[Path]


def generate(settings: Settings, window: Window, out: Path, *, what_if: tuple[Ring, ...] | None = None,
             pdf: bool = True, as_of: datetime | None = None) -> Result:
    """Read, replay and write a report for ``window`` to ``out`` (blocking)."""
    if pdf:
        chromium_binary()  # fail before minutes of reading, not after
    rings = settings.ring_table()
    longest = max(r.target_s for r in (*rings, *(what_if or ())))
    read_until = window.end + timedelta(seconds=longest + UPDATE_MARGIN_S)
    inputs = read_inputs(settings, window, read_until)
    figures = compute(inputs, rings, what_if=what_if, as_of=as_of or settings.clock()(),
                      ack_windows=settings.ack_window_table())
    figures["window"]["generated_at"] = datetime.now(UTC).isoformat()
    files = write_files(figures, out)
    html_path = out / "report.html"
    html_path.write_text(render_html(figures), "utf-8")
    files.append(html_path)
    if pdf:
        files.append(render_pdf(html_path, out / "report.pdf"))
    return Result(out, figures, files)

