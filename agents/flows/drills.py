"""kaifong.agents.flows.drills — pull-test drills end to end: the daily plan, issuing, answers, results.

Layer: agents. Every decision is :mod:`kaifong.agents.core.drillplan`'s (pure: who is drilled when,
how an answer is scored); this module keeps the Redis state around those decisions and
publishes what they produce. Nothing here changes a unit's live status: a drilled unit stays
exactly as dispatchable as it reports itself to be, and a real dispatch aborts its drill.

**Durable state (Redis).** Per drill and per unit:

- ``kf:drill:{id}`` (hash): ``doc`` — the issue facts, written once (the "SET NX per drill id"
  that makes issuing idempotent); ``issued_sent``; ``aborted_at``; ``result`` — the decided
  flag, written once, so a result is decided and published once; ``result_sent``;
- ``kf:drill:{id}:responses`` (hash): stage → the first answer of that stage;
- ``kf:unit:{id}:drill``: the unit's open drill (at most one; it is what "already drilling"
  means to the scheduler and to manual orders); ``kf:unit:{id}:drills``: its last 20 results;
  ``kf:readiness``: unit → readiness score (what the matcher may weigh);
- ``kf:drills:today:{day}``: outcome → count by local issue day (the console reads it);
  ``kf:drills:day:{day}``: the day's drill ids by issue time; ``kf:drills:rates:{district|grid}``:
  ``group|outcome`` → count.

Scheduler state is scoped by topic prefix (like the ring clocks), so two deployments — or two
test runs — sharing a Redis never share a leader or a plan: ``kf:drills:leader:{prefix}`` (the
lease), ``kf:drills:plan:{prefix}`` (planned drills by issue time), ``kf:drills:planned:{prefix}{day}``
(that day is planned) and ``kf:drills:planner:{prefix}`` (the planner's state in
:meth:`~kaifong.agents.core.drillplan.DrillPlanner.export_state` form: unit → last drill, ``@epoch``).

**One scheduler.** Every worker runs the scheduler loop; only the holder of a Redis lease
(``SET kf:drills:leader:{prefix} <worker-id> NX PX 15000``, renewed every 5 s by its holder, and
acted on only while the holder's own view of it is unexpired) plans and issues. A lease is not
a lock: a holder that stalls past its expiry may act once more while a successor already leads.
That is safe enough here because nothing a leader does can be done twice: a day is planned once
(the plan is written in a transaction that fails when the day is already planned, so both
leaders issue from one stored plan; and only from a registry that has stopped growing,
:data:`REGISTRY_SETTLE_S`, or a worker started beside a city being loaded would draw the whole
day from its first units), a drill's id is a function of its unit and planned time
(:func:`~kaifong.agents.core.drillplan.drill_id`), and issuing is one Lua script that creates the
drill only if its id is new and its unit has no open drill. Two leaders issuing the same planned
drill create it once; the loser at most re-sends the same record (same key, same CloudEvents
id), which consumers already treat as a duplicate.

**Lifecycle.** Issue (scheduled or manual, one path) → answers on ``drills.responses.v1`` are
folded in with :func:`~kaifong.agents.core.drillplan.apply_response` → the result is decided by
:func:`~kaifong.agents.core.drillplan.score` when both stages are in or when the decision timer fires
at :func:`~kaifong.agents.core.drillplan.decide_at`. Decision timers are a :class:`RingClock` of their
own (``kf:clock:drills:{prefix}{partition}``, member kind ``x``), sharded by the partition the
drill id's responses go to, and fired by whichever worker owns that partition, so they survive
a crash exactly like ring deadlines do. Records are written before they are sent and flagged
after (an outbox): a crash in between re-sends them on the next touch (a replayed answer, the
timer, the scheduler's replay of its plan).

**Abort.** A unit with an open drill that is reserved for an incident (its live hash gets
``reserved_by``) has its drill aborted as of the reservation time: checked when an answer
arrives, when the decision is due, every second for the open drills of owned partitions, and at
once when the incident flow calls :meth:`Drills.abort_for_units` after a dispatch. Any
reservation counts (an exercise dispatch takes the unit away from the pull test just as much).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka.partitioner import murmur2
from redis.exceptions import WatchError

from kaifong.agents.core import drillplan as dp
from kaifong.agents.core.errors import Refused
from kaifong.agents.flows.intake import INFRA_ERRORS
from kaifong.agents.store.timers import RingClock, member, parse_member
from kaifong.agents.store.units import ALL_UNITS_KEY, READ_STEP, live_key, registry_key
from kaifong.streams import metrics
from kaifong.streams.codec import Headers, cloudevent_headers
from kaifong.streams.settings import Settings
from kaifong.streams.topics import DRILLS_ISSUED, DRILLS_RESULTS

log = logging.getLogger(__name__)

#: (topic, key, value, headers) of one record to produce.
Record = tuple[str, bytes | None, bytes, Headers]

#: The scheduler lease: valid this long, renewed this often by its holder.
LEASE_MS = 15_000
RENEW_S = 5.0
#: The scheduler's tick: a planned drill goes out at most this late.
SCHEDULER_TICK_S = 0.5
#: The decision clock's tick, and how often open drills are checked for a reservation.
CLOCK_TICK_S = 0.25
SWEEP_S = 1.0
#: A planned drill more than this late (the scheduler was down) is dropped, not issued in a
#: burst: its unit was not marked drilled, so it stays urgent for the next day's plan.
MAX_LATE_S = 600
#: Results kept per unit for its readiness score.
UNIT_RESULTS_KEEP = 20
#: How long drill documents, answers, day lists and day counts are kept.
KEEP_S = 8 * 24 * 3600
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
#: Unit statuses that make a unit ineligible at issue time. A unit with no status yet (never
#: reported) is eligible: whether it answers is exactly what a pull test finds out.
BUSY = ("dispatched", "en_route", "on_scene", "drilling", "off_duty", "out_of_service")
CHANNELS = ("radio", "video")
#: What a manual order may name (exactly one of them).
TARGETS = ("unit_id", "grid", "district")
#: Longest unit id, grid or district a manual order may name (the schemas' limit on ids).
MAX_ID = 128
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_BUSY_LUA = "local BUSY = {" + ", ".join(f"{s} = true" for s in BUSY) + "}\n"

# KEYS: drill hash, unit's open-drill key, unit live hash, partition's open-drill hash,
#       decision clock (zset), day list (zset), planner state (hash).
# ARGV: drill_id, doc JSON, issued_ms, decide_ms, timer member, unit_id, issued (RFC 3339 UTC),
#       open-drill ttl s, keep s.
# → 'new' | 'dup' (this drill id exists already) | 'busy:<why>'. The eligibility check and the
# claim are one atomic step, so a reservation (also a script) cannot slip in between.
ISSUE_LUA = _BUSY_LUA + """
if redis.call('HEXISTS', KEYS[1], 'doc') == 1 then return 'dup' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'busy:drill_open' end
local h = redis.call('HMGET', KEYS[3], 'status', 'reserved_by')
if h[2] then return 'busy:reserved' end
if h[1] and BUSY[h[1]] then return 'busy:' .. h[1] end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[8])
local prev = redis.call('HGET', KEYS[7], ARGV[6])
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'prev_last', prev or '')
redis.call('EXPIRE', KEYS[1], ARGV[9])
redis.call('HSET', KEYS[7], ARGV[6], ARGV[7])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[6])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[6], ARGV[9])
return 'new'
"""

# KEYS: drill hash, day counts, unit results, district rates, grid rates, unit's open-drill key,
#       partition's open-drill hash, planner state.
# ARGV: result JSON, outcome, unit results entry ('' = not kept), district, grid, keep n, keep s,
#       drill_id, unit_id, issued (as in the planner state), previous last drill ('' = none).
# → 1 when this call decided the drill (and counted it), 0 when it was decided already.
DECIDE_LUA = """
if redis.call('HSETNX', KEYS[1], 'result', ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('EXPIRE', KEYS[2], ARGV[7])
if ARGV[3] ~= '' then
  redis.call('LPUSH', KEYS[3], ARGV[3])
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[6]) - 1)
end
if ARGV[4] ~= '' then redis.call('HINCRBY', KEYS[4], ARGV[4] .. '|' .. ARGV[2], 1) end
if ARGV[5] ~= '' then redis.call('HINCRBY', KEYS[5], ARGV[5] .. '|' .. ARGV[2], 1) end
if redis.call('GET', KEYS[6]) == ARGV[8] then redis.call('DEL', KEYS[6]) end
redis.call('HDEL', KEYS[7], ARGV[8])
-- An aborted drill does not count as the unit's drill: the planner gets its previous one back.
if ARGV[2] == 'aborted' and redis.call('HGET', KEYS[8], ARGV[9]) == ARGV[10] then
  if ARGV[11] == '' then redis.call('HDEL', KEYS[8], ARGV[9]) else redis.call('HSET', KEYS[8], ARGV[9], ARGV[11]) end
