"""kaifong.agents.store.drills — pull-test drills in Redis: issue, answers, decide, the day's plan, the listings.

Layer: agents/store. Per drill (keys in :mod:`kaifong.agents.store.keys`): :func:`keys.drill`
holds ``doc`` (the issue facts, written once: what makes issuing idempotent), ``issued_sent``,
``aborted_at``, ``result`` (the decided flag, written once, so a result is decided and published
once) and ``result_sent``; :func:`keys.drill_responses` the first answer of each stage. Per unit:
:func:`keys.unit_drill` its open drill (at most one), :func:`keys.unit_drill_results` its last
results, :data:`keys.READINESS` its score. Per day: :func:`keys.drills_today` (outcome counts)
and :func:`keys.drills_of_day` (ids by issue time); :func:`keys.drill_rates` per district and grid.

The scheduler's state is scoped by topic prefix (like the ring clocks), so two deployments, or
two test runs, sharing a Redis never share a plan: :func:`keys.drills_plan` (planned drills by
issue time), :func:`keys.drills_planned` (that day is planned), :func:`keys.drills_planner` (the
planner's :meth:`~kaifong.agents.core.drillplan.DrillPlanner.export_state`) and the lease
(:func:`keys.drills_leader`, :mod:`kaifong.agents.store.lease`). Decision timers are a
:class:`~kaifong.agents.store.timers.RingClock` of their own (:data:`keys.DRILL_TIMERS`).

Issuing (``lua/drill_issue.lua``) and deciding (``lua/drill_decide.lua``) are one script each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from kaifong.agents.store import keys
from kaifong.agents.store.lease import Lease
from kaifong.agents.store.scripts import Scripts
from kaifong.agents.store.timers import RingClock, member
from kaifong.agents.store.units import READ_STEP

#: How long drill documents, answers, day lists and day counts are kept.
KEEP_S = 8 * 24 * 3600
#: Results kept per unit for its readiness score.
UNIT_RESULTS_KEEP = 20
#: How long the "day is planned" mark is kept.
PLANNED_KEEP_S = 3 * 86400
#: Drills a day's listing reads at most.
DAY_LIST_MAX = 5000


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def decision_timer(drill_id: str) -> str:
    """The member of a drill's decision timer (kind ``x``)."""
    return member("x", drill_id)


@dataclass(frozen=True)
class StoredDrill:
    """What is stored of one drill."""

    #: ``{"record": the drill-issued record, "partition": its timer's partition, "day": local issue day}``.
    doc: dict[str, Any]
    issued_sent: bool
    result: dict[str, Any] | None
    result_sent: bool
    aborted_at: str | None
    #: The unit's last drill before this one, as the planner state had it ('' = none).
    prev_last: str
    #: Stage → the first answer of that stage (``{"at", "event_id", "headcount"?}``).
    answers: dict[str, dict[str, Any]]

    @property
    def record(self) -> dict[str, Any]:
        """The ``drill-issued`` record."""
        return dict(self.doc["record"])

    @property
    def partition(self) -> int:
        """The partition the drill's responses go to, which shards its decision timer."""
        return int(self.doc["partition"])


@dataclass(frozen=True)
class Planned:
    """A planned drill: its plan entry, unit and issue time (ms)."""

    entry: str
    unit_id: str
    due_ms: int


