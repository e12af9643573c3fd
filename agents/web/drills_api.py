"""kaifong.agents.web.drills_api — ``/api/drills``: order a manual pull test, the day's drills, pass rates.

Layer: agents/web. The logic is the drill flow's (:mod:`kaifong.agents.flows.drills`); here a
body becomes an answer and a :class:`~kaifong.agents.core.errors.Rejected` an error status.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from kaifong.agents.core.errors import Rejected
from kaifong.agents.web.responses import json_response, read_limited, rejection, too_large
from kaifong.agents.web.services import DrillOrders

#: Largest drill order body (``{"unit_id": …, "channel": …}``).
ORDER_BODY_MAX = 4096


@dataclass(frozen=True)
class DrillsApi:
    """The three drill handlers."""

    orders: DrillOrders

    async def order(self, request: web.Request) -> web.Response:
        """``POST /api/drills``: order a manual pull test (``{"unit_id"|"grid"|"district": …,
        "channel": "radio"|"video"}``); 202 with the issued drill, 400/404/409/503 with reasons."""
        body = await read_limited(request, ORDER_BODY_MAX)
        if body is None:
            return too_large(ORDER_BODY_MAX)
        try:
            return json_response(await self.orders.order(body), status=202)
        except Rejected as exc:
            return rejection(exc)

    async def listing(self, request: web.Request) -> web.Response:
        """``GET /api/drills[?date=YYYY-MM-DD]``: the day's drills and outcome counts."""
        try:
            return json_response(await self.orders.listing(request.query.get("date")))
        except Rejected as exc:
            return rejection(exc)

    async def rates(self, request: web.Request) -> web.Response:
        """``GET /api/drills/rates?by=district|grid``: drill pass rates per group."""
        try:
            return json_response(await self.orders.rates(request.query.get("by")))
        except Rejected as exc:
            return rejection(exc)
