"""kaifong.agents.core.units — the rule of which dispatchable pool a unit is in, as a pure function.

Layer: agents/core (pure).
"""

from __future__ import annotations

from typing import Literal

#: Redis' geo index holds latitudes within ±85.05112878° (Web Mercator) only; a unit beyond is
#: kept but never dispatchable by distance.
GEO_LAT_MAX = 85.05112878

Pool = Literal["avail", "drill"]


def geo_pool(kind: str | None, status: str | None, reserved: str | None, lat: float | None,  # noqa: PLR0917
             lon: float | None, stale: bool) -> Pool | None:  # the Lua function's arguments, in its order
    """The geo index pool a unit belongs in: ``avail`` (real incidents), ``drill`` (exercises) or None.

    The same rule as ``geo_set_of`` in the store's Lua library ``lua/lib/dispatchable.lua``
    (which keeps the index itself; tests/test_store.py checks the two agree): a unit is
    dispatchable when it has a kind and a position, is neither stale nor reserved, its latitude
    is one the geo index holds, and its status is ``available`` (pool ``avail``) or
    ``drilling`` (pool ``drill``). The arguments are the fields of the unit's live hash, None
    for a field the hash lacks (as Lua sees it: any value present, even empty, counts).

    >>> [geo_pool("post", status, None, 22.3, 114.2, False) for status in ("available", "drilling", "on_scene")]
    ['avail', 'drill', None]
    >>> geo_pool("post", "available", "inc-1", 22.3, 114.2, False), geo_pool("post", "available", None, 89.0, 0, False)
    (None, None)
    """
    if kind is None or lat is None or lon is None or stale or reserved is not None:
        return None
    if abs(lat) > GEO_LAT_MAX:
        return None
    if status == "available":
        return "avail"
    if status == "drilling":
        return "drill"
    return None
