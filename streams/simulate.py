"""kaifong.streams.simulate — the synthetic city in motion: heartbeats, incidents, responses, drills.

Layer: streams (an upstream client: it publishes what the 110 centre, unit radios and the
volunteer app would, and listens to the pipeline's outputs the way unit terminals do).

- **Heartbeats:** every unit reports its status every ``heartbeat_interval_s`` (23,000 units every
  10 s ≈ 2,300 events/s; ``responders`` mode sends one per responder terminal, 290,000 every 30 s
  ≈ 9,700/s). Batched with a long linger: the embedded broker degrades with the number of record
  batches per partition, so few large batches keep it alive for hours.
- **Incidents:** a Poisson process whose rate follows a daily profile (quiet at night, peaks at
  the commute and evening), with occasional bursts (several incidents close together), a
  category and severity mix, and a share of exercise incidents (whose participants are put in
  ``drilling`` status first, so the exercise never takes a real unit).
- **Responses:** units assigned by kaifong acknowledge, report en route, travel at their kind's
  speed (ETA from the assignment, ×0.6–1.5: some are late) and arrive — or never do (a share
  does not show). Incidents are resolved some minutes after the first arrival and the units go
  back to available. Pull-test drills are answered (most in time, some late, some never).
- **Duty officers:** most escalations are acknowledged (``escalation_ack_share``, after a median
  of ~90 s); the rest are re-notified until their incident closes, as in a command centre where
  a level does not answer.
- **Time:** real time, or accelerated (``time_scale``): simulation time runs that many times
  faster than the wall clock from a shared epoch, the same clock the workers are given.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from kaifong.streams import security
from kaifong.streams.city import City, generate
from kaifong.streams.settings import Settings

log = logging.getLogger(__name__)

#: Relative incident rate by hour of the local day (Asia/Shanghai): quiet nights, a morning
#: commute, a long afternoon and an evening peak.
DAILY_PROFILE = (0.35, 0.25, 0.2, 0.2, 0.25, 0.4, 0.7, 1.1, 1.3, 1.1, 1.0, 1.0,
                 1.1, 1.0, 1.0, 1.1, 1.2, 1.4, 1.5, 1.5, 1.4, 1.1, 0.8, 0.55)
CATEGORIES = (("fire", 0.18), ("violence", 0.14), ("medical", 0.30), ("drowning", 0.04), ("crowd", 0.06),
              ("traffic", 0.20), ("hazmat", 0.02), ("other", 0.06))
#: Why a simulated unit declines (the incident-update schema's bounded reasons).
DECLINE_REASONS = ("busy", "unreachable", "no_capacity", "off_duty", "other")
SEVERITIES = ((1, 0.05), (2, 0.20), (3, 0.45), (4, 0.30))
SOURCES = (("call_110", 0.6), ("video", 0.2), ("volunteer_app", 0.12), ("unit_radio", 0.05), ("sensor", 0.03))


def _pick(rng: random.Random, weighted: tuple[tuple[Any, float], ...]) -> Any:
    return rng.choices([v for v, _ in weighted], [w for _, w in weighted])[0]


@dataclass
class SimConfig:
    """What the simulated city does (times are simulation seconds)."""

    seed: int = 7
    units: int = 23_000
    heartbeat_interval_s: float = 10.0
    heartbeat_per: str = "unit"  # "unit" or "responder"
    incidents_per_hour: float = 120.0  # city-wide mean; the daily profile and bursts modulate it
    #: The relative incident rate of each local (Guangzhou) hour; a flat profile makes a short
    #: run's incident count independent of the hour of day it starts at.
    daily_profile: tuple[float, ...] = DAILY_PROFILE
    burst_probability: float = 0.03  # chance an incident comes with 2–5 more nearby
    exercise_share: float = 0.05
    #: Assigned units that never answer (no acknowledgement, never move): the worker releases
    #: them at the end of their acknowledgement window and sends another.
    no_show_share: float = 0.08
    #: Assigned units that turn the assignment down (busy, off duty …) when they answer.
    decline_share: float = 0.03
    drill_no_answer_share: float = 0.05
    #: The command levels' duty officers: the share of escalations they acknowledge (the rest
    #: are re-notified until their incident closes), after a median of ~90 s.
    escalation_ack_share: float = 0.9
    duration_s: float | None = None  # simulated seconds of new incidents; None = until stopped
    drain_s: float = 0.0  # then this long with no new incidents: units still answer and resolve
    publish_registry: bool = True
    status_linger_ms: int = 1000


@dataclass
class SimUnit:
    """What the simulator knows of one unit."""

    unit_id: str
    kind: str
    lat: float
    lon: float
    responders: int
    district: str
    grid: str
    venue_id: str
    status: str = "available"
    seq: int = 0
    incident_id: str | None = None


@dataclass(order=True)
class _Due:
    at: float
    n: int
    action: Callable[[], Any] = field(compare=False)


@dataclass
class Simulator:
    """Drives the pipeline with a generated city until ``duration_s`` of simulated time."""

    settings: Settings
    config: SimConfig
    city: City | None = None
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("statuses", "incidents", "exercises", "updates", "assignments_seen", "resolved", "drill_responses",
         "escalations_acked", "no_shows", "declines"), 0))
    _heap: list[_Due] = field(default_factory=list)
    _counter: itertools.count[int] = field(default_factory=itertools.count)
    _open: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.clock = self.settings.clock()
        self.rng = random.Random(self.config.seed)
        self.city = self.city or generate(seed=self.config.seed, units=self.config.units)
        self.units = {u["unit_id"]: SimUnit(u["unit_id"], u["kind"], u["home"]["lat"], u["home"]["lon"],
                                            u["responders"], u["district"], u["grid"], u["venue"]["id"])
                      for u in self.city.units}
        self.unit_list = list(self.units.values())
        self.seq_base = int(time.time() * 1000) * 1000

    def topic(self, suffix: str) -> str:
        return self.settings.topic_prefix + suffix

    def now(self) -> datetime:
        return self.clock()

    def later(self, seconds: float, action: Callable[[], Any]) -> None:
        """Run ``action`` after ``seconds`` of simulated time."""
        heapq.heappush(self._heap, _Due(self.now().timestamp() + seconds, next(self._counter), action))

    # -- publishing ----------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self.status_producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers,
                                                linger_ms=self.config.status_linger_ms, max_batch_size=2 << 20,
                                                max_request_size=8 << 20, acks=1, **security.aiokafka_kwargs(s))
        self.producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, linger_ms=20, acks=-1,
                                         **security.aiokafka_kwargs(s))
        await self.status_producer.start()
        await self.producer.start()

    async def stop(self) -> None:
        await self.status_producer.stop()
        await self.producer.stop()

    async def send(self, suffix: str, key: str, value: dict[str, Any]) -> None:
        await self.producer.send(self.topic(suffix), orjson.dumps(value), key=key.encode())

    async def status(self, unit: SimUnit, status: str | None = None) -> None:
        """Publish a unit's status (a heartbeat when ``status`` is None)."""
        if status is not None:
            unit.status = status
        unit.seq += 1
        event: dict[str, Any] = {"event_id": f"{unit.unit_id}-{self.seq_base + unit.seq}", "unit_id": unit.unit_id,
                                 "status": unit.status, "at": self.now().isoformat(), "seq": self.seq_base + unit.seq,
                                 "location": {"lat": round(unit.lat, 6), "lon": round(unit.lon, 6)}}
        if unit.incident_id and unit.status in ("dispatched", "en_route", "on_scene"):
            event["incident_id"] = unit.incident_id
        await self.status_producer.send(self.topic("units.status.v1"), orjson.dumps(event),
                                        key=unit.unit_id.encode())
        self.stats["statuses"] += 1

    async def update(self, incident_id: str, kind: str, unit_id: str | None = None, reason: str | None = None) -> None:
        body: dict[str, Any] = {"event_id": f"{incident_id}-{kind}-{unit_id or '-'}", "incident_id": incident_id,
                                "kind": kind, "at": self.now().isoformat()}
        if unit_id:
            body["unit_id"] = unit_id
        if reason:
            body["reason"] = reason
        await self.send("incidents.updates.v1", incident_id, body)
        self.stats["updates"] += 1

    # -- the city's behaviour ------------------------------------------------------------------
    async def heartbeats(self, stop: asyncio.Event) -> None:
        """Every unit (or responder terminal) reports once per interval, spread evenly."""
        per_unit = self.config.heartbeat_per == "responder"
        order = list(self.unit_list)
        self.rng.shuffle(order)
        weights = [u.responders if per_unit else 1 for u in order]
        per_interval = sum(weights)
        tick = 0.1
        i = 0
        carry = 0.0
        while not stop.is_set():
            started = time.monotonic()
            carry += per_interval * tick * self.settings.time_scale / self.config.heartbeat_interval_s
            while carry >= 1:
                unit = order[i % len(order)]
                i += 1
                for _ in range(weights[(i - 1) % len(order)]):
                    await self.status(unit)
                carry -= weights[(i - 1) % len(order)]
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - started)))

    def rate_per_s(self, at: datetime) -> float:
        hour = (at + timedelta(hours=8)).hour  # local time in Guangzhou
        profile = self.config.daily_profile
        return self.config.incidents_per_hour / 3600 * profile[hour % len(profile)] / (sum(profile) / len(profile))

    async def incidents(self, stop: asyncio.Event) -> None:
        """A Poisson process of incidents (thinned by the daily profile), with bursts."""
        while not stop.is_set():
            rate = self.rate_per_s(self.now())
            gap_sim = self.rng.expovariate(rate) if rate > 0 else 60.0
            await asyncio.sleep(gap_sim / self.settings.time_scale)
            if stop.is_set():
                return
            anchor = self.rng.choice(self.unit_list)
            await self.report(anchor)
            if self.rng.random() < self.config.burst_probability:
                for _ in range(self.rng.randint(2, 5)):
                    await self.report(anchor, spread_m=400)

    async def report(self, anchor: SimUnit, spread_m: float = 250) -> None:
        """Report one incident near ``anchor``."""
        rng = self.rng
        n = self.stats["incidents"]
        incident_id = f"sim-{self.config.seed}-{self.seq_base // 1000}-{n}"
        d_lat = rng.gauss(0, spread_m) / 111_000
        d_lon = rng.gauss(0, spread_m) / (111_000 * math.cos(math.radians(anchor.lat)))
        exercise = rng.random() < self.config.exercise_share
        if exercise:
            # The exercise's participants: nearby free units switch to drilling first (and the
            # report is stamped after they did: the flush waits out the status producer's linger).
            near = sorted((u for u in self.unit_list if u.status == "available"),
                          key=lambda u: (u.lat - anchor.lat) ** 2 + (u.lon - anchor.lon) ** 2)[:4]
            for u in near:
                await self.status(u, "drilling")
                self.later(1800, partial(self._end_drill, u))
            await self.status_producer.flush()
            self.stats["exercises"] += 1
        body: dict[str, Any] = {
            "event_id": f"{incident_id}-r", "incident_id": incident_id, "category": _pick(rng, CATEGORIES),
            "severity": _pick(rng, SEVERITIES), "reported_at": self.now().isoformat(),
            "location": {"lat": round(anchor.lat + d_lat, 6), "lon": round(anchor.lon + d_lon, 6)},
            "district": anchor.district, "grid": anchor.grid, "source": _pick(rng, SOURCES), "exercise": exercise,
        }
        street = self.city.grids.get(anchor.grid, {}).get("street") if self.city else None
        if street:
            body["street"] = street
        if rng.random() < 0.5:
            body["venue_id"] = anchor.venue_id
        self._open[incident_id] = {"arrived": False, "units": set(), "exercise": exercise, "opened": self.now()}
        await self.send("incidents.reported.v1", incident_id, body)
        self.stats["incidents"] += 1

    async def _end_drill(self, unit: SimUnit) -> None:
        if unit.status == "drilling":
            await self.status(unit, "available")

    async def on_assignment(self, a: dict[str, Any]) -> None:
        """Assigned units acknowledge, travel and arrive (or do not)."""
        self.stats["assignments_seen"] += 1
        incident_id = a["incident_id"]
        info = self._open.get(incident_id)
        if info is None:
            return  # not one of ours (or already resolved)
        for assigned in a["units"]:
            unit = self.units.get(assigned["unit_id"])
            if unit is None or unit.unit_id in info["units"]:
                continue
            info["units"].add(unit.unit_id)
            unit.incident_id = incident_id
            draw = self.rng.random()
            if draw < self.config.no_show_share:
                # Never answers; back on duty (and reporting) a few minutes later.
                self.stats["no_shows"] += 1
                self.later(self.rng.uniform(120, 600), partial(self._back_on_duty, unit, incident_id))
                continue
            ack = self.rng.uniform(3, 15)  # inside ring 1's default 20 s acknowledgement window
            if draw < self.config.no_show_share + self.config.decline_share:
                self.stats["declines"] += 1
                self.later(ack, partial(self._decline, unit, incident_id))
                continue
            self.later(ack, partial(self._dispatched, unit, incident_id))
            # On scene after the ETA give or take, and never before it acknowledged and set off:
            # a unit's statuses go dispatched → en_route → on_scene (the worker refuses others).
            travel = max(5.0, float(assigned["eta_s"]) * self.rng.uniform(0.6, 1.5), ack + 3)
            self.later(ack + 2, partial(self._set_off, unit, incident_id))
            self.later(travel, partial(self._arrive, unit, incident_id))

    async def _dispatched(self, unit: SimUnit, incident_id: str) -> None:
        if unit.incident_id != incident_id or incident_id not in self._open:
            return
        await self.status(unit, "dispatched")
        await self.update(incident_id, "acknowledged", unit.unit_id)

    async def _set_off(self, unit: SimUnit, incident_id: str) -> None:
        if unit.incident_id != incident_id or incident_id not in self._open:
            return
        await self.status(unit, "en_route")
        await self.update(incident_id, "en_route", unit.unit_id)

    async def _decline(self, unit: SimUnit, incident_id: str) -> None:
        if unit.incident_id != incident_id or incident_id not in self._open:
            return
        unit.incident_id = None
        await self.update(incident_id, "declined", unit.unit_id, reason=self.rng.choice(DECLINE_REASONS))

    async def _back_on_duty(self, unit: SimUnit, incident_id: str) -> None:
        if unit.incident_id == incident_id:
            unit.incident_id = None
            await self.status(unit, "available")

    async def _arrive(self, unit: SimUnit, incident_id: str) -> None:
        info = self._open.get(incident_id)
        if info is None or unit.incident_id != incident_id:
            return
        await self.status(unit, "on_scene")
        await self.update(incident_id, "on_scene", unit.unit_id)
        if not info["arrived"]:
            info["arrived"] = True
            self.later(self.rng.uniform(300, 1200), lambda: self._resolve(incident_id))

    async def _resolve(self, incident_id: str) -> None:
        info = self._open.pop(incident_id, None)
        if info is None:
            return
        await self.update(incident_id, "resolved")
        self.stats["resolved"] += 1
        for uid in info["units"]:
            unit = self.units[uid]
            if unit.incident_id == incident_id:
                unit.incident_id = None
                self.later(self.rng.uniform(30, 300), partial(self.status, unit, "available"))

    async def resolve_stragglers(self, older_than_s: float) -> None:
        """Incidents nobody reached: the command centre closes them after a while."""
        cutoff = self.now() - timedelta(seconds=older_than_s)
        for incident_id, info in list(self._open.items()):
            if not info["arrived"] and info["opened"] < cutoff:
                await self._resolve(incident_id)

    async def on_drill(self, d: dict[str, Any]) -> None:
        """Answer a pull test: acknowledge, then muster with a headcount (or not at all)."""
        unit = self.units.get(d["unit_id"])
        if unit is None or self.rng.random() < self.config.drill_no_answer_share:
            return
        ack = self.rng.lognormvariate(math.log(30), 0.5)
        muster = ack + self.rng.lognormvariate(math.log(100), 0.4)
        headcount = max(0, round(unit.responders * self.rng.uniform(0.5, 1.0)))

        async def respond(stage: str, count: int | None) -> None:
            body: dict[str, Any] = {"event_id": f"{d['drill_id']}-{stage}", "drill_id": d["drill_id"],
                                    "unit_id": unit.unit_id, "stage": stage, "at": self.now().isoformat()}
            if count is not None:
                body["headcount"] = count
            await self.send("drills.responses.v1", d["drill_id"], body)
            self.stats["drill_responses"] += 1

        self.later(ack, lambda: respond("acknowledged", None))
        self.later(muster, lambda: respond("mustered", headcount))

    async def on_escalation(self, e: dict[str, Any]) -> None:
        """A duty officer acknowledges a new escalation (or, now and then, does not)."""
        if e["notification"] != 0 or self.rng.random() >= self.config.escalation_ack_share:
            return
        esc_id = e["escalation_id"]

        async def acknowledge() -> None:
            digest = hashlib.sha256(esc_id.encode()).hexdigest()[:32]
            await self.send("incidents.updates.v1", e["incident_id"], {
                "event_id": f"sim-ack-{digest}", "incident_id": e["incident_id"], "kind": "escalation_acknowledged",
                "escalation_id": esc_id, "by": f"sim-duty-{e['level']}", "at": self.now().isoformat()})
            self.stats["escalations_acked"] += 1

        self.later(self.rng.lognormvariate(math.log(90), 0.6), acknowledge)

    async def listen(self, stop: asyncio.Event) -> None:
        """Follow assignments and drills like unit terminals do, and escalations like duty officers."""
        consumer = AIOKafkaConsumer(self.topic("dispatch.assignments.v1"), self.topic("drills.issued.v1"),
                                    self.topic("incidents.escalations.v1"),
                                    bootstrap_servers=self.settings.bootstrap_servers, auto_offset_reset="latest",
                                    fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
                                    **security.aiokafka_kwargs(self.settings))
        await consumer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                for recs in batches.values():
                    for rec in recs:
                        value = orjson.loads(rec.value)
                        if rec.topic.endswith("dispatch.assignments.v1"):
                            await self.on_assignment(value)
                        elif rec.topic.endswith("incidents.escalations.v1"):
                            await self.on_escalation(value)
                        else:
                            await self.on_drill(value)
        finally:
            await consumer.stop()

    async def timeline(self, stop: asyncio.Event) -> None:
        """Run scheduled actions when their simulated time comes."""
        while not stop.is_set():
            now = self.now().timestamp()
            while self._heap and self._heap[0].at <= now:
                due = heapq.heappop(self._heap)
                result = due.action()
                if asyncio.iscoroutine(result):
                    await result
            await asyncio.sleep(0.02)

    async def publish_registry(self) -> None:
        assert self.city is not None
        for u in self.city.units:
            await self.status_producer.send(self.topic("units.registry.v1"), orjson.dumps(u),
                                            key=u["unit_id"].encode())
        await self.status_producer.flush()
        # Every unit announces itself available once, so dispatch can start at once.
        for unit in self.unit_list:
            await self.status(unit, "available")
        await self.status_producer.flush()

    async def run(self, report: Callable[[str], None] | None = None) -> dict[str, int]:
        """Run until ``duration_s`` simulated seconds have passed (or forever)."""
        await self.start()
        stop = asyncio.Event()
        started = self.now()
        try:
            if self.config.publish_registry:
                await self.publish_registry()
            no_more_incidents = asyncio.Event()
            tasks = [asyncio.ensure_future(t) for t in (self.heartbeats(stop), self.incidents(no_more_incidents),
                                                        self.listen(stop), self.timeline(stop))]
            last_report = time.monotonic()
            while True:
                await asyncio.sleep(0.5)
                for t in tasks:
                    if t.done():
                        t.result()  # surface a crash of any part
                elapsed = (self.now() - started).total_seconds()
                await self.resolve_stragglers(older_than_s=1800)
                if report and time.monotonic() - last_report >= 10:
                    last_report = time.monotonic()
                    report(f"sim {elapsed / 60:7.1f} min: " + ", ".join(f"{k}={v}" for k, v in self.stats.items()))
                if self.config.duration_s is not None and elapsed >= self.config.duration_s:
                    no_more_incidents.set()
                    if elapsed >= self.config.duration_s + self.config.drain_s:
                        break
            no_more_incidents.set()
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await self.stop()
        return self.stats

    def open_incidents(self) -> dict[str, dict[str, Any]]:
        """Incidents the simulator still considers open."""
        return self._open

