"""kaifong.agents.flows.timers — the partition-owned timer loop: claim what is due, fire it, mark it done.

Layer: agents/flows. One loop class for every :class:`~kaifong.agents.store.timers.RingClock`
(the ring deadlines of the incidents, the drills' decision timers). Each tick it claims the due
timers of the input partitions this worker owns and fires them through an injected callable.
On gaining a partition it first puts that partition's in-flight timers back (their previous
owner died or gave the partition up mid-fire), so a deadline fires even across a crash; after a
Redis outage it does the same for every owned partition. Firing is idempotent in the handlers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from kaifong.agents.flows.intake import INFRA_ERRORS
from kaifong.agents.store.timers import RingClock
from kaifong.streams import metrics

log = logging.getLogger(__name__)

#: Fires one claimed timer: ``(partition, member, due_ms)``.
Fire = Callable[[int, str, int], Awaitable[object]]


@dataclass
class TimerLoop:
    """Fires the due timers of one clock on the partitions this worker owns, every ``tick_s``.

    How a failure is met is the clock's to say, because the two clocks have always differed:

    - a timer whose handler fails with a bug is counted (``INTERNAL_ERRORS{error_label}``),
      logged and marked done — a timer that can never fire must not fire forever;
    - one whose handler finds Redis down is either put back on its due time at once
      (``reschedule``) or left in flight for the loop to re-adopt once Redis is back;
    - a tick that finds Redis down counts ``REDIS_ERRORS{redis_label}`` and re-adopts every
      owned partition's in-flight timers next time; a tick failing otherwise ends the loop
      unless ``survive`` says to count it (``INTERNAL_ERRORS{error_label}``) and go on.
    """

    #: In logs: "ring clock", "drill clock".
    name: str
    timers: RingClock
    owned_partitions: Callable[[], set[int]]
    clock: Callable[[], datetime]
    fire: Fire
    tick_s: float
    redis_label: str
    error_label: str
    #: Fire a partition's claimed timers at once (each handler serialises per entity itself).
    concurrent: bool = False
    reschedule: bool = False
    survive: bool = False
    #: Run after the timers of every tick, inside its error handling (with the owned partitions).
    each_tick: Callable[[set[int]], Awaitable[object]] | None = None
    _owned_before: set[int] = field(default_factory=set, init=False)

    async def run(self) -> None:
        """Tick forever."""
        while True:
            await asyncio.sleep(self.tick_s)
            await self.tick()

    async def tick(self) -> None:
        """Adopt the in-flight timers of newly owned partitions, then fire what is due."""
        owned = self.owned_partitions()
        try:
            for p in sorted(owned - self._owned_before):
                adopted = await self.timers.reclaim(p)
                if adopted:
                    log.warning("%s: partition %d: %d timers were in flight with its previous owner; "
                                "firing them now", self.name, p, adopted)
            self._owned_before = owned
            now_ms = int(self.clock().timestamp() * 1000)
            for p in sorted(owned):
                claimed = await self.timers.claim(p, now_ms)
                if self.concurrent:
                    if claimed:
                        await asyncio.gather(*(self._fire(p, m, due) for m, due in claimed))
                else:
                    for m, due in claimed:
                        await self._fire(p, m, due)
            if self.each_tick is not None:
                await self.each_tick(owned)
        except INFRA_ERRORS as exc:
            metrics.REDIS_ERRORS.labels(self.redis_label).inc()
            log.warning("%s: redis unavailable (%s); retrying", self.name, type(exc).__name__)
            self._owned_before = set()  # re-adopt in-flight timers once Redis is back
        except Exception:
            if not self.survive:
                raise
            metrics.INTERNAL_ERRORS.labels(self.error_label).inc()
            log.exception("%s failed; going on", self.name)

    async def _fire(self, partition: int, timer: str, due_ms: int) -> None:
        try:
            await self.fire(partition, timer, due_ms)
        except INFRA_ERRORS:
            if not self.reschedule:
                raise  # the timer stays in flight; the loop re-adopts it once Redis is back
            await self.timers.schedule(partition, [(timer, due_ms)])  # try again next tick
            return
        except Exception:
            metrics.INTERNAL_ERRORS.labels(self.error_label).inc()
            # Timer members are kinds and ids, never personal data.
            log.exception("%s: timer %s failed", self.name, timer)
        await self.timers.done(partition, timer)