end
return 1
"""

RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# -- keys ---------------------------------------------------------------------------------------
def drill_key(drill_id: str) -> str:
    """Redis hash of one drill: its document, flags and result."""
    return f"kf:drill:{drill_id}"


def drill_responses_key(drill_id: str) -> str:
    """Redis hash of a drill's answers: stage → the first answer of that stage."""
    return f"kf:drill:{drill_id}:responses"


def unit_drill_key(unit_id: str) -> str:
    """The unit's open drill id (absent when it has none)."""
    return f"kf:unit:{unit_id}:drill"


def unit_results_key(unit_id: str) -> str:
    """Redis list of the unit's last results, newest first (JSON ``{"at", "outcome"}``)."""
    return f"kf:unit:{unit_id}:drills"


#: Redis hash unit → readiness score in [0, 1] (what the matcher reads when it weighs readiness).
READINESS_KEY = "kf:readiness"


def today_key(day: str) -> str:
    """Redis hash outcome → count of drills issued on local ``day`` (YYYY-MM-DD)."""
    return f"kf:drills:today:{day}"


def day_key(day: str) -> str:
    """Redis sorted set of the drill ids issued on local ``day``, scored by issue time (ms)."""
    return f"kf:drills:day:{day}"


def rates_key(by: str) -> str:
    """Redis hash ``group|outcome`` → count, ``by`` district or grid."""
    return f"kf:drills:rates:{by}"


# -- helpers ------------------------------------------------------------------------------------
def parse_hours(text: str) -> tuple[int, int]:
    """``"8-20"`` → ``(8, 20)``.

    >>> parse_hours("0-24")
    (0, 24)
    """
    start, sep, end = text.partition("-")
    if sep and start.strip().isdigit() and end.strip().isdigit():
        return int(start), int(end)
    raise ValueError(f"KAIFONG_DRILL_HOURS={text!r}: expected start-end, e.g. 8-20")


