"""kaifong.agents.core.drillorders — what a manual drill order may say, and the drills as the API reports them.

Layer: agents/core (pure). A request that cannot be served is a
:class:`~kaifong.agents.core.errors.Rejected` carrying the code, message and reasons the API
answers with; only the web room turns its kind into an HTTP status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson

from kaifong.agents.core.drills import CHANNELS, OUTCOMES
from kaifong.agents.core.errors import Rejected

#: What a manual order may name (exactly one of them).
TARGETS = ("unit_id", "grid", "district")
#: Longest unit id, grid or district a manual order may name (the schemas' limit on ids).
MAX_ID = 128
#: Eligible units a manual order tries at most (the issue script may find each one taken).
MAX_TRIES = 20
#: Reasons a refused order lists at most.
_MAX_REASONS = 20
#: The groups pass rates are counted by.
RATE_GROUPS = ("district", "grid")
#: What a result adds to a drill of the day's listing.
_RESULT_FIELDS = ("outcome", "ack_s", "muster_s", "headcount", "decided_at")


@dataclass(frozen=True, slots=True)
class Order:
    """A valid manual order: drill one eligible unit of ``target`` (unit_id, grid or district) ``value``."""

    target: str
    value: str
    channel: str


def parse_order(body: bytes) -> Order:
    """The order in a ``POST /api/drills`` body, ``{"unit_id" | "grid" | "district": …, "channel": …}``;
    :class:`Rejected` (invalid) with every reason for a bad one."""
    try:
        parsed = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError:
        raise Rejected("invalid", "not_json", "the body must be JSON", reasons=["the body is not JSON"]) from None
    if not isinstance(parsed, dict):
        raise Rejected("invalid", "bad_body", "the body must be a JSON object",
                       reasons=['expected e.g. {"unit_id": "u-77", "channel": "radio"}'])
    reasons: list[str] = []
    unknown = sorted(set(parsed) - {*TARGETS, "channel"})
    if unknown:
        reasons.append(f"unknown fields: {', '.join(unknown)}")
    named = [k for k in TARGETS if k in parsed]
    if len(named) != 1:
        reasons.append("name exactly one of unit_id, grid, district")
    for k in named:
        v = parsed[k]
        if not isinstance(v, str) or not v.strip() or len(v) > MAX_ID:
            reasons.append(f"{k} must be a non-empty string of at most {MAX_ID} characters")
    channel = parsed.get("channel", "radio")
    if channel not in CHANNELS:
        reasons.append("channel must be radio or video")
    if reasons:
        raise Rejected("invalid", "bad_body", "; ".join(reasons), reasons=reasons)
    return Order(named[0], str(parsed[named[0]]), str(channel))


def unknown_target(order: Order) -> Rejected:
    """The order names a unit, grid or district with no registered unit (not_found)."""
    if order.target == "unit_id":
        return Rejected("not_found", "unknown_unit", f"no unit {order.value} is registered")
    if order.target == "district":
        return Rejected("not_found", "unknown_district", f"no unit is registered in district {order.value}")
    return Rejected("not_found", "unknown_grid", f"no unit is registered in grid {order.value}")


def no_eligible_unit(order: Order, why: Sequence[str]) -> Rejected:
    """No unit of the order's target could be drilled now (conflict), with the first reasons."""
    return Rejected("conflict", "no_eligible_unit", f"no eligible unit for {order.target} {order.value}",
                    reasons=list(why[:_MAX_REASONS]))


def not_published() -> Rejected:
    """The broker did not take the issued record (unavailable): retrying is safe, nothing is issued twice."""
    return Rejected("unavailable", "broker_unavailable", "the drill was not published; retrying is safe")


def listing_day(text: str | None, today: date) -> str:
    """The day a ``GET /api/drills[?date=YYYY-MM-DD]`` asks for (``today`` when it names none)."""
    if not text:
        return today.isoformat()
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise Rejected("invalid", "bad_query", "date must be YYYY-MM-DD") from None


def listing(day: str, drills: Sequence[tuple[Mapping[str, Any], Mapping[str, Any] | None]],
            counts: Mapping[str, int]) -> dict[str, Any]:
    """The day's drills (issue order; ``(record, result or None)``) and its outcome counts."""
    items = []
    for record, result in drills:
        item: dict[str, Any] = {**record, "outcome": None}
        if result is not None:
            item.update({k: result.get(k) for k in _RESULT_FIELDS})
        items.append(item)
    outcomes = dict.fromkeys(OUTCOMES, 0)
    outcomes.update(counts)
    scored = sum(outcomes.values()) - outcomes["aborted"]
    return {"date": day, "outcomes": outcomes, "total": sum(outcomes.values()),
            "pass_rate": round(outcomes["pass"] / scored, 4) if scored else None,
            "open": sum(1 for d in items if d["outcome"] is None), "drills": items}


def rates_group(by: str | None) -> str:
    """The group a ``GET /api/drills/rates?by=`` asks for, refused unless district or grid."""
    if by not in RATE_GROUPS:
        raise Rejected("invalid", "bad_query", "by must be district or grid")
    return by


def rates(by: str, counts: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """Pass rate per group (aborted drills excluded, as
    :func:`~kaifong.agents.core.drills.pass_rates` counts), with the outcome counts."""
    groups = {}
    for group in sorted(counts):
        c = {**dict.fromkeys(OUTCOMES, 0), **counts[group]}
        scored = sum(c.values()) - c.get("aborted", 0)
        groups[group] = {"pass_rate": round(c["pass"] / scored, 4) if scored else None, "drills": scored,
                         "outcomes": c}
    return {"by": by, "groups": groups}
