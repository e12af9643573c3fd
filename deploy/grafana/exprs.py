"""Every PromQL expression of a kaifong Grafana dashboard, ready to send to Prometheus.

Stdlib only: imported by tests (``tests/test_prometheus_rules.py`` and live-Prometheus tests)
through ``importlib.util.spec_from_file_location``, never installed.

    python deploy/grafana/exprs.py deploy/grafana/dashboards/*.json   # prints them
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Grafana variables and what stands for them outside Grafana: every district, a 5 min window.
_SUBSTITUTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\$\{district\}|\$district\b"), ".*"),
    (re.compile(r"\$\{__rate_interval\}|\$__rate_interval\b"), "5m"),
    (re.compile(r"\$\{__range\}|\$__range\b"), "5m"),
)


def substitute(expr: str) -> str:
    """``expr`` with the dashboard variables replaced (``$district`` → ``.*``, windows → ``5m``)."""
    for pattern, value in _SUBSTITUTIONS:
        expr = pattern.sub(value, expr)
    return expr


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        # Collapsed rows keep their panels inside the row.
        yield from _panels(panel.get("panels", []))


def exprs(path: str | Path) -> list[tuple[str, str, str]]:
    """``(dashboard file name, panel title, expr)`` for every target of every panel in ``path``.

    Targets without an ``expr`` are reported with an empty one (a test can then fail on them);
    row panels have no targets and yield nothing.
    """
    path = Path(path)
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    return [(path.name, str(panel.get("title", "")), substitute(str(target.get("expr", ""))))
            for panel in _panels(dashboard.get("panels", []))
            for target in panel.get("targets", [])]


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        for dash, title, expr in exprs(arg):
            print(f"{dash}\t{title}\t{expr}")  # noqa: T201 - a command-line helper prints