@dataclass
class DrillStore:
    """Every Redis read and write of the drills, for one topic prefix."""

    redis: aioredis.Redis
    prefix: str
    scripts: Scripts | None = None
    #: The decision timers.
    timers: RingClock = field(init=False)
    _run: Scripts = field(init=False)

    def __post_init__(self) -> None:
        self._run = self.scripts or Scripts(self.redis)
        self.timers = RingClock(self.redis, keys.DRILL_TIMERS + self.prefix, self._run)

    def lease(self, holder: str) -> Lease:
        """The scheduler's lease, as ``holder`` holds or wants it."""
        return Lease(self.redis, keys.drills_leader(self.prefix), holder, self._run)

    # -- issuing ------------------------------------------------------------------------------
    async def registry(self, unit_id: str) -> dict[str, Any] | None:
        """The unit's registry entry (None when it is not registered)."""
        raw = await self.redis.get(keys.unit_registry(unit_id))
        return None if raw is None else dict(orjson.loads(raw))

    async def issue(self, record: dict[str, Any], *, partition: int, day: str, issued_ms: int, decide_ms: int,
                    issued: str, open_ttl_s: int) -> str:
        """Create the drill of ``record`` unless its id exists or its unit is busy (one script):
        ``new``, ``dup`` or ``busy:<why>``. Creating it marks the unit's open drill, lists it on
        its day and its partition, sets its decision timer to ``decide_ms`` and records the issue
        (``issued``, RFC 3339 UTC) as the unit's last drill in the planner state."""
        drill_id, unit_id = record["drill_id"], record["unit_id"]
        doc = {"record": record, "partition": partition, "day": day}
        verdict = await self._run.run(
            "drill_issue",
            [keys.drill(drill_id), keys.unit_drill(unit_id), keys.unit_live(unit_id),
             keys.drills_open(self.prefix, partition), self.timers.due_key(partition), keys.drills_of_day(day),
             keys.drills_planner(self.prefix)],
            [drill_id, orjson.dumps(doc), issued_ms, decide_ms, decision_timer(drill_id), unit_id, issued,
             open_ttl_s, KEEP_S])
        return _text(verdict) or ""

    async def issued(self, drill_id: str) -> tuple[dict[str, Any] | None, bool]:
        """The stored ``drill-issued`` record (None once expired) and whether it was sent."""
        raw_doc, sent = await self.redis.hmget(keys.drill(drill_id), ["doc", "issued_sent"])  # type: ignore[misc]
        return (None if raw_doc is None else orjson.loads(raw_doc)["record"]), sent is not None

    async def mark_issued_sent(self, drill_id: str) -> None:
        """The broker has the drill's ``drill-issued`` record."""
        await self.redis.hset(keys.drill(drill_id), "issued_sent", "1")  # type: ignore[misc]

    async def mark_result_sent(self, drill_id: str) -> None:
        """The broker has the drill's ``drill-result`` record."""
        await self.redis.hset(keys.drill(drill_id), "result_sent", "1")  # type: ignore[misc]

    # -- answers and decisions ----------------------------------------------------------------
    async def record(self, drill_id: str) -> dict[str, Any] | None:
        """The drill's ``drill-issued`` record (None if it was never issued or has expired)."""
        raw = await self.redis.hget(keys.drill(drill_id), "doc")  # type: ignore[misc]
        return None if raw is None else dict(orjson.loads(raw)["record"])

    async def add_answer(self, drill_id: str, stage: str, answer: dict[str, Any]) -> bool:
        """Keep ``answer`` as the stage's answer unless it has one; True when it is the first."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(keys.drill_responses(drill_id), stage, orjson.dumps(answer))
        pipe.expire(keys.drill_responses(drill_id), KEEP_S)
        first, _ = await pipe.execute()
        return bool(first)

    async def load(self, drill_id: str) -> StoredDrill | None:
        """The drill and its answers in one round trip (None once expired)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.drill(drill_id))
        pipe.hgetall(keys.drill_responses(drill_id))
        raw_h, raw_answers = await pipe.execute()
        h: dict[str, bytes] = {k.decode(): v for k, v in raw_h.items()}
        if "doc" not in h:
            return None
        return StoredDrill(doc=orjson.loads(h["doc"]), issued_sent="issued_sent" in h,
                           result=orjson.loads(h["result"]) if "result" in h else None,
                           result_sent="result_sent" in h, aborted_at=_text(h.get("aborted_at")),
                           prev_last=_text(h.get("prev_last")) or "",
                           answers={k.decode(): orjson.loads(v) for k, v in raw_answers.items()})

    async def reservation(self, unit_id: str) -> tuple[str | None, int | None]:
        """The incident a unit is reserved for (None: not reserved) and since when (ms, if known)."""
        by, ms = await self.redis.hmget(keys.unit_live(unit_id), ["reserved_by", "reserved_ms"])  # type: ignore[misc]
        return _text(by), (int(ms) if ms else None)

    async def mark_aborted(self, drill_id: str, at: str) -> None:
        """Record the drill's abort time (the first one stays)."""
        await self.redis.hsetnx(keys.drill(drill_id), "aborted_at", at)  # type: ignore[misc]

    async def decide(self, drill: StoredDrill, result: dict[str, Any], entry: dict[str, Any] | None,
                     issued: str) -> bool:
        """Store the drill's ``result`` once, in one script: count it on its day and its district
        and grid, keep ``entry`` in the unit's results (None: not, an aborted drill), close the
        unit's open drill; an aborted drill gives the planner the unit's previous drill back
        (if ``issued``, the planner state's value of this one, is still its last). True when this
        call decided it, False when it was decided already."""
        record = drill.record
        drill_id, unit_id = record["drill_id"], record["unit_id"]
        won = await self._run.run(
            "drill_decide",
            [keys.drill(drill_id), keys.drills_today(drill.doc["day"]), keys.unit_drill_results(unit_id),
             keys.drill_rates("district"), keys.drill_rates("grid"), keys.unit_drill(unit_id),
             keys.drills_open(self.prefix, drill.partition), keys.drills_planner(self.prefix)],
            [orjson.dumps(result), result["outcome"], orjson.dumps(entry) if entry is not None else b"",
             record.get("district") or "", record.get("grid") or "", UNIT_RESULTS_KEEP, KEEP_S, drill_id, unit_id,
             issued, drill.prev_last])
        return bool(won)

    async def unit_results(self, unit_id: str) -> list[dict[str, Any]]:
        """The unit's last results, newest first (``{"at", "outcome"}``)."""
        raw: list[bytes] = await self.redis.lrange(keys.unit_drill_results(unit_id), 0, -1)  # type: ignore[misc,assignment]
        return [orjson.loads(e) for e in raw]

    async def add_unit_result(self, unit_id: str, entry: dict[str, Any]) -> None:
        """Keep ``entry`` (``{"at", "outcome"}``) first in the unit's results, as a drill's would
        be: a no-show on a real incident counts in its readiness like an unanswered drill."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(keys.unit_drill_results(unit_id), orjson.dumps(entry))
        pipe.ltrim(keys.unit_drill_results(unit_id), 0, UNIT_RESULTS_KEEP - 1)
        await pipe.execute()

    async def set_readiness(self, unit_id: str, score: float) -> None:
        """The unit's readiness score (what the matcher may weigh)."""
        await self.redis.hset(keys.READINESS, unit_id, f"{score:.4f}")  # type: ignore[misc]

    async def open_drill_of(self, unit_ids: Sequence[str]) -> list[str | None]:
        """Each unit's open drill id (None: none)."""
        return [_text(raw) for raw in await self.redis.mget([keys.unit_drill(u) for u in unit_ids])]

    async def open_drills(self, partition: int) -> list[tuple[str, str]]:
        """The open drills of a partition: ``(drill_id, unit_id)``."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.drills_open(self.prefix, partition))  # type: ignore[misc,assignment]
        return [(d.decode(), u.decode()) for d, u in raw.items()]

    async def reserved(self, unit_ids: Sequence[str]) -> list[bool]:
        """Whether each unit is reserved for an incident (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for unit_id in unit_ids:
            pipe.hexists(keys.unit_live(unit_id), "reserved_by")
        return [bool(r) for r in await pipe.execute()]

    # -- the registry as the scheduler and the orders read it ---------------------------------
    async def registered_count(self) -> int:
        """How many units are registered."""
        return int(await self.redis.scard(keys.ALL_UNITS))  # type: ignore[misc]

    async def unit_ids(self) -> list[str]:
        """Every registered unit id, sorted."""
        members: set[bytes] = await self.redis.smembers(keys.ALL_UNITS)  # type: ignore[misc,assignment]
        return sorted(m.decode() for m in members)

    async def registry_entries(self, unit_ids: Sequence[str]) -> list[bytes | str | None]:
        """The units' raw registry entries (JSON), in one round trip (None: gone)."""
        return list(await self.redis.mget([keys.unit_registry(u) for u in unit_ids]))

    async def live_field(self, unit_ids: Sequence[str], name: str) -> list[str | None]:
        """One field of each unit's live hash, ``READ_STEP`` units a round trip."""
        out: list[str | None] = []
        for i in range(0, len(unit_ids), READ_STEP):
            pipe = self.redis.pipeline(transaction=False)
            for uid in unit_ids[i:i + READ_STEP]:
                pipe.hget(keys.unit_live(uid), name)
            out += [_text(v) for v in await pipe.execute()]
        return out

    async def registered(self, unit_id: str) -> bool:
        """Whether the unit is registered."""
        return bool(await self.redis.exists(keys.unit_registry(unit_id)))

    async def district_units(self, district: str) -> list[str]:
        """The units registered in a district, sorted."""
        members: set[bytes] = await self.redis.smembers(keys.district_units(district))  # type: ignore[misc,assignment]
        return sorted(m.decode() for m in members)

    async def grid_units(self, grid: str) -> list[str]:
        """Units whose registry grid is ``grid`` (read from their live hashes, which carry it).

        A scan of every unit: a manual order is a person's action, rare enough that an index
        kept in step with the registry would cost more than it saves.
        """
        ids = await self.unit_ids()
        return [uid for uid, g in zip(ids, await self.live_field(ids, "grid"), strict=True) if g == grid]

    async def eligibility(self, unit_ids: Sequence[str]) -> list[tuple[str | None, bool, bool]]:
        """Each unit's ``(status, reserved, has an open drill)``, ``READ_STEP`` units a round trip."""
        out: list[tuple[str | None, bool, bool]] = []
        for i in range(0, len(unit_ids), READ_STEP):
            chunk = unit_ids[i:i + READ_STEP]
            pipe = self.redis.pipeline(transaction=False)
            for uid in chunk:
                pipe.hmget(keys.unit_live(uid), ["status", "reserved_by"])
                pipe.exists(keys.unit_drill(uid))
            replies = await pipe.execute()
            for j in range(len(chunk)):
                (status, reserved), open_drill = replies[2 * j], replies[2 * j + 1]
                out.append((_text(status), reserved is not None, bool(open_drill)))
        return out

    # -- the plan -----------------------------------------------------------------------------
    async def planner_state(self) -> dict[str | bytes, str | bytes]:
        """The planner's stored state (unit → last drill, ``@epoch``), as Redis returns it."""
        state: dict[str | bytes, str | bytes] = await self.redis.hgetall(keys.drills_planner(self.prefix))  # type: ignore[misc,assignment]
        return state

    async def is_planned(self, day: str) -> bool:
        """Whether local ``day`` is planned."""
        return bool(await self.redis.exists(keys.drills_planned(self.prefix, day)))

    async def save_plan(self, day: str, plan: Sequence[tuple[str, int]], holder: str, epoch: str | None) -> bool:
        """Store local ``day``'s plan (``(unit_id, issue ms)``), mark the day planned and set the
        planner's epoch if it has none — unless the day is planned already (a transaction that
        fails then, so the day is planned once even if two workers both think they lead).
        True when this call planned it."""
        planned_key = keys.drills_planned(self.prefix, day)
        async with self.redis.pipeline(transaction=True) as tx:
            try:
                await tx.watch(planned_key)
                if await tx.exists(planned_key):
                    return False
                tx.multi()  # type: ignore[no-untyped-call]
                if plan:
                    tx.zadd(keys.drills_plan(self.prefix), {f"{u}|{ms}": ms for u, ms in plan})
                tx.set(planned_key, holder, ex=PLANNED_KEEP_S)
                if epoch:
                    tx.hsetnx(keys.drills_planner(self.prefix), "@epoch", epoch)
                await tx.execute()
            except WatchError:
                return False
        return True

    async def due_planned(self, now_ms: int, limit: int = 200) -> list[Planned]:
        """The planned drills due by ``now_ms``, earliest first, at most ``limit``."""
        rows: list[tuple[bytes, float]] = await self.redis.zrangebyscore(  # type: ignore[assignment]
            keys.drills_plan(self.prefix), "-inf", now_ms, start=0, num=limit, withscores=True)
        out = []
        for raw, _ in rows:
            entry = raw.decode()
            unit_id, _, due = entry.rpartition("|")
            out.append(Planned(entry, unit_id, int(due)))
        return out

    async def drop_planned(self, planned: Planned) -> None:
        """Take a planned drill off the plan (issued, skipped or dropped)."""
        await self.redis.zrem(keys.drills_plan(self.prefix), planned.entry)

    # -- the listings -------------------------------------------------------------------------
    async def day_drills(self, day: str) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
        """The drills issued on local ``day`` in issue order: ``(record, result or None)``."""
        members: list[bytes] = await self.redis.zrange(keys.drills_of_day(day), 0, DAY_LIST_MAX - 1)  # type: ignore[assignment]
        if not members:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for m in members:
            pipe.hmget(keys.drill(m.decode()), ["doc", "result"])
        return [(orjson.loads(raw_doc)["record"], None if raw_result is None else orjson.loads(raw_result))
                for raw_doc, raw_result in await pipe.execute() if raw_doc is not None]

    async def day_counts(self, day: str) -> dict[str, int]:
        """Outcome → count of the drills issued on local ``day``."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.drills_today(day))  # type: ignore[misc,assignment]
        return {k.decode(): int(v) for k, v in raw.items()}

    async def rates(self, by: str) -> dict[str, dict[str, int]]:
        """Group (district or grid, as ``by`` says) → outcome → count."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.drill_rates(by))  # type: ignore[misc,assignment]
        counts: dict[str, dict[str, int]] = {}
        for k, v in raw.items():
            group, _, outcome = k.decode().rpartition("|")
            counts.setdefault(group, {})[outcome] = int(v)
        return counts
