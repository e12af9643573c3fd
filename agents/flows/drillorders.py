"""kaifong.agents.flows.drillorders — the operators' drills: manual orders, the day's drills, pass rates.

Layer: agents/flows. What a request may say and how the answer reads are
:mod:`kaifong.agents.core.drillorders`'; a request that cannot be served raises
:class:`~kaifong.agents.core.errors.Rejected` (the web room maps its kind to a status: 400,
404, 409, 503). A manual order is issued through the same path as a scheduled drill.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kaifong.agents.core import drillorders as orders
from kaifong.agents.core.drills import DrillPolicy, Issued, busy_reason, from_ms, local_day, to_ms
from kaifong.agents.flows.intake import INFRA_ERRORS
from kaifong.agents.store.drills import DrillStore

log = logging.getLogger(__name__)


@dataclass
class DrillOrders:
    """``POST /api/drills``, ``GET /api/drills`` and ``GET /api/drills/rates``, without the HTTP."""

    store: DrillStore
    #: Issues one drill: ``(unit_id, at, reason, channel)`` (the drill flow's one path).
    issue: Callable[..., Awaitable[Issued]]
    clock: Callable[[], datetime]
    policy: DrillPolicy

    async def order(self, body: bytes) -> dict[str, Any]:
        """Order a manual drill: ``{"unit_id" | "grid" | "district": …, "channel": "radio"|"video"}``.

        Returns ``{"drills": [the issued drill]}``. Rejected: invalid with every reason for a bad
        body; not_found for an unknown unit, grid or district; conflict when no unit of the
        target is eligible; unavailable when the broker did not take the record (retrying is
        safe: nothing is issued twice).
        """
        order = orders.parse_order(body)
        candidates = await self._candidates(order)
        if not candidates:
            raise orders.unknown_target(order)
        eligible, busy = await self._prefilter(candidates)
        random.Random().shuffle(eligible)  # a fair pick, not a secret
        why = busy
        try:
            # The prefilter is a hint; the issue script decides atomically (a unit may be taken
            # meanwhile), so try the next candidate when it says busy.
            for unit_id in eligible[:orders.MAX_TRIES]:
                result = await self.issue(unit_id, from_ms(to_ms(self.clock())), "manual", order.channel)
                if result.record is not None:
                    return {"drills": [result.record]}
                why = [*why, result.why]
        except INFRA_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - a producer failure: tell the caller to retry
            log.warning("manual drill: not published (%s)", type(exc).__name__)
            raise orders.not_published() from None
        raise orders.no_eligible_unit(order, why)

    async def _candidates(self, order: orders.Order) -> list[str]:
        if order.target == "unit_id":
            return [order.value] if await self.store.registered(order.value) else []
        if order.target == "district":
            return await self.store.district_units(order.value)
        return await self.store.grid_units(order.value)

    async def _prefilter(self, unit_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        eligible: list[str] = []
        busy: list[str] = []
        for uid, (status, reserved, open_drill) in zip(unit_ids, await self.store.eligibility(unit_ids),
                                                       strict=True):
            why = busy_reason(uid, status, reserved, open_drill)
            if why is None:
                eligible.append(uid)
            else:
                busy.append(why)
        return eligible, busy

    async def listing(self, day_text: str | None = None) -> dict[str, Any]:
        """The day's drills (issue order) and outcome counts (``day_text`` YYYY-MM-DD, else today)."""
        day = orders.listing_day(day_text, local_day(self.clock(), self.policy))
        return orders.listing(day, await self.store.day_drills(day), await self.store.day_counts(day))

    async def rates(self, by: str | None) -> dict[str, Any]:
        """Pass rate per district or grid (aborted drills excluded), with the outcome counts."""
        group = orders.rates_group(by)
        return orders.rates(group, await self.store.rates(group))
