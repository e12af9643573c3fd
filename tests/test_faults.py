"""Issue 10, faults: the worker killed, Redis paused / restarted / slowed, the broker restarted — each
under load on an embedded stack of its own (its own ports, so the session's stack never sees a
fault), each checked for "nothing valid lost, nothing dispatched twice":

- every valid incident gets an assignment for each ring it should, under the deterministic id
  ``{incident}:r{ring}:a0``, and a republished copy of an assignment is identical to the first;
- no unit is reserved by two incidents (in the assignments and in Redis);
- every message published is accounted for: valid ones are processed (the dedupe ledger, the
  units' sequence numbers), invalid ones are on the dead-letter topic, and no valid one is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer

from kaifong.agents.core.clock import initial_rings
from kaifong.streams.embedded import EmbeddedStack, Service, free_port
from kaifong.streams.publisher import Publisher
from kaifong.streams.settings import Settings

pytestmark = pytest.mark.integration

#: No ring deadline fires while a test runs: these tests are about intake and dispatch.
SLOW_RINGS = "self_rescue:3600,mutual_aid:3601,grid:3602,street:3603,professional:3604"
CENTRE = (23.1291, 113.2644)
KINDS = ["post"] * 14 + ["unit"] * 14 + ["grid_team"] * 8 + ["street_force"] * 4 + ["professional"] * 4


# -- an embedded stack of the test's own ----------------------------------------------------------
def own_stack(tmp_path: Path, *, appendonly: bool = False) -> EmbeddedStack:
    return EmbeddedStack(free_port(), free_port(), workdir=tmp_path / "stack", redis_appendonly=appendonly).start()


def service(stack: EmbeddedStack, prefix: str) -> Service:
    return next(s for s in stack.services if s.name.startswith(prefix))


def stack_settings(stack: EmbeddedStack, redis_url: str | None = None, **overrides: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    base: dict[str, Any] = {"broker_url": stack.broker_url, "redis_url": redis_url or stack.redis_url,
                            "topic_prefix": f"f{tag}.", "app_id": f"kf-{tag}", "web_port": free_port(),
                            "partitions": 4, "rings": SLOW_RINGS, "escalation_renotify_s": 3600.0,
                            "instance_id": "w0"}
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[list[EmbeddedStack]]:
    """Stacks a test starts (stopped at teardown, after the workers: fixtures unwind in reverse)."""
    started: list[EmbeddedStack] = []
    yield started
    for s in started:
        for svc in s.services:  # a paused Valkey must be resumed before it can be stopped
            if svc.proc is not None and svc.proc.poll() is None:
                svc.proc.send_signal(signal.SIGCONT)
        s.stop()


# -- load ----------------------------------------------------------------------------------------------
Coords = tuple[str, int, int]  # (topic, partition, offset)


@dataclass
class Load:
    """Units, incidents, heartbeats and invalid messages, published with kafka-python."""

    settings: Settings
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    incidents: dict[str, dict[str, Any]] = field(default_factory=dict)
    valid: dict[Coords, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    invalid: dict[Coords, str] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)
    units: list[dict[str, Any]] = field(default_factory=list)
    _pending: list[tuple[Any, str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.connect()

    def connect(self) -> None:
        """A new producer (after a broker restart the old one's producer id means nothing)."""
        self.producer = KafkaProducer(bootstrap_servers=self.settings.bootstrap_servers, linger_ms=5, acks="all",
                                      retries=20, retry_backoff_ms=200)

    def topic(self, suffix: str) -> str:
        return self.settings.topic_prefix + suffix

    def _send(self, suffix: str, key: str, value: bytes, what: str, event: Any) -> None:
        future = self.producer.send(self.topic(suffix), key=key.encode(), value=value)
        self._pending.append((future, what, event))

    def flush(self) -> None:
        self.producer.flush(60)
        for future, what, event in self._pending:
            meta = future.get(30)
            coords = (meta.topic, meta.partition, meta.offset)
            if what == "valid":
                self.valid[coords] = event
            else:
                self.invalid[coords] = what
        self._pending.clear()

    def register_units(self) -> None:
        now = datetime.now(UTC).isoformat()
        for i, kind in enumerate(KINDS):
            uid = f"{self.tag}-u{i:02d}"
            unit = {"event_id": f"{uid}-reg", "unit_id": uid, "kind": kind, "name": f"u{i}", "district": "越秀区",
                    "police_grid": "PG1", "grid": f"G{i % 3}", "venue": {"id": f"V{i % 9}", "type": "mall"},
                    "home": {"lat": CENTRE[0] + self.rng.uniform(-0.003, 0.003),
                             "lon": CENTRE[1] + self.rng.uniform(-0.003, 0.003)},
                    "responders": 6, "equipment": ["shield", "extinguisher", "aed"][: 1 + i % 3]}
            self.units.append(unit)
            self._send("units.registry.v1", uid, orjson.dumps(unit), "valid", ("unit-registered", unit))
        self.flush()
        for unit in self.units:
            self._send("units.status.v1", unit["unit_id"], orjson.dumps(self.status(unit, now)), "valid",
                       ("unit-status", None))
        self.flush()

    def status(self, unit: dict[str, Any], at: str) -> dict[str, Any]:
        uid = unit["unit_id"]
        seq = self.last_seq[uid] = self.last_seq.get(uid, 0) + 1
        return {"event_id": f"{uid}-s{seq}", "unit_id": uid, "status": "available", "at": at, "seq": seq,
                "location": unit["home"]}

    def wait_units_indexed(self, r: redis.Redis, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(r.zcard(f"kf:geo:avail:{k}") for k in set(KINDS)) == len(KINDS):
                return
            time.sleep(0.2)
        raise AssertionError("units were not indexed")

    def incident(self, n: int) -> dict[str, Any]:
        iid = f"{self.tag}-i{n:04d}"
        inc = {"event_id": f"{iid}-r", "incident_id": iid, "category": self.rng.choice(["fire", "medical", "crowd"]),
               "severity": self.rng.randint(2, 4), "reported_at": datetime.now(UTC).isoformat(),
               "location": {"lat": CENTRE[0] + self.rng.uniform(-0.002, 0.002),
                            "lon": CENTRE[1] + self.rng.uniform(-0.002, 0.002)},
               "district": "越秀区", "grid": f"G{n % 3}", "source": "video", "exercise": False}
        self.incidents[iid] = inc
        return inc

    def publish(self, count: int, seconds: float, start: int = 0) -> None:
        """``count`` incidents over ``seconds`` (a bounded loop), with unit heartbeats and one
        invalid message in ten, on both intake paths (Faust agents and the units batch consumer)."""
        now = datetime.now(UTC).isoformat
        for n in range(start, start + count):
            inc = self.incident(n)
            self._send("incidents.reported.v1", inc["incident_id"], orjson.dumps(inc), "valid",
                       ("incident-reported", inc))
            for unit in self.rng.sample(self.units, 4):
                self._send("units.status.v1", unit["unit_id"], orjson.dumps(self.status(unit, now())), "valid",
                           ("unit-status", None))
            if n % 10 == 0:
                self._send("incidents.reported.v1", f"bad-{n}", orjson.dumps({**inc, "severity": 9}), "out_of_range",
                           None)
                self._send("units.status.v1", f"bad-{n}", b"\xff\xfe{", "not_json", None)
            if n % 10 == 5:
                self._send("incidents.reported.v1", f"bad-{n}", b'{"event_id": "x"', "not_json", None)
            time.sleep(seconds / count)
        self.flush()

    def close(self) -> None:
        self.producer.close(5)


def read_topic(settings: Settings, suffix: str, quiet_ms: int = 1500) -> list[Any]:
    consumer = KafkaConsumer(settings.topic_prefix + suffix, bootstrap_servers=settings.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=50,
                             consumer_timeout_ms=quiet_ms)
    try:
        return list(consumer)
    finally:
        consumer.close()


def wait_until(predicate: Any, timeout: float, what: str, every: float = 0.25) -> float:
    """Poll ``predicate`` until true; return the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def processed(r: redis.Redis, load: Load, event_type: str = "incident-reported") -> list[str]:
    """Event ids of valid incidents whose effect is recorded (the ledger is written after the effect)."""
    ids = [inc["event_id"] for inc in load.incidents.values()]
    pipe = r.pipeline(transaction=False)
    for event_id in ids:
        pipe.exists(f"kf:seen:{event_type}:{event_id}")
    return [event_id for event_id, seen in zip(ids, pipe.execute(), strict=True) if seen]


def verify(load: Load, r: redis.Redis, timeout: float = 60) -> dict[str, int]:
    """Nothing valid lost, nothing dispatched twice, every message accounted for."""
    settings = load.settings
    rings = [ring.number for ring in settings.ring_table()]
    wait_until(lambda: len(processed(r, load)) == len(load.incidents), timeout, "every valid incident processed")
    # Heartbeats: every unit ends on the last sequence number it sent (none lost, none reordered).
    wait_until(lambda: all(int(r.hget(f"kf:unit:{uid}:live", "seq") or 0) == seq
                           for uid, seq in load.last_seq.items()), timeout, "every heartbeat applied")

    expected = {f"{iid}:r{ring}:a0" for iid, inc in load.incidents.items()
                for ring in initial_rings(inc["severity"], rings)}
    by_id: dict[str, dict[str, Any]] = {}
    copies = 0

    def all_assignments() -> bool:
        nonlocal copies
        copies = 0
        for rec in read_topic(settings, "dispatch.assignments.v1", quiet_ms=800):
            body = orjson.loads(rec.value)
            first = by_id.setdefault(body["assignment_id"], body)
            assert body == first, f"assignment {body['assignment_id']} republished with different content"
            copies += 1
        return expected <= set(by_id)

    wait_until(all_assignments, timeout, "every assignment", every=0.5)
    assert set(by_id) == expected, f"unexpected assignment ids: {sorted(set(by_id) - expected)[:5]}"
    holder: dict[str, str] = {}
    for a in by_id.values():
        for u in a["units"]:
            uid = u["unit_id"]
            assert uid not in holder, f"{uid} reserved twice: {holder.get(uid)}, {a['incident_id']}"
            holder[uid] = a["incident_id"]
    for unit_id, incident_id in holder.items():
        assert r.hget(f"kf:unit:{unit_id}:live", "reserved_by").decode() == incident_id
    assert holder, "the load must dispatch units"

    # Accounting: dead letters are exactly the invalid messages (by source coordinates).
    dead: dict[Coords, str] = {}

    def all_dead() -> bool:
        for rec in read_topic(settings, "deadletter.v1", quiet_ms=800):
            body = orjson.loads(rec.value)
            dead[(body["source_topic"], body["source_partition"], body["source_offset"])] = body["error_class"]
        return set(load.invalid) <= set(dead)

    wait_until(all_dead, timeout, "every invalid message dead-lettered", every=0.5)
    assert set(dead) == set(load.invalid), "dead letters must be exactly the invalid messages"
    assert dead == load.invalid, "each with its error class"
    assert not set(dead) & set(load.valid), "no valid message may be dead-lettered"
    return {"valid": len(load.valid), "invalid": len(load.invalid), "incidents": len(load.incidents),
            "assignments": len(by_id), "assignment_records": copies, "units_reserved": len(holder)}


def redis_errors(worker: Any) -> float:
    return worker.metric("kaifong_redis_errors_total")


# -- a: the worker killed with SIGKILL mid-load ------------------------------------------------------------
def test_worker_sigkill_mid_load(tmp_path: Path, stacks: list[EmbeddedStack], start_worker: Any) -> None:
    t0 = time.monotonic()
    stack = own_stack(tmp_path)
    stacks.append(stack)
    settings = stack_settings(stack)
    worker = start_worker(settings, name="before-kill")
    r = redis.Redis.from_url(settings.redis_url)
    load = Load(settings)
    load.register_units()
    load.wait_units_indexed(r)

    killer = threading.Timer(2.0, worker.stop, args=(signal.SIGKILL,))
    killer.start()  # killed while the load below is being published and processed
    load.publish(120, 5.0)
    killer.join()
    assert not worker.alive()
    done_at_kill = len(processed(r, load))
    killed_at = time.monotonic()
    restarted = start_worker(settings, name="after-kill")
    restart_s = time.monotonic() - killed_at
    load.publish(40, 1.0, start=120)
    summary = verify(load, r)
    load.close()
    assert 0 < done_at_kill < len(load.incidents), "the kill must fall in the middle of the load"
    assert restarted.alive() and restarted.get("/ready")[0] == 200
    print(f"\n[sigkill] {summary}; processed before the kill {done_at_kill}; restart {restart_s:.1f}s; "
          f"total {time.monotonic() - t0:.1f}s")


# -- b: Redis unreachable for 10 s (SIGSTOP/SIGCONT), then really restarted with an AOF ---------------------
def test_redis_paused_10s_mid_load(tmp_path: Path, stacks: list[EmbeddedStack], start_worker: Any) -> None:
    t0 = time.monotonic()
    stack = own_stack(tmp_path)
    stacks.append(stack)
    settings = stack_settings(stack)
    worker = start_worker(settings)
    r = redis.Redis.from_url(settings.redis_url)
    load = Load(settings)
    load.register_units()
    load.wait_units_indexed(r)
    errors_before = redis_errors(worker)

    load.publish(30, 1.0)
    valkey = service(stack, "redis")
    assert valkey.proc is not None
    valkey.proc.send_signal(signal.SIGSTOP)  # unreachable, its data kept
    paused_at = time.monotonic()
    try:
        load.publish(60, 4.0, start=30)  # incidents and heartbeats keep flowing while it is away
        time.sleep(max(0.0, 10.0 - (time.monotonic() - paused_at)))
        assert worker.alive()
        assert worker.get("/health")[0] == 200
    finally:
        valkey.proc.send_signal(signal.SIGCONT)
    resumed_at = time.monotonic()
    pending_at_resume = len(load.incidents) - len(processed(r, load))
    summary = verify(load, r)
    caught_up_s = time.monotonic() - resumed_at
    errors = redis_errors(worker) - errors_before
    load.close()
    assert errors > 0, "kaifong_redis_errors_total must rise while Redis is away"
    assert pending_at_resume > 0, "decisions must have waited for Redis (delayed, then made)"
    assert worker.metric("kaifong_events_in_total", outcome="invalid") == len(load.invalid)
    n_in = sum(worker.metric("kaifong_events_in_total", outcome=o) for o in ("ok", "duplicate", "invalid", "refused"))
    assert n_in == len(load.valid) + len(load.invalid), "count in = processed + dead-lettered"
    assert worker.metric("kaifong_internal_errors_total") == 0
    print(f"\n[redis paused 10s] {summary}; redis errors +{errors:.0f}; caught up {caught_up_s:.1f}s after "
          f"SIGCONT; total {time.monotonic() - t0:.1f}s")


def test_redis_restarted_with_aof_mid_load(tmp_path: Path, stacks: list[EmbeddedStack], start_worker: Any) -> None:
    t0 = time.monotonic()
    stack = own_stack(tmp_path, appendonly=True)
    stacks.append(stack)
    settings = stack_settings(stack)
    worker = start_worker(settings)
    r = redis.Redis.from_url(settings.redis_url)
    load = Load(settings)
    load.register_units()
    load.wait_units_indexed(r)
    load.publish(30, 1.0)
    wait_until(lambda: len(processed(r, load)) == 30, 30, "the first incidents processed")
    reserved_before = {u["unit_id"]: r.hget(f"kf:unit:{u['unit_id']}:live", "reserved_by") for u in load.units}
    errors_before = redis_errors(worker)

    valkey = service(stack, "redis")
    valkey.stop()  # SIGTERM: Valkey exits; the AOF (fsync per write) holds every acknowledged write
    stopped_at = time.monotonic()
    load.publish(40, 4.0, start=30)
    time.sleep(max(0.0, 10.0 - (time.monotonic() - stopped_at)))
    assert worker.alive() and worker.get("/health")[0] == 200
    valkey.start()
    restarted_at = time.monotonic()
    r = redis.Redis.from_url(settings.redis_url)
    pending_at_restart = len(load.incidents) - len(processed(r, load))
    # The data survived the restart: reservations made before it are all still there.
    assert {u: r.hget(f"kf:unit:{u}:live", "reserved_by") for u in reserved_before} == reserved_before
    summary = verify(load, r)
    caught_up_s = time.monotonic() - restarted_at
    errors = redis_errors(worker) - errors_before
    load.close()
    assert errors > 0, "kaifong_redis_errors_total must rise while Redis is down"
    assert pending_at_restart > 0, "decisions must have waited for Redis (delayed, then made)"
    n_in = sum(worker.metric("kaifong_events_in_total", outcome=o) for o in ("ok", "duplicate", "invalid", "refused"))
    assert n_in == len(load.valid) + len(load.invalid), "count in = processed + dead-lettered"
    assert worker.metric("kaifong_internal_errors_total") == 0
    print(f"\n[redis restarted, AOF] {summary}; redis errors +{errors:.0f}; caught up {caught_up_s:.1f}s after "
          f"restart; total {time.monotonic() - t0:.1f}s")


# -- c: the broker restarted (the embedded broker loses everything) -----------------------------------------
def test_broker_restart_loss_detected_and_worker_continues(tmp_path: Path, stacks: list[EmbeddedStack],
                                                           start_worker: Any) -> None:
    t0 = time.monotonic()
    stack = own_stack(tmp_path)
    stacks.append(stack)
    settings = stack_settings(stack)
    worker = start_worker(settings)
    r = redis.Redis.from_url(settings.redis_url)
    load = Load(settings)
    load.register_units()
    load.wait_units_indexed(r)
    load.publish(30, 1.0)
    wait_until(lambda: len(processed(r, load)) == 30, 30, "the incidents before the restart processed")
    assert worker.metric("kaifong_broker_data_loss") == 0
    time.sleep(1.5)  # the watch has seen the end offsets of this load
    # An integrator's long-lived publisher, created before the restart and used after it.
    publisher = Publisher(settings)
    template = next(iter(load.incidents.values()))

    def report(n: int) -> dict[str, Any]:
        return {**template, "event_id": f"pub-{n}", "incident_id": f"{load.tag}-pub{n}",
                "reported_at": datetime.now(UTC).isoformat()}

    publisher.publish("incident-reported", report(1))

    tansu = service(stack, "broker")
    tansu.stop()
    tansu.start()
    restarted_at = time.monotonic()
    detect_s = wait_until(lambda: worker.metric("kaifong_broker_data_loss") == 1, 30, "the loss detected")
    log = worker.log_path.read_text("utf-8", "replace")
    lines = [line for line in log.splitlines() if "broker lost data:" in line]
    assert any("[ERROR]" in line and ("topics vanished" in line or "end offsets went backwards" in line)
               for line in lines), lines
    assert any("topic catalogue recreated" in line for line in lines), lines

    # The pipeline goes on: new units and incidents published after the restart are processed.
    before = set(load.incidents)
    load.valid.clear()
    load.invalid.clear()
    load.incidents.clear()
    load.units.clear()
    load.last_seq.clear()
    load.tag = uuid.uuid4().hex[:6]
    load.producer.close(1)
    load.connect()
    r.delete(*[f"kf:geo:avail:{k}" for k in set(KINDS)])  # the first load's units hold reservations
    load.register_units()
    load.wait_units_indexed(r, timeout=60)
    load.publish(30, 1.0, start=1000)
    summary = verify(load, r, timeout=90)
    resumed_s = time.monotonic() - restarted_at
    load.close()
    assert before.isdisjoint(load.incidents)
    # The restarted broker forgot every producer id: the publisher still sends (an idempotent
    # kafka-python producer retried UnknownProducerIdError forever here, until its timeout).
    publisher.publish("incident-reported", report(2))
    publisher.close()
    wait_until(lambda: r.exists("kf:seen:incident-reported:pub-2") == 1, 60,
               "the report published after the restart processed")
    wait_until(lambda: worker.get("/ready")[0] == 200, 30, "ready again")
    assert worker.alive()
    print(f"\n[broker restart] loss detected {detect_s:.1f}s after the restart; after it: {summary}; "
          f"processing again within {resumed_s:.1f}s; total {time.monotonic() - t0:.1f}s")


# -- d: Redis made slow (20-50 ms added per packet by a proxy) --------------------------------------------
class LatencyProxy:
    """A TCP proxy on 127.0.0.1 adding ``delay`` (a random 20-50 ms when on) to every chunk, each
    direction, order kept. Runs its own event loop in a thread."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.slow = False
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.server: asyncio.base_events.Server | None = None
        self.rng = random.Random(5)

    def delay(self) -> float:
        return self.rng.uniform(0.020, 0.050) if self.slow else 0.0

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def delayed_writer() -> None:
            release = 0.0
            while (item := await queue.get()) is not None:
                due, chunk = item
                release = max(release, due)
                await asyncio.sleep(max(0.0, release - self.loop.time()))
                writer.write(chunk)
                await writer.drain()
            writer.close()

        task = asyncio.ensure_future(delayed_writer())
        try:
            while chunk := await reader.read(65536):
                queue.put_nowait((self.loop.time() + self.delay(), chunk))
        except OSError:
            pass
        finally:
            queue.put_nowait(None)
            with contextlib.suppress(OSError):
                await task

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> LatencyProxy:
        self.thread.start()
        self.ready.wait(5)
        return self

    def stop(self) -> None:
        def shutdown() -> None:
            if self.server is not None:
                self.server.close()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.stop()

        self.loop.call_soon_threadsafe(shutdown)
        self.thread.join(5)


def histogram_mean(worker: Any, name: str, **labels: str) -> tuple[float, float]:
    return worker.metric(name + "_sum", **labels), worker.metric(name + "_count", **labels)


def test_redis_slow_20_to_50ms(tmp_path: Path, stacks: list[EmbeddedStack], start_worker: Any) -> None:
    t0 = time.monotonic()
    stack = own_stack(tmp_path)
    stacks.append(stack)
    assert stack.redis_port is not None
    proxy = LatencyProxy(stack.redis_port).start()
    try:
        settings = stack_settings(stack, redis_url=f"redis://127.0.0.1:{proxy.port}/0")
        worker = start_worker(settings)
        r = redis.Redis.from_url(stack.redis_url)  # the test's own reads go straight to Valkey
        load = Load(settings)
        load.register_units()
        load.wait_units_indexed(r)

        measured: tuple[tuple[str, dict[str, str]], ...] = (
            ("kaifong_processing_seconds", {"agent": "incidents_reported"}), ("kaifong_redis_call_seconds", {}),
            ("kaifong_decision_seconds", {}), ("kaifong_decision_stored_seconds", {}))

        def phase(count: int, start: int) -> dict[str, float]:
            before = {m: histogram_mean(worker, m, **lab) for m, lab in measured}
            load.publish(count, 1.0, start=start)
            wait_until(lambda: len(processed(r, load)) == len(load.incidents), 60, "the phase processed")
            out = {}
            for m, lab in measured:
                s, c = histogram_mean(worker, m, **lab)
                out[m] = (s - before[m][0]) / max(1.0, c - before[m][1])
            return out

        fast = phase(30, 0)
        proxy.slow = True
        slow = phase(30, 30)
        proxy.slow = False
        summary = verify(load, r)
        load.close()
        # Degrades: every Redis round trip now costs 40-100 ms more (a delay each way).
        assert slow["kaifong_redis_call_seconds"] >= fast["kaifong_redis_call_seconds"] + 0.030, (fast, slow)
        assert slow["kaifong_processing_seconds"] >= fast["kaifong_processing_seconds"] + 0.040, (fast, slow)
        assert slow["kaifong_decision_seconds"] > fast["kaifong_decision_seconds"], (fast, slow)
        # The worker's own decision time counts its Redis round trips (at least two before the
        # decision is stored: open, reserve) and not the broker's acknowledgement after them.
        assert slow["kaifong_decision_stored_seconds"] >= fast["kaifong_decision_stored_seconds"] + 0.060, (fast, slow)
        for ph in (fast, slow):
            assert 0 < ph["kaifong_decision_stored_seconds"] < ph["kaifong_decision_seconds"], ph
        # ... and drops nothing.
        n_in = sum(worker.metric("kaifong_events_in_total", outcome=o)
                   for o in ("ok", "duplicate", "invalid", "refused"))
        assert n_in == len(load.valid) + len(load.invalid), "count in = processed + dead-lettered"
        assert worker.metric("kaifong_internal_errors_total") == 0
        print(f"\n[redis slow] {summary}; mean per incident fast/slow: processing "
              f"{fast['kaifong_processing_seconds'] * 1000:.1f}/{slow['kaifong_processing_seconds'] * 1000:.1f} ms, "
              f"redis call {fast['kaifong_redis_call_seconds'] * 1000:.1f}/"
              f"{slow['kaifong_redis_call_seconds'] * 1000:.1f} ms, decision "
              f"{fast['kaifong_decision_seconds'] * 1000:.1f}/{slow['kaifong_decision_seconds'] * 1000:.1f} ms; "
              f"total {time.monotonic() - t0:.1f}s")
    finally:
        proxy.stop()


# -- the broker watch's bookkeeping, without a broker ------------------------------------------------------
def test_broker_watch_compare_and_forget() -> None:
    """What counts as a loss (end offsets backwards, a topic gone, partitions changed), that a loss
    is reported once, and that Faust's read positions of lost partitions are forgotten."""
    from aiokafka.structs import TopicPartition as TP

    from kaifong.agents.flows.brokerwatch import BrokerWatch, forget_positions

    watch = BrokerWatch(Settings(topic_prefix="w."))
    a0, a1, b0 = TP("w.a", 0), TP("w.a", 1), TP("w.b", 0)
    assert not watch.compare({"w.a": 2}, {a0: 5, a1: 7})  # first sight: nothing to compare with
    assert not watch.compare({"w.a": 2, "w.b": 1}, {a0: 6, a1: 7, b0: 1})  # growth, a new topic
    loss = watch.compare({"w.a": 2, "w.b": 1}, {a0: 0, a1: 7, b0: 1})
    assert loss and loss.rewound == ["w.a[0]: end 6 → 0"] and loss.partitions == {a0}
    assert not watch.compare({"w.a": 2, "w.b": 1}, {a0: 1, a1: 7, b0: 1}), "a loss is reported once"
    loss = watch.compare({"w.a": 2}, {a0: 1, a1: 7})
    assert loss.vanished == ["w.b"] and loss.partitions == {b0}
    loss = watch.compare({"w.a": 1}, {a0: 1})
    assert loss.repartitioned == ["w.a: 2 → 1 partitions"] and "partition counts changed" in loss.describe()

    class FakeConsumer:
        def __init__(self) -> None:
            self._read_offset = {a0: 41, a1: 9}
            self._committed_offset = {a0: 40, a1: 9}
            self._acked = {a0: [41]}
            self.sought: list[tuple[TP, int]] = []

        def assignment(self) -> set[TP]:
            return {a0, a1}

        def seek(self, tp: TP, offset: int) -> None:
            self.sought.append((tp, offset))

    class FakeApp:
        consumer = FakeConsumer()

    forget_positions(FakeApp, {a0, b0})  # b0 is not this worker's: untouched
    assert FakeApp.consumer._read_offset == {a1: 9} and FakeApp.consumer._committed_offset == {a1: 9}
    assert FakeApp.consumer._acked == {} and FakeApp.consumer.sought == [(a0, 0)]
