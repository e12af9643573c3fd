"""kaifong.agents.web.drills_api — ``/api/drills``: order a manual pull test, the day's drills, pass rates.

Layer: agents/web. The logic is the drill flow's (:mod:`kaifong.agents.flows.drills`); here a
body becomes an answer and a :class:`~kaifong.agents.core.errors.Rejected` an error status. With
a seats file, a seat orders drills (dispatcher or admin) and sees them within its jurisdiction
only: the target of an order — a unit, a grid or a district — is placed with the unit registry
before the order goes to the flow (403 ``out_of_scope`` outside), and every order, done or
refused, is audited (:mod:`kaifong.agents.web.audit`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kaifong.agents.core.drillorders import parse_order
from kaifong.agents.core.drills import OUTCOMES
from kaifong.agents.core.errors import Rejected
from kaifong.agents.store.views import Views
from kaifong.agents.web.audit import Trail
from kaifong.agents.web.auth import forbidden, principal_of, role_refusal
from kaifong.agents.web.identity import Principal
from kaifong.agents.web.responses import json_response, read_limited, rejection, too_large
from kaifong.agents.web.services import DrillOrders

#: Largest drill order body (``{"unit_id": …, "channel": …}``).
ORDER_BODY_MAX = 4096
#: Where a unit is: (district, street, grid).
Place = tuple[str | None, str | None, str | None]


@dataclass(frozen=True)
class DrillsApi:
    """The three drill handlers."""

    orders: DrillOrders
    views: Views
    trail: Trail

    # -- where things are ------------------------------------------------------------------------
    async def unit_places(self, unit_ids: Iterable[str]) -> dict[str, Place]:
        """Registered units' (district, street, grid); unknown units absent."""
        regs = await self.views.registries(sorted(set(unit_ids)))
        return {uid: (r.get("district"), r.get("street"), r.get("grid")) for uid, r in regs.items()}

    async def grid_places(self, principal: Principal) -> dict[str, Place]:
        """Grid → (district, street, grid), read from the unit registry — the seat's districts'
        units for a district seat, else every configured district's (manual orders and these
        reads are rare: a scan is cheaper than an index kept in step with the registry)."""
        districts = (sorted(principal.seat.districts) if principal.seat is not None and principal.level == "district"
                     else [d for d in self.trail.settings.district_labels() if d != "other"])
        out: dict[str, Place] = {}
        for district in districts:
            for reg in (await self.views.registries(await self.views.district_unit_ids(district))).values():
                if reg.get("grid"):
                    out.setdefault(reg["grid"], (reg.get("district"), reg.get("street"), reg["grid"]))
        return out

    async def in_scope(self, principal: Principal, target: str, value: str) -> bool:
        """True when ``principal`` may drill the order's target (a unit, grid or district)."""
        if principal.everywhere:
            return True
        if target == "district":
            return principal.covers(value, None, None)
        if target == "grid":
            if principal.covers(None, None, value):
                return True  # one of the seat's own grids
            place = (await self.grid_places(principal)).get(value)
            return place is not None and principal.covers(*place)
        place = (await self.unit_places([value])).get(value)
        # An unknown unit is not in anybody's jurisdiction; the city is told it is unknown (404).
        return place is not None and principal.covers(*place)

    # -- handlers --------------------------------------------------------------------------------
    async def order(self, request: web.Request) -> web.Response:
        """``POST /api/drills``: order a manual pull test (``{"unit_id"|"grid"|"district": …,
        "channel": "radio"|"video"}``); 202 with the issued drill, 400/403/404/409/503 with reasons."""
        body = await read_limited(request, ORDER_BODY_MAX)
        if body is None:
            return too_large(ORDER_BODY_MAX)
        try:
            order = parse_order(body)
        except Rejected as exc:
            return rejection(exc)
        principal = principal_of(request)
        subject: dict[str, Any] = {"drill": {"target": order.target, "value": order.value, "channel": order.channel}}
        why, code = role_refusal(principal, "dispatcher", "ordering a drill"), "forbidden_role"
        if why is None and not await self.in_scope(principal, order.target, order.value):
            why, code = f"the {order.target} is outside this seat's jurisdiction", "out_of_scope"
        if why is not None:
            await self.trail.publish(request, principal, "drill_ordered", "refused", subject, reason=why)
            return forbidden(code, why)
        try:
            answer = await self.orders.order(body)
        except Rejected as exc:
            return rejection(exc)
        for drill in answer.get("drills", []):
            # The drill is issued: its record is the trail's, keyed by its id (a retry, the same id).
            await self.trail.publish(request, principal, "drill_ordered", "ok",
                                     {**subject, "drill_id": drill["drill_id"]}, discriminator=drill["drill_id"])
        return json_response(answer, status=202)

    async def listing(self, request: web.Request) -> web.Response:
        """``GET /api/drills[?date=YYYY-MM-DD]``: the day's drills and outcome counts (a seat's:
        those of its jurisdiction, counted again)."""
        try:
            answer = await self.orders.listing(request.query.get("date"))
        except Rejected as exc:
            return rejection(exc)
        principal = principal_of(request)
        if principal.everywhere:
            return json_response(answer)
        places = (await self.unit_places(d["unit_id"] for d in answer["drills"])
                  if principal.level != "district" else {})
        drills = [d for d in answer["drills"]
                  if principal.covers(d.get("district"), (places.get(d["unit_id"]) or (None, None, None))[1],
                                      d.get("grid"))]
        outcomes = dict.fromkeys(OUTCOMES, 0)
        for d in drills:
            if d.get("outcome") in outcomes:
                outcomes[d["outcome"]] += 1
        scored = sum(outcomes.values()) - outcomes["aborted"]
        return json_response({**answer, "drills": drills, "outcomes": outcomes, "total": sum(outcomes.values()),
                              "pass_rate": round(outcomes["pass"] / scored, 4) if scored else None,
                              "open": sum(1 for d in drills if d.get("outcome") is None)})

    async def rates(self, request: web.Request) -> web.Response:
        """``GET /api/drills/rates?by=district|grid``: drill pass rates per group (a seat's: the
        groups of its jurisdiction)."""
        try:
            answer = await self.orders.rates(request.query.get("by"))
        except Rejected as exc:
            return rejection(exc)
        principal = principal_of(request)
        if principal.everywhere:
            return json_response(answer)
        if answer["by"] == "district":
            groups = {name: g for name, g in answer["groups"].items() if principal.covers(name, None, None)}
        else:
            places = await self.grid_places(principal)
            groups = {name: g for name, g in answer["groups"].items()
                      if principal.covers(*places.get(name, (None, None, name)))}
        return json_response({**answer, "groups": groups})
