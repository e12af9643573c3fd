"""kaifong.agents.flows.gauges — gauges sampled from Redis and the consumers, and the registry cache.

Layer: agents/flows. Every worker samples the same city-wide values of the shared state
(dashboards take max, not sum); consumer lag is per partition this worker owns.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kaifong.agents.store.incidents import IncidentStore
from kaifong.agents.store.timers import RingClock
from kaifong.agents.store.units import UnitStore
from kaifong.streams import metrics
from kaifong.streams.settings import Settings

log = logging.getLogger(__name__)

#: How often the registry's version is checked, and how many changes (registry events) make
#: the cache be read whole again once they have settled (a bulk load, not a few edits).
REWARM_CHECK_S = 2.0
REWARM_CHANGES = 100

#: (topic, partition) → messages behind the end.
Lag = dict[tuple[str, int], int]
Retrying = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


@dataclass
class Gauges:
    """Refreshes the gauges computed from Redis and the consumers' positions."""

    settings: Settings
    incidents: IncidentStore
    timers: RingClock
    units: UnitStore
    owned_partitions: Callable[[], set[int]]
    #: Each returns the lag of the partitions one consumer owns (Faust's, the firehose's).
    lag_sources: tuple[Callable[[], Awaitable[Lag]], ...]

    async def sample(self) -> None:
        """One round of every gauge."""
        opened, open_levels = await self.incidents.open_counts()
        for exercise, n in opened.items():
            metrics.INCIDENTS_OPEN.labels("true" if exercise else "false").set(n)
        levels: dict[str, int] = dict.fromkeys(("grid", "street", "district", "city"), 0)
        for level in open_levels:
            levels[level] = levels.get(level, 0) + 1
        for name, n in levels.items():
            metrics.ESCALATIONS_OPEN.labels(name).set(n)
        metrics.CLOCKS_PENDING.set(await self.timers.pending(self.owned_partitions()))
        lag: Lag = {}
        for source in self.lag_sources:
            lag.update(await source())
        for (topic, partition), n in lag.items():
            metrics.CONSUMER_LAG.labels(topic, str(partition)).set(n)
        known = set(self.settings.district_labels())
        totals: dict[tuple[str, str], int] = {}
        for (district, kind), n in (await self.units.available_counts()).items():
            key = (district if district in known else "other", kind)
            totals[key] = totals.get(key, 0) + n
        for (district, kind), n in totals.items():
            metrics.UNITS_AVAILABLE.labels(district, kind).set(n)
        metrics.REGISTRY_CACHED.set(self.units.cached_units())


async def registry_cache_loop(units: UnitStore, retrying: Retrying) -> None:
    """Keep every unit's registry entry in the cache, so decisions take no registry round
    trip: read at start, and again once a bulk change of the registry (a city loaded after
    the worker started) has settled. Entries carry a version, so the cache is never stale
    meanwhile; a few edited units are simply re-read by the next decision that meets them.

    After each full read the objects alive then (start-up and the cache: ~200,000) are
    frozen out of the garbage collector: a full collection walking them stalled the event
    loop for 50-120 ms, an incident's whole budget many times over (frozen objects are
    still freed by reference counting when dropped).
    """
    warmed: int | None = None  # the registry version the cache was last read whole at
    seen = None
    while True:
        version = await retrying("warm", units.registry_version)
        if warmed is None or (version - warmed >= REWARM_CHANGES and version == seen):
            n = await retrying("warm", units.warm_registry)
            warmed = version
            gc.freeze()
            log.info("registry of %d units cached (version %d)", n, version)
        seen = version
        await asyncio.sleep(REWARM_CHECK_S)
