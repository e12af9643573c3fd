"""kaifong.agents.flows.drillschedule — the drill scheduler: one leader plans each day and issues its drills.

Layer: agents/flows. Who is drilled when is :class:`~kaifong.agents.core.drillplan.DrillPlanner`'s;
the plan, the planner's state and the lease live in :mod:`kaifong.agents.store.drills`.

**One scheduler.** Every worker runs the scheduler loop; only the holder of a Redis lease
(:class:`~kaifong.agents.store.lease.Lease`: taken for :data:`LEASE_MS`, renewed every
:data:`RENEW_S` by its holder, and acted on only while the holder's own view of it is unexpired)
plans and issues. A lease is not a lock: a holder that stalls past its expiry may act once more
while a successor already leads. That is safe enough here because nothing a leader does can be
done twice: a day is planned once (the plan is written in a transaction that fails when the day
is already planned, so both leaders issue from one stored plan; and only from a registry that
has stopped growing, :data:`REGISTRY_SETTLE_S`, or a worker started beside a city being loaded
would draw the whole day from its first units), a drill's id is a function of its unit and
planned time (:func:`~kaifong.agents.core.drillplan.drill_id`), and issuing is one script that
creates the drill only if its id is new and its unit has no open drill. Two leaders issuing the
same planned drill create it once; the loser at most re-sends the same record (same key, same
CloudEvents id), which consumers already treat as a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import orjson

from kaifong.agents.core.drillplan import DrillPlanner, UnitInfo, feasible_policy, fit
from kaifong.agents.core.drills import DrillPolicy, Issued, from_ms, local_day, to_ms
from kaifong.agents.flows.intake import INFRA_ERRORS
from kaifong.agents.store.drills import DrillStore
from kaifong.agents.store.lease import Lease
from kaifong.agents.store.units import READ_STEP
from kaifong.streams import metrics
from kaifong.streams.settings import Settings

log = logging.getLogger(__name__)

#: The scheduler lease: valid this long, renewed this often by its holder.
LEASE_MS = 15_000
RENEW_S = 5.0
#: The scheduler's tick: a planned drill goes out at most this late.
SCHEDULER_TICK_S = 0.5
#: A planned drill more than this late (the scheduler was down) is dropped, not issued in a
#: burst: its unit was not marked drilled, so it stays urgent for the next day's plan.
MAX_LATE_S = 600
#: A day is planned from a settled registry: not while it is empty, nor while units are still
#: being registered (a first start, a city being loaded beside the worker) — the draw would
#: cover only the units registered first, and the day is planned once. The number of
#: registered units must hold this long; after REGISTRY_SETTLE_MAX_S of steady growth the day
#: is planned from what there is.
REGISTRY_SETTLE_S = 5.0
REGISTRY_SETTLE_MAX_S = 300.0
#: The UNITS_NEVER_DRILLED gauge's refresh period, and how long the registry is cached for it.
COVERAGE_EVERY_S = 60.0
POPULATION_TTL_S = 300.0


def new_worker_id() -> str:
    """This process's name as a lease holder: host, pid and a random suffix."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


