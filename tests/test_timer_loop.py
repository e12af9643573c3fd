"""The partition-owned timer loop (kaifong.agents.flows.timers) on a real Valkey, no broker.

One loop class serves the ring timers (concurrent, a timer meeting Redis down goes back on its
due time) and the drills' decision timers (one by one, left in flight and re-adopted, a failed
tick counted and survived); both are driven here tick by tick.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from kaifong.agents.flows.timers import TimerLoop
from kaifong.agents.store.timers import RingClock
from kaifong.streams import metrics

NOW = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def count(metric: Any, label: str) -> float:
    return float(metric.labels(label)._value.get())



def loop(clock: RingClock, fire: Any, **kw: Any) -> TimerLoop:
    return TimerLoop("test clock", clock, lambda: {0}, lambda: NOW, fire, 0.01, **kw)


def test_ring_mode_fires_concurrently_and_reschedules_on_redis_errors(with_store_redis: Any) -> None:
    async def body(r: aioredis.Redis) -> None:
        clock = RingClock(r, "tl1.")
        fired: list[str] = []

        async def fire(partition: int, timer: str, due_ms: int) -> None:
            fired.append(timer)
            if timer == "d|bug|":
                raise ValueError("a bug")
            if timer == "d|down|":
                raise RedisConnectionError("down")

        await clock.schedule(0, [("d|ok|", NOW_MS - 5), ("d|bug|", NOW_MS - 4), ("d|down|", NOW_MS - 3),
                                 ("d|later|", NOW_MS + 60_000)])
        bugs = count(metrics.INTERNAL_ERRORS, "tl_ring")
        tl = loop(clock, fire, redis_label="tl_ring_redis", error_label="tl_ring", concurrent=True, reschedule=True)
        await tl.tick()
        assert sorted(fired) == ["d|bug|", "d|down|", "d|ok|"]
        assert count(metrics.INTERNAL_ERRORS, "tl_ring") == bugs + 1
        # Done: the fired and the failed; the one that met Redis down is due again at its time.
        assert await r.zrange(clock.due_key(0), 0, -1, withscores=True) == [
            (b"d|down|", NOW_MS - 3), (b"d|later|", NOW_MS + 60_000)]
        assert await r.hkeys(clock.inflight_key(0)) == [b"d|down|"]  # type: ignore[misc]

    with_store_redis(body)


def test_drill_mode_leaves_a_timer_in_flight_and_readopts_it(with_store_redis: Any) -> None:
    async def body(r: aioredis.Redis) -> None:
        clock = RingClock(r, "tl2.")
        fired: list[str] = []
        swept: list[set[int]] = []
        down = True

        async def fire(partition: int, timer: str, due_ms: int) -> None:
            fired.append(timer)
            if down:
                raise RedisConnectionError("down")

        async def each_tick(owned: set[int]) -> None:
            swept.append(owned)

        # A timer left in flight by the partition's previous owner is adopted on the first tick.
        await r.hset(clock.inflight_key(0), "x|orphan|", NOW_MS - 10)  # type: ignore[misc]
        outages = count(metrics.REDIS_ERRORS, "tl_drill_redis")
        tl = loop(clock, fire, redis_label="tl_drill_redis", error_label="tl_drill", survive=True,
                  each_tick=each_tick)
        await tl.tick()
        assert fired == ["x|orphan|"] and swept == []  # the tick ended at the Redis error
        assert count(metrics.REDIS_ERRORS, "tl_drill_redis") == outages + 1
        assert await r.hkeys(clock.inflight_key(0)) == [b"x|orphan|"]  # type: ignore[misc]
        down = False
        await tl.tick()  # Redis is back: the in-flight timer is adopted again and fired
        assert fired == ["x|orphan|", "x|orphan|"] and swept == [{0}]
        assert not await r.exists(clock.inflight_key(0), clock.due_key(0))

    with_store_redis(body)


def test_a_failed_tick_ends_the_loop_unless_it_survives(with_store_redis: Any) -> None:
    async def body(r: aioredis.Redis) -> None:
        clock = RingClock(r, "tl3.")

        async def fire(partition: int, timer: str, due_ms: int) -> None:
            return None

        async def broken(owned: set[int]) -> None:
            raise KeyError("a bug in the tick")

        with pytest.raises(KeyError):
            await loop(clock, fire, redis_label="tl3r", error_label="tl3", each_tick=broken).tick()
        failures = count(metrics.INTERNAL_ERRORS, "tl3")
        await loop(clock, fire, redis_label="tl3r", error_label="tl3", each_tick=broken, survive=True).tick()
        assert count(metrics.INTERNAL_ERRORS, "tl3") == failures + 1

    with_store_redis(body)