def policy_from_settings(settings: Settings) -> dp.DrillPolicy:
    """The drill programme as configured. The no-answer and no-muster cut-offs are 3 × their
    targets, the programme's defaults (180 s and 540 s), so shrinking a target for a test or a
    demo shrinks its cut-off with it."""
    start, end = parse_hours(settings.drill_hours)
    ack, muster = float(settings.drill_ack_target_s), float(settings.drill_muster_target_s)
    return dp.DrillPolicy(daily_rate=settings.drills_per_day, coverage_days=settings.drill_coverage_days,
                          start_hour=start, end_hour=end, ack_target_s=ack, muster_target_s=muster,
                          no_answer_after_s=3 * ack, no_muster_after_s=3 * muster)


def to_ms(t: datetime) -> int:
    """Milliseconds since the epoch (what the sorted sets are scored by)."""
    return round(t.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    """An aware UTC time from milliseconds, exactly (integer arithmetic, no float rounding)."""
    return _EPOCH + timedelta(milliseconds=ms)


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _own_nothing() -> set[int]:
    return set()


def _always_ready() -> bool:
    return True


def _new_worker_id() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Issued:
    """What :meth:`Drills.issue` did: ``issued``, ``duplicate`` (it existed), ``busy`` or ``unknown``."""

    status: str
    record: dict[str, Any] | None = None
    why: str = ""


@dataclass
class Drills:
    """Handler of ``drills.responses.v1``, the drill scheduler, the decision clock and the drill API."""

    settings: Settings
    redis: aioredis.Redis
    send_all: Callable[[list[Record]], Awaitable[None]]
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    #: Partitions of the (co-partitioned) input topics this worker owns: whose timers it fires.
    owned_partitions: Callable[[], set[int]] = _own_nothing
    #: The worker's readiness: the first plan waits for it (and for the registry to settle), so
    #: it sees the consumed registry.
    ready: Callable[[], bool] = _always_ready
    worker_id: str = field(default_factory=_new_worker_id)
    policy: dp.DrillPolicy = field(init=False)
    timers: RingClock = field(init=False)
    leader: bool = field(default=False, init=False)
    _lease_until: float = field(default=0.0, init=False)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict, init=False)
    _population: tuple[float, list[dp.UnitInfo]] | None = field(default=None, init=False)
    _planned_day: date | None = field(default=None, init=False)
    _warned_rate: bool = field(default=False, init=False)
    #: The registry's size as last seen, since when (monotonic), and since when it is non-empty.
    _registry_seen: tuple[int, float, float] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.policy = policy_from_settings(self.settings)  # refuses bad figures at start
        self.timers = RingClock(self.redis, "drills:" + self.settings.topic_prefix)
        self._issue_script = self.redis.register_script(ISSUE_LUA)
        self._decide_script = self.redis.register_script(DECIDE_LUA)
        self._renew_script = self.redis.register_script(RENEW_LUA)
        self._release_script = self.redis.register_script(RELEASE_LUA)

    # -- keys scoped by topic prefix ----------------------------------------------------------
    @property
    def leader_key(self) -> str:
        """The scheduler lease."""
        return f"kf:drills:leader:{self.settings.topic_prefix}"

    @property
    def plan_key(self) -> str:
        """Planned drills (``unit|ms``) scored by issue time."""
        return f"kf:drills:plan:{self.settings.topic_prefix}"

    @property
    def planner_key(self) -> str:
        """The planner's state (unit → last drill, ``@epoch``)."""
        return f"kf:drills:planner:{self.settings.topic_prefix}"

    def planned_key(self, day: date) -> str:
        """Set once local ``day`` is planned."""
        return f"kf:drills:planned:{self.settings.topic_prefix}{day.isoformat()}"

    def open_key(self, partition: int) -> str:
        """Open drills (drill id → unit id) of one partition."""
        return f"kf:drills:open:{self.settings.topic_prefix}{partition}"

    def partition_of(self, drill_id: str) -> int:
        """The partition a drill's responses are keyed to (Kafka's default partitioner), which
        shards its decision timer: the worker that handles its answers also fires its timer."""
        return int(murmur2(drill_id.encode()) & 0x7FFFFFFF) % max(1, self.settings.partitions)

    def local_day(self, t: datetime) -> date:
        """The city's local date of ``t`` (UTC+8)."""
        return t.astimezone(self.policy.tz).date()

    # -- records ----------------------------------------------------------------------------
    def _issued_out(self, record: dict[str, Any]) -> Record:
        headers = cloudevent_headers(record["drill_id"], "drill-issued", _parse(record["issued_at"]),
                                     subject=record["unit_id"])
        return (DRILLS_ISSUED.name(self.settings), record["drill_id"].encode(), orjson.dumps(record), headers)

    def _result_out(self, result: dict[str, Any]) -> Record:
        headers = cloudevent_headers(f"{result['drill_id']}:result", "drill-result", _parse(result["decided_at"]),
                                     subject=result["unit_id"])
        return (DRILLS_RESULTS.name(self.settings), result["drill_id"].encode(), orjson.dumps(result), headers)

    async def _send_issued(self, record: dict[str, Any]) -> None:
        await self.send_all([self._issued_out(record)])
        await self.redis.hset(drill_key(record["drill_id"]), "issued_sent", "1")  # type: ignore[misc]

    async def _send_result(self, doc: dict[str, Any], result: dict[str, Any]) -> None:
        drill_id = result["drill_id"]
        await self.send_all([self._result_out(result)])
        await self.redis.hset(drill_key(drill_id), "result_sent", "1")  # type: ignore[misc]
        await self.timers.cancel(int(doc["partition"]), [member("x", drill_id)])

    # -- issuing ----------------------------------------------------------------------------
    async def issue(self, unit_id: str, at: datetime, reason: str, channel: str = "radio") -> Issued:
        """Issue a drill of ``unit_id`` at ``at`` — the one path of scheduled and manual drills.

        Idempotent: the drill id is a function of the unit and ``at``; a second call creates
        nothing and re-sends the record only if the first call did not get it to the broker.
        The unit must be registered, not reserved, not busy (dispatched, en route, on scene,
        drilling, off duty, out of service) and without an open drill, else nothing is issued.
        """
        raw = await self.redis.get(registry_key(unit_id))
        if raw is None:
            return Issued("unknown", why=f"unit {unit_id} is not registered")
        reg = orjson.loads(raw)
        state = dp.DrillState(dp.drill_id(unit_id, at), unit_id, channel, at.astimezone(UTC),
                              int(reg.get("responders") or 0))
        record = dp.issued_record(state, self.policy, reason=reason, district=reg.get("district") or None,
                                  grid=reg.get("grid") or None)
        partition = self.partition_of(state.drill_id)
        day = self.local_day(at).isoformat()
        doc = {"record": record, "partition": partition, "day": day}
        verdict = _text(await self._issue_script(
            keys=[drill_key(state.drill_id), unit_drill_key(unit_id), live_key(unit_id), self.open_key(partition),
                  self.timers.due_key(partition), day_key(day), self.planner_key],
            args=[state.drill_id, orjson.dumps(doc), to_ms(at), to_ms(dp.decide_at(state, self.policy)),
                  member("x", state.drill_id), unit_id, state.issued_at.isoformat(),
                  int(self.policy.no_muster_after_s * 2 + 3600), KEEP_S]))
        if verdict and verdict.startswith("busy:"):
            return Issued("busy", why=f"unit {unit_id} is {verdict.removeprefix('busy:').replace('_', ' ')}")
        if verdict == "new":
            metrics.DRILLS_ISSUED.labels(reason).inc()
            log.info("drill %s issued to unit %s (%s, %s)", state.drill_id, unit_id, reason, channel)
            await self._send_issued(record)
            return Issued("issued", record)
        # A replay: the stored document is the truth (a manual order in the same millisecond as
        # a scheduled drill of the same unit keeps the first one's reason).
        stored: list[bytes | None] = await self.redis.hmget(  # type: ignore[misc,assignment]
            drill_key(state.drill_id), ["doc", "issued_sent"])
        if stored[0] is None:
            return Issued("unknown", why=f"drill {state.drill_id} expired")
        record = orjson.loads(stored[0])["record"]
        if stored[1] is None:
            await self._send_issued(record)
        return Issued("duplicate", record)

    # -- answers and decisions --------------------------------------------------------------
    async def on_response(self, response: dict[str, Any]) -> None:
        """Fold a unit's answer into its drill; decide the drill if it is decidable now.

        Refuses (dead-letters) an answer to a drill that was never issued (or was issued to
        another unit) and an answer stamped before the drill was issued. The first answer of
        each stage counts; a later one of the same stage changes nothing.
        """
        drill_id, stage = response["drill_id"], response["stage"]
        raw = await self.redis.hget(drill_key(drill_id), "doc")  # type: ignore[misc]
        if raw is None:
            raise Refused("drills", "unknown_drill", f"no drill {drill_id} was issued (or it ended more than "
                          f"{KEEP_S // 86400} days ago)")
        record = orjson.loads(raw)["record"]
        if response["unit_id"] != record["unit_id"]:
            raise Refused("drills", "unknown_drill", f"drill {drill_id} was issued to another unit, not to "
                          f"{response['unit_id']}")
        issued, at = _parse(record["issued_at"]), _parse(response["at"])
        try:
            dp.apply_response(self._fresh_state(record), stage, at, response.get("headcount"))
        except ValueError as exc:
            raise Refused("drills", "before_issue", str(exc)) from None
        answer = {"at": response["at"], "event_id": response["event_id"]}
        if "headcount" in response:
            answer["headcount"] = response["headcount"]
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(drill_responses_key(drill_id), stage, orjson.dumps(answer))
        pipe.expire(drill_responses_key(drill_id), KEEP_S)
        first, _ = await pipe.execute()
        if first:
            metrics.DRILL_RESPONSE.labels(stage).observe(max(0.0, (at - issued).total_seconds()))
        await self.decide(drill_id)

    def _fresh_state(self, record: dict[str, Any]) -> dp.DrillState:
        return dp.DrillState(record["drill_id"], record["unit_id"], record["channel"], _parse(record["issued_at"]),
                             int(record.get("expected_headcount") or 0))

    def _state(self, record: dict[str, Any], aborted_at: str | None,
               answers: dict[bytes, bytes]) -> dp.DrillState:
        state = self._fresh_state(record)
        for stage in dp.STAGES:
            raw = answers.get(stage.encode())
            if raw is not None:
                answer = orjson.loads(raw)
                state = dp.apply_response(state, stage, _parse(answer["at"]), answer.get("headcount"))
        if aborted_at is not None:
            state = dp.abort(state, _parse(aborted_at))
        return state

    def _lock(self, drill_id: str) -> asyncio.Lock:
        lk = self._locks.get(drill_id)
        if lk is None:
            lk = self._locks[drill_id] = asyncio.Lock()
        return lk

    async def decide(self, drill_id: str) -> str | None:
        """Decide the drill if it is decidable now (publishing its result once); else move its
        timer to when it will be. Returns the outcome once decided, else None. Serialised per
        drill in this process; across processes the decided flag makes the first decision win."""
        lk = self._lock(drill_id)
        try:
            async with lk:
                return await self._decide(drill_id)
        finally:
            if not lk.locked() and not getattr(lk, "_waiters", None):
                self._locks.pop(drill_id, None)

    async def _decide(self, drill_id: str) -> str | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(drill_key(drill_id))
        pipe.hgetall(drill_responses_key(drill_id))
        raw_h, answers = await pipe.execute()
        h: dict[str, bytes] = {k.decode(): v for k, v in raw_h.items()}
        if "doc" not in h:
            return None  # expired long ago: nothing left to decide
        doc = orjson.loads(h["doc"])
        record = doc["record"]
        if "issued_sent" not in h:
            await self._send_issued(record)  # the issuer crashed before the broker had it
        if "result" in h:
            result = orjson.loads(h["result"])
            if "result_sent" not in h:
                await self._send_result(doc, result)
            return str(result["outcome"])
        state = self._state(record, _text(h.get("aborted_at")), answers)
        unit_id = record["unit_id"]
        if state.aborted_at is None:
            reserved_by, reserved_ms = await self.redis.hmget(live_key(unit_id),  # type: ignore[misc]
                                                              ["reserved_by", "reserved_ms"])
            if reserved_by is not None:
                # Aborted as of the reservation: a unit reserved after it mustered still passed.
                when = from_ms(int(reserved_ms)) if reserved_ms else self.clock()
                at = max(state.issued_at, when)
                await self.redis.hsetnx(drill_key(drill_id), "aborted_at", at.isoformat())  # type: ignore[misc]
                state = dp.abort(state, at)
        now = self.clock()
        district, grid = record.get("district"), record.get("grid")
        result = dp.result_record(state, now, self.policy, district=district, grid=grid)
        if result is None:
            await self.timers.schedule(int(doc["partition"]),
                                       [(member("x", drill_id), to_ms(dp.decide_at(state, self.policy)))])
            return None
        outcome = result["outcome"]
        entry = orjson.dumps({"at": result["decided_at"], "outcome": outcome}) if outcome != "aborted" else b""
        prev = _text(h.get("prev_last")) or ""
        won = await self._decide_script(
            keys=[drill_key(drill_id), today_key(doc["day"]), unit_results_key(unit_id), rates_key("district"),
                  rates_key("grid"), unit_drill_key(unit_id), self.open_key(int(doc["partition"])), self.planner_key],
            args=[orjson.dumps(result), outcome, entry, district or "", grid or "", UNIT_RESULTS_KEEP, KEEP_S,
                  drill_id, unit_id, state.issued_at.isoformat(), prev])
        if not won:
            return None  # decided a moment ago by another worker, which publishes it
        metrics.DRILLS.labels(outcome, metrics.district_label(self.settings, district)).inc()
        if outcome != "aborted":
            await self._update_readiness(unit_id, now)
        log.info("drill %s of unit %s: %s", drill_id, unit_id, outcome)
        await self._send_result(doc, result)
        return str(outcome)

    async def _update_readiness(self, unit_id: str, now: datetime) -> None:
        # Time-invariant between results: ageing every result by the same Δ scales every weight
        # of the weighted mean by the same factor, so the score only changes when a result lands.
        raw: list[bytes] = await self.redis.lrange(unit_results_key(unit_id), 0, -1)  # type: ignore[misc,assignment]
        results = [(_parse(e["at"]), e["outcome"]) for e in map(orjson.loads, raw)]
        await self.redis.hset(READINESS_KEY, unit_id, f"{dp.readiness(results, now):.4f}")  # type: ignore[misc]

    async def abort_for_units(self, unit_ids: Iterable[str]) -> None:
        """Abort the open drills of units just reserved for an incident (the incident flow calls
        this after a dispatch). Never fails the dispatch: an error here is logged and the
        once-a-second sweep aborts the drill instead."""
        ids = list(dict.fromkeys(unit_ids))
        if not ids:
            return
        try:
            open_ids = await self.redis.mget([unit_drill_key(u) for u in ids])
            for raw in open_ids:
                drill_id = _text(raw)
                if drill_id:
                    await self.decide(drill_id)
        except Exception:  # a drill must never break a real dispatch
            metrics.INTERNAL_ERRORS.labels("drills_abort").inc()
            log.exception("could not abort the drills of %d dispatched units (the sweep will)", len(ids))

    async def sweep(self, partitions: Iterable[int]) -> int:
        """Decide the open drills of ``partitions`` whose unit got reserved; return how many."""
        n = 0
        for p in sorted(partitions):
            raw: dict[bytes, bytes] = await self.redis.hgetall(self.open_key(p))  # type: ignore[misc,assignment]
            if not raw:
                continue
            drills = [(d.decode(), u.decode()) for d, u in raw.items()]
            pipe = self.redis.pipeline(transaction=False)
            for _, unit_id in drills:
                pipe.hexists(live_key(unit_id), "reserved_by")
            for (drill_id, _), reserved in zip(drills, await pipe.execute(), strict=True):
                if reserved:
                    n += await self.decide(drill_id) is not None
        return n

    # -- the decision clock -----------------------------------------------------------------
    async def clock_loop(self) -> None:
        """Fire due decision timers of owned partitions; sweep open drills for reservations."""
        owned_before: set[int] = set()
        last_sweep = 0.0
        while True:
            await asyncio.sleep(CLOCK_TICK_S)
            owned = self.owned_partitions()
            try:
                for p in sorted(owned - owned_before):
                    adopted = await self.timers.reclaim(p)
                    if adopted:
                        log.warning("partition %d: %d drill timers were in flight with its previous owner", p, adopted)
                owned_before = owned
                now_ms = to_ms(self.clock())
                for p in sorted(owned):
                    for timer, _ in await self.timers.claim(p, now_ms):
                        await self._fire(p, timer)
                if time.monotonic() - last_sweep >= SWEEP_S:
                    last_sweep = time.monotonic()
                    await self.sweep(owned)
            except INFRA_ERRORS as exc:
                metrics.REDIS_ERRORS.labels("drills").inc()
                log.warning("drill clock: redis unavailable (%s); retrying", type(exc).__name__)
                owned_before = set()  # re-adopt in-flight timers once Redis is back
            except Exception:
                metrics.INTERNAL_ERRORS.labels("drill_clock").inc()
                log.exception("drill clock failed; going on")

    async def _fire(self, partition: int, timer: str) -> None:
        _, drill_id, _ = parse_member(timer)
        try:
            await self.decide(drill_id)
        except INFRA_ERRORS:
            raise  # the timer stays in flight; the loop re-adopts it once Redis is back
        except Exception:
            metrics.INTERNAL_ERRORS.labels("drill_clock").inc()
            log.exception("drill timer %s failed", drill_id)
        await self.timers.done(partition, timer)

    # -- the scheduler (leader only) --------------------------------------------------------
    async def scheduler_loop(self) -> None:
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
                        await self._lease()
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

    async def _lease(self) -> None:
        started = time.monotonic()
        if self.leader:
            held = bool(await self._renew_script(keys=[self.leader_key], args=[self.worker_id, LEASE_MS]))
            if not held:
                self.leader = False
                log.warning("drill scheduler: lost the lease; another worker schedules now")
        elif await self.redis.set(self.leader_key, self.worker_id, nx=True, px=LEASE_MS):
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
            await asyncio.wait_for(self._release_script(keys=[self.leader_key], args=[self.worker_id]), 1.0)
        except Exception:  # noqa: BLE001 - shutting down: the lease expires by itself
            log.debug("drill scheduler: lease not released (it expires in %d ms)", LEASE_MS)

    async def population(self, refresh: bool = False) -> list[dp.UnitInfo]:
        """Every registered unit, sorted by id (the plan depends on the order), cached a while.

        Read and parsed ``READ_STEP`` units a step: ~23,000 in steps of 1,000 held up the
        incidents arriving meanwhile for ~6 ms a step.
        """
        cached = self._population
        if cached is not None and not refresh and time.monotonic() - cached[0] < POPULATION_TTL_S:
            return cached[1]
        members: set[bytes] = await self.redis.smembers(ALL_UNITS_KEY)  # type: ignore[misc,assignment]
        ids = sorted(m.decode() for m in members)
        units: list[dp.UnitInfo] = []
        for i in range(0, len(ids), READ_STEP):
            chunk = ids[i:i + READ_STEP]
            for uid, raw in zip(chunk, await self.redis.mget([registry_key(u) for u in chunk]), strict=True):
                if raw is None:
                    continue
                try:
                    units.append(dp.UnitInfo.from_registry(orjson.loads(raw)))
                except (KeyError, TypeError, ValueError):
                    log.warning("unit %s: registry entry unusable for drills; skipped", uid)
        self._population = (time.monotonic(), units)
        return units

    def planner(self, units: list[dp.UnitInfo], state: Mapping[str | bytes, str | bytes]) -> dp.DrillPlanner:
        """The planner over ``units`` from its stored state. A registry that outgrew the
        configured rate (rate × coverage days < units) is drilled at the lowest rate that keeps
        the coverage promise instead, loudly: the promise is the programme's point."""
        policy = self.policy
        n = len(units)
        if policy.daily_rate * policy.coverage_days < n:
            rate = -(-n // policy.coverage_days)
            if not self._warned_rate:
                log.error("%d units cannot all be drilled every %d days at %d drills a day; drilling %d a day "
                          "(raise KAIFONG_DRILLS_PER_DAY)", n, policy.coverage_days, policy.daily_rate, rate)
                self._warned_rate = True
            policy = replace(policy, daily_rate=rate)
        return dp.DrillPlanner.from_state(units, state, policy)

    def rng(self, day: date) -> random.Random:
        """The day's random draw: seeded by KAIFONG_DRILL_SEED and the day, else fresh."""
        seed = self.settings.drill_seed
        return random.Random(f"{seed}:{day.isoformat()}") if seed else random.Random()

    def fit(self, plan: list[tuple[datetime, str]], day: date, now: datetime) -> list[tuple[datetime, str]]:
        """Map the planned times onto what is left of the day (or onto KAIFONG_DRILL_SPREAD_S).

        The planner spreads a day over the whole drill window; planned after the window opened
        (a first start, a restart after the plan was lost), the times are compressed, in order,
        into the rest of the window rather than issued at once. Planned after the window closed,
        nothing is issued: unmarked units stay urgent for tomorrow.
        """
        p = self.policy
        start = datetime.combine(day, dtime(p.start_hour), tzinfo=p.tz)
        end = start + timedelta(hours=p.end_hour - p.start_hour)
        if self.settings.drill_spread_s > 0:
            dst_start, dst_end = now, now + timedelta(seconds=self.settings.drill_spread_s)
        elif now > start:
            dst_start, dst_end = now, end
        else:
            return plan
        if dst_end <= dst_start:
            return []
        scale = (dst_end - dst_start) / (end - start)
        return [(from_ms(to_ms(dst_start + (t - start) * scale)), u) for t, u in plan]

    async def ensure_plan(self, now: datetime) -> int:
        """Plan the local day of ``now`` unless it is planned; return the drills planned."""
        day = self.local_day(now)
        if self._planned_day == day or not await self.registry_settled():
            return 0
        planned = await self.plan_day(day, now)
        self._planned_day = day
        return planned

    async def registry_settled(self) -> bool:
        """Whether the unit registry is non-empty and has stopped growing (see
        :data:`REGISTRY_SETTLE_S`): one SCARD a scheduler tick until a day is planned."""
        count: int = await self.redis.scard(ALL_UNITS_KEY)  # type: ignore[misc]
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
        planned_key = self.planned_key(day)
        if await self.redis.exists(planned_key):
            return 0
        units = await self.population(refresh=True)
        state: dict[str | bytes, str | bytes] = await self.redis.hgetall(self.planner_key)  # type: ignore[misc,assignment]
        planner = await asyncio.to_thread(self.planner, units, state)
        out_of_service: set[str] = set()
        ids = [u.unit_id for u in units]
        for i in range(0, len(ids), READ_STEP):
            pipe = self.redis.pipeline(transaction=False)
            for uid in ids[i:i + READ_STEP]:
                pipe.hget(live_key(uid), "status")
            for uid, status in zip(ids[i:i + READ_STEP], await pipe.execute(), strict=True):
                if status == b"out_of_service":
                    out_of_service.add(uid)
        drawn = await asyncio.to_thread(planner.plan_day, day, self.rng(day), lambda u: u not in out_of_service)
        plan = self.fit(drawn, day, now)
        epoch = planner.export_state().get("@epoch")
        async with self.redis.pipeline(transaction=True) as tx:
            try:
                # The day is planned once even if two workers both think they lead.
                await tx.watch(planned_key)
                if await tx.exists(planned_key):
                    return 0
                tx.multi()  # type: ignore[no-untyped-call]
                if plan:
                    tx.zadd(self.plan_key, {f"{u}|{to_ms(t)}": to_ms(t) for t, u in plan})
                tx.set(planned_key, self.worker_id, ex=3 * 86400)
                if epoch:
                    tx.hsetnx(self.planner_key, "@epoch", epoch)
                await tx.execute()
            except WatchError:
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
        rows: list[tuple[bytes, float]] = await self.redis.zrangebyscore(  # type: ignore[assignment]
            self.plan_key, "-inf", now_ms, start=0, num=200, withscores=True)
        issued = 0
        for raw, _ in rows:
            entry = raw.decode()
            unit_id, _, due_s = entry.rpartition("|")
            due = int(due_s)
            if now_ms - due > MAX_LATE_S * 1000:
                log.warning("drill of unit %s planned %s dropped: %ds late (the unit stays urgent)", unit_id,
                            from_ms(due).isoformat(), (now_ms - due) // 1000)
            else:
                result = await self.issue(unit_id, from_ms(due), "scheduled")
                if result.status in ("busy", "unknown"):
                    log.info("scheduled drill skipped: %s (it stays urgent)", result.why)
                issued += result.status == "issued"
            await self.redis.zrem(self.plan_key, raw)
        return issued

    async def coverage(self) -> dict[str, Any]:
        """Refresh UNITS_NEVER_DRILLED (units with no drill within the coverage window)."""
        units = await self.population()
        state: dict[str | bytes, str | bytes] = await self.redis.hgetall(self.planner_key)  # type: ignore[misc,assignment]
        today = self.local_day(self.clock())
        # In a thread, like the population's parsing: not on the incident flow's event loop.
        report = await asyncio.to_thread(lambda: self.planner(units, state).coverage_report(today))
        metrics.UNITS_NEVER_DRILLED.set(report["not_drilled_in_window"])
        return report

    async def run(self) -> None:
        """Everything this worker runs for drills: the decision clock and the scheduler."""
        await asyncio.gather(self.clock_loop(), self.scheduler_loop())

    # -- HTTP: manual drills, today's drills, pass rates ------------------------------------
    async def order(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """``POST /api/drills``: ``{"unit_id" | "grid" | "district": …, "channel": "radio"|"video"}``.

        202 with the issued drill; 400 with every reason for a bad body; 404 for an unknown
        unit, grid or district; 409 when no unit of the target is eligible; 503 when the
        broker did not take the record (retrying is safe: nothing is issued twice).
        """
        try:
            parsed = orjson.loads(body) if body.strip() else None
        except orjson.JSONDecodeError:
            return 400, {"error": "not_json", "message": "the body must be JSON",
                         "reasons": ["the body is not JSON"]}
        if not isinstance(parsed, dict):
            return 400, {"error": "bad_body", "message": "the body must be a JSON object",
                         "reasons": ['expected e.g. {"unit_id": "u-77", "channel": "radio"}']}
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
            return 400, {"error": "bad_body", "message": "; ".join(reasons), "reasons": reasons}
        target, value = named[0], str(parsed[named[0]])
        if target == "unit_id":
            if not await self.redis.exists(registry_key(value)):
                return 404, {"error": "unknown_unit", "message": f"no unit {value} is registered"}
            candidates = [value]
        elif target == "district":
            members: set[bytes] = await self.redis.smembers(f"kf:units:district:{value}")  # type: ignore[misc,assignment]
            candidates = sorted(m.decode() for m in members)
            if not candidates:
                return 404, {"error": "unknown_district", "message": f"no unit is registered in district {value}"}
        else:
            candidates = await self.grid_units(value)
            if not candidates:
                return 404, {"error": "unknown_grid", "message": f"no unit is registered in grid {value}"}
        eligible, busy = await self._prefilter(candidates)
        random.Random().shuffle(eligible)  # a fair pick, not a secret
        why = busy
        try:
            # The prefilter is a hint; the issue script decides atomically (a unit may be taken
            # meanwhile), so try the next candidate when it says busy.
            for unit_id in eligible[:20]:
                result = await self.issue(unit_id, from_ms(to_ms(self.clock())), "manual", channel)
                if result.record is not None:
                    return 202, {"drills": [result.record]}
                why = [*why, result.why]
        except INFRA_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - a producer failure: tell the caller to retry
            log.warning("manual drill: not published (%s)", type(exc).__name__)
            return 503, {"error": "broker_unavailable", "message": "the drill was not published; retrying is safe"}
        return 409, {"error": "no_eligible_unit", "message": f"no eligible unit for {target} {value}",
                     "reasons": why[:20]}

    async def grid_units(self, grid: str) -> list[str]:
        """Units whose registry grid is ``grid`` (read from their live hashes, which carry it).

        A scan of every unit: a manual order is a person's action, rare enough that an index
        kept in step with the registry would cost more than it saves.
        """
        members: set[bytes] = await self.redis.smembers(ALL_UNITS_KEY)  # type: ignore[misc,assignment]
        ids = sorted(m.decode() for m in members)
        found: list[str] = []
        target = grid.encode()
        for i in range(0, len(ids), READ_STEP):
            pipe = self.redis.pipeline(transaction=False)
            for uid in ids[i:i + READ_STEP]:
                pipe.hget(live_key(uid), "grid")
            found += [uid for uid, g in zip(ids[i:i + READ_STEP], await pipe.execute(), strict=True) if g == target]
        return found

    async def _prefilter(self, unit_ids: list[str]) -> tuple[list[str], list[str]]:
        eligible: list[str] = []
        busy: list[str] = []
        for i in range(0, len(unit_ids), READ_STEP):
            chunk = unit_ids[i:i + READ_STEP]
            pipe = self.redis.pipeline(transaction=False)
            for uid in chunk:
                pipe.hmget(live_key(uid), ["status", "reserved_by"])
                pipe.exists(unit_drill_key(uid))
            replies = await pipe.execute()
            for j, uid in enumerate(chunk):
                (status, reserved), open_drill = replies[2 * j], replies[2 * j + 1]
                if open_drill:
                    busy.append(f"unit {uid} has an open drill")
                elif reserved is not None:
                    busy.append(f"unit {uid} is reserved for an incident")
                elif status is not None and status.decode() in BUSY:
                    busy.append(f"unit {uid} is {status.decode().replace('_', ' ')}")
                else:
                    eligible.append(uid)
        return eligible, busy

    async def listing(self, day_text: str | None = None) -> tuple[int, dict[str, Any]]:
        """``GET /api/drills[?date=YYYY-MM-DD]``: the day's drills (issue order) and outcome counts."""
        if day_text:
            try:
                day = date.fromisoformat(day_text).isoformat()
            except ValueError:
                return 400, {"error": "bad_query", "message": "date must be YYYY-MM-DD"}
        else:
            day = self.local_day(self.clock()).isoformat()
        members: list[bytes] = await self.redis.zrange(day_key(day), 0, 4999)  # type: ignore[assignment]
        ids = [m.decode() for m in members]
        pipe = self.redis.pipeline(transaction=False)
        for drill_id in ids:
            pipe.hmget(drill_key(drill_id), ["doc", "result"])
        drills = []
        for raw_doc, raw_result in (await pipe.execute() if ids else []):
            if raw_doc is None:
                continue
            item: dict[str, Any] = {**orjson.loads(raw_doc)["record"], "outcome": None}
            if raw_result is not None:
                result = orjson.loads(raw_result)
                item.update({k: result.get(k) for k in ("outcome", "ack_s", "muster_s", "headcount", "decided_at")})
            drills.append(item)
        raw_counts: dict[bytes, bytes] = await self.redis.hgetall(today_key(day))  # type: ignore[misc,assignment]
        outcomes = dict.fromkeys(dp.OUTCOMES, 0)
        for k, v in raw_counts.items():
            outcomes[k.decode()] = int(v)
        scored = sum(outcomes.values()) - outcomes["aborted"]
        return 200, {"date": day, "outcomes": outcomes, "total": sum(outcomes.values()),
                     "pass_rate": round(outcomes["pass"] / scored, 4) if scored else None,
                     "open": sum(1 for d in drills if d["outcome"] is None), "drills": drills}

    async def rates(self, by: str | None) -> tuple[int, dict[str, Any]]:
        """``GET /api/drills/rates?by=district|grid``: pass rate per group (aborted drills excluded,
        as :func:`~kaifong.agents.core.drillplan.pass_rates` counts), with the outcome counts."""
        if by not in ("district", "grid"):
            return 400, {"error": "bad_query", "message": "by must be district or grid"}
        raw: dict[bytes, bytes] = await self.redis.hgetall(rates_key(by))  # type: ignore[misc,assignment]
        counts: dict[str, dict[str, int]] = {}
        for k, v in raw.items():
            group, _, outcome = k.decode().rpartition("|")
            counts.setdefault(group, dict.fromkeys(dp.OUTCOMES, 0))[outcome] = int(v)
        groups = {}
        for group in sorted(counts):
            c = counts[group]
            scored = sum(c.values()) - c.get("aborted", 0)
            groups[group] = {"pass_rate": round(c["pass"] / scored, 4) if scored else None, "drills": scored,
                             "outcomes": c}
        return 200, {"by": by, "groups": groups}