@dataclass
class DrillScheduler:
    """Holds or waits for the lease; while holding it, plans each day and issues due drills."""

    settings: Settings
    store: DrillStore
    #: Issues one drill: ``(unit_id, at, reason, channel)`` (the drill flow's one path).
    issue: Callable[..., Awaitable[Issued]]
    clock: Callable[[], datetime]
    policy: DrillPolicy
    ready: Callable[[], bool]
    worker_id: str
    leader: bool = field(default=False, init=False)
    _lease: Lease = field(init=False)
    _lease_until: float = field(default=0.0, init=False)
    _population: tuple[float, list[UnitInfo]] | None = field(default=None, init=False)
    _planned_day: date | None = field(default=None, init=False)
    _warned_rate: bool = field(default=False, init=False)
    #: The registry's size as last seen, since when (monotonic), and since when it is non-empty.
    _registry_seen: tuple[int, float, float] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._lease = self.store.lease(self.worker_id)

    async def run(self) -> None:
        """Hold or wait for the lease; while holding it, plan each day and issue due drills."""
        if not self.settings.drills_enabled:
            log.info("drill scheduler disabled (KAIFONG_DRILLS_ENABLED=false)")
            return
        while not self.ready():  # noqa: ASYNC110 - readiness is the worker's predicate, not an event
            await asyncio.sleep(0.2)
        last_renew = last_coverage = float("-inf")
        try:
            while True:
                try:
                    mono = time.monotonic()
                    if not self.leader or mono - last_renew >= RENEW_S:
                        await self._hold_lease()
                        last_renew = mono
                    if self.leader and time.monotonic() < self._lease_until:
                        now = self.clock()
                        await self.ensure_plan(now)
                        await self.issue_due(now)
                        if mono - last_coverage >= COVERAGE_EVERY_S:
                            last_coverage = mono
                            await self.coverage()
                except INFRA_ERRORS as exc:
                    metrics.REDIS_ERRORS.labels("drills").inc()
                    log.warning("drill scheduler: redis unavailable (%s); retrying", type(exc).__name__)
                except Exception:
                    metrics.INTERNAL_ERRORS.labels("drill_scheduler").inc()
                    log.exception("drill scheduler failed; going on")
                await asyncio.sleep(SCHEDULER_TICK_S)
        finally:
            await self.release_lease()

    async def _hold_lease(self) -> None:
        started = time.monotonic()
        if self.leader:
            if not await self._lease.renew(LEASE_MS):
                self.leader = False
                log.warning("drill scheduler: lost the lease; another worker schedules now")
        elif await self._lease.take(LEASE_MS):
            self.leader = True
            log.info("drill scheduler: this worker holds the lease and schedules drills")
        if self.leader:
            # Counted from before the call and a second short of Redis' expiry: this worker
            # stops acting before anyone else can have taken the lease.
            self._lease_until = started + LEASE_MS / 1000 - 1.0

    async def release_lease(self) -> None:
        """Give the lease up (on shutdown) so a successor does not wait for it to expire."""
        if not self.leader:
            return
        self.leader = False
        try:
            await asyncio.wait_for(self._lease.release(), 1.0)
        except Exception:  # noqa: BLE001 - shutting down: the lease expires by itself
            log.debug("drill scheduler: lease not released (it expires in %d ms)", LEASE_MS)

    # -- planning -------------------------------------------------------------------------
    async def ensure_plan(self, now: datetime) -> int:
        """Plan the local day of ``now`` unless it is planned; return the drills planned."""
        day = local_day(now, self.policy)
        if self._planned_day == day or not await self.registry_settled():
            return 0
        planned = await self.plan_day(day, now)
        self._planned_day = day
        return planned

    async def registry_settled(self) -> bool:
        """Whether the unit registry is non-empty and has stopped growing (see
        :data:`REGISTRY_SETTLE_S`): one count a scheduler tick until a day is planned."""
        count = await self.store.registered_count()
        mono = time.monotonic()
        seen, since, first = self._registry_seen or (-1, mono, mono)
        if count != seen:
            if count > 0 and seen <= 0:
                first = mono
                log.info("drill scheduler: %d units registered; planning once the registry settles", count)
            elif count == 0 and seen != 0:
                log.info("drill scheduler: no units registered; the day is planned once they are")
            since = mono
        self._registry_seen = (count, since, first)
        return count > 0 and (mono - since >= REGISTRY_SETTLE_S or mono - first >= REGISTRY_SETTLE_MAX_S)

    async def plan_day(self, day: date, now: datetime) -> int:
        """Plan local ``day`` once: draw it, store it in the plan, mark the day planned.

        Only ``out_of_service`` units are left out here: dispatched, off duty or drilling are
        states of the moment, checked when each drill is due (and a unit skipped then stays
        urgent, because only issued drills are marked).
        """
        if await self.store.is_planned(day.isoformat()):
            return 0
        units = await self.population(refresh=True)
        state = await self.store.planner_state()
        planner = await asyncio.to_thread(self.planner, units, state)
        ids = [u.unit_id for u in units]
        out_of_service = {uid for uid, status in zip(ids, await self.store.live_field(ids, "status"), strict=True)
                          if status == "out_of_service"}
        drawn = await asyncio.to_thread(planner.plan_day, day, self.rng(day), lambda u: u not in out_of_service)
        plan = fit(drawn, day, now, self.policy, self.settings.drill_spread_s)
        epoch = planner.epoch.isoformat() if planner.epoch is not None else None
        if not await self.store.save_plan(day.isoformat(), [(u, to_ms(t)) for t, u in plan], self.worker_id, epoch):
            return 0
        if plan:
            log.info("drills planned for %s: %d of %d units, %s to %s", day, len(plan), len(units),
                     plan[0][0].isoformat(), plan[-1][0].isoformat())
        else:
            log.info("drills planned for %s: none (%d units)", day, len(units))
        return len(plan)

    async def issue_due(self, now: datetime) -> int:
        """Issue the planned drills that are due; return how many were issued."""
        now_ms = to_ms(now)
        issued = 0
        for planned in await self.store.due_planned(now_ms):
            due = planned.due_ms
            if now_ms - due > MAX_LATE_S * 1000:
                log.warning("drill of unit %s planned %s dropped: %ds late (the unit stays urgent)", planned.unit_id,
                            from_ms(due).isoformat(), (now_ms - due) // 1000)
            else:
                result = await self.issue(planned.unit_id, from_ms(due), "scheduled")
                if result.status in ("busy", "unknown"):
                    log.info("scheduled drill skipped: %s (it stays urgent)", result.why)
                issued += result.status == "issued"
            await self.store.drop_planned(planned)
        return issued

    async def coverage(self) -> dict[str, Any]:
        """Refresh UNITS_NEVER_DRILLED (units with no drill within the coverage window)."""
        units = await self.population()
        state = await self.store.planner_state()
        today = local_day(self.clock(), self.policy)
        # In a thread, like the population's parsing: not on the incident flow's event loop.
        report = await asyncio.to_thread(lambda: self.planner(units, state).coverage_report(today))
        metrics.UNITS_NEVER_DRILLED.set(report["not_drilled_in_window"])
        return report

    async def population(self, refresh: bool = False) -> list[UnitInfo]:
        """Every registered unit, sorted by id (the plan depends on the order), cached a while.

        Read and parsed ``READ_STEP`` units a step: ~23,000 in steps of 1,000 held up the
        incidents arriving meanwhile for ~6 ms a step.
        """
        cached = self._population
        if cached is not None and not refresh and time.monotonic() - cached[0] < POPULATION_TTL_S:
            return cached[1]
        ids = await self.store.unit_ids()
        units: list[UnitInfo] = []
        for i in range(0, len(ids), READ_STEP):
            chunk = ids[i:i + READ_STEP]
            for uid, raw in zip(chunk, await self.store.registry_entries(chunk), strict=True):
                if raw is None:
                    continue
                try:
                    units.append(UnitInfo.from_registry(orjson.loads(raw)))
                except (KeyError, TypeError, ValueError):
                    log.warning("unit %s: registry entry unusable for drills; skipped", uid)
        self._population = (time.monotonic(), units)
        return units

    def planner(self, units: list[UnitInfo], state: Mapping[str | bytes, str | bytes]) -> DrillPlanner:
        """The planner over ``units`` from its stored state. A registry that outgrew the
        configured rate (rate × coverage days < units) is drilled at the lowest rate that keeps
        the coverage promise instead, loudly: the promise is the programme's point."""
        policy = feasible_policy(self.policy, len(units))
        if policy is not self.policy and not self._warned_rate:
            log.error("%d units cannot all be drilled every %d days at %d drills a day; drilling %d a day "
                      "(raise KAIFONG_DRILLS_PER_DAY)", len(units), self.policy.coverage_days,
                      self.policy.daily_rate, policy.daily_rate)
            self._warned_rate = True
        return DrillPlanner.from_state(units, state, policy)

    def rng(self, day: date) -> random.Random:
        """The day's random draw: seeded by KAIFONG_DRILL_SEED and the day, else fresh."""
        seed = self.settings.drill_seed
        return random.Random(f"{seed}:{day.isoformat()}") if seed else random.Random()
