"""Response segments read back from incident states (the state topic's per-unit milestone
times): the witness the live metrics and the report's replay are checked against."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

#: segment → (the time it ends at, the time it starts from), as kaifong_response_segment_seconds.
SEGMENT_TIMES = {"acknowledgement": ("acknowledged_at", "assigned_at"), "turnout": ("en_route_at", "assigned_at"),
                 "travel": ("on_scene_at", "en_route_at")}


def segments_from_states(states: Any) -> dict[tuple[str, int], list[float]]:
    """``(segment, ring)`` → seconds, over the real incidents among ``states``."""
    out: dict[tuple[str, int], list[float]] = defaultdict(list)
    for st in states:
        if st["exercise"]:
            continue
        for u in st["units"]:
            for segment, (end, start) in SEGMENT_TIMES.items():
                if u.get(end) and u.get(start):
                    span = (datetime.fromisoformat(u[end]) - datetime.fromisoformat(u[start])).total_seconds()
                    out[(segment, u["ring"])].append(max(0.0, span))
    return out
