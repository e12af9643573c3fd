"""kaifong.agents.bench — ``kaifong bench``: how fast kaifong is, beside the limit of this machine.

Layer: top (it starts a broker, Redis and worker processes, and drives them). One run measures,
on the same broker and Redis:

1. the same-run baseline: a plain aiokafka consume → produce pass-through of the status events;
2. kaifong's sustained unit-status throughput through its real path (validate, dedupe, state,
   geo index) in one worker process, and its ratio to the baseline;
3. the broker's own produce → consume latency floor (p50/p99) with the worker's client settings;
4. reported → assignment latency at a fixed incident rate while status traffic runs at half of
   kaifong's measured maximum, and the worker's internal decision time;
5. escalation lateness (raised_at − deadline_at) with 1,000 open incidents;
6. CPU seconds per 1,000 events of the worker, the broker and Redis, and the worker's peak RSS
   with the whole city loaded and 10,000 open incidents.

Every phase checks that nothing was lost; a run that lost events reports no figure and exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from kaifong.agents.clock import initial_rings
from kaifong.streams import security
from kaifong.streams.admin import ensure_topics, wait_for_broker
from kaifong.streams.city import generate
from kaifong.streams.embedded import EmbeddedStack, free_port
from kaifong.streams.settings import Settings
from kaifong.streams.topics import TopicSpec


class BenchLoss(RuntimeError):
    """Events went missing in a phase: its figures must not be reported."""


def check_loss(phase: str, sent: int, received: int) -> None:
    """Raise :class:`BenchLoss` unless every event sent was received.

    >>> check_loss("x", 10, 10)
    >>> check_loss("x", 10, 9)
    Traceback (most recent call last):
    ...
    kaifong.agents.bench.BenchLoss: x: 1 of 10 events lost — no figure is reported from this run
    """
    if received < sent:
        raise BenchLoss(f"{phase}: {sent - received} of {sent} events lost — no figure is reported from this run")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values`` by nearest rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus-style quantile from cumulative ``(upper_bound, count)`` buckets."""
    if not buckets or buckets[-1][1] == 0:
        return math.nan
    total = buckets[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / max(count - prev_count, 1e-9))
        prev_bound, prev_count = bound, count
    return prev_bound


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a process in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


@dataclass
class WorkerHandle:
    """A `kaifong worker` subprocess started by the bench."""

    settings: Settings
    proc: subprocess.Popen[bytes]

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.settings.web_port}/metrics", timeout=5) as r:
            text: str = r.read().decode()
            return text

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` matching ``labels``."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """Cumulative buckets of a histogram (label-less, or summed over labels)."""
        acc: dict[float, float] = {}
        for line in self.metrics_text().splitlines():
            if line.startswith(name + "_bucket{"):
                le = re.search(r'le="([^"]+)"', line)
                if le:
                    bound = math.inf if le.group(1) == "+Inf" else float(le.group(1))
                    acc[bound] = acc.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
        return sorted(acc.items())

    def wait_ready(self, timeout: float = 90) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.settings.web_port}/ready", timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError("worker not ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Bench:
    """One bench run: its settings, processes and results."""

    settings: Settings
    workdir: Path
    events: int = 200_000
    incident_rate: float = 100.0
    duration_s: float = 20.0
    units: int = 23_000
    open_incidents: int = 10_000
    drop_every: int = 0  # test hook: make the baseline lose events (the loss check must catch it)
    results: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = print
    stack: EmbeddedStack | None = None
    worker: WorkerHandle | None = None

    # -- plumbing -----------------------------------------------------------------------------
    def topic(self, suffix: str) -> str:
        return self.settings.topic_prefix + suffix

    def start_worker(self) -> WorkerHandle:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAIFONG_")}
        env.update(self.settings.to_env())
        env["KAIFONG_DATA_DIR"] = str(self.workdir / "worker")
        env["KAIFONG_LOG_LEVEL"] = "warning"
        log = (self.workdir / "worker.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "kaifong.agents.cli", "worker", "--no-ensure-topics"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        self.worker = WorkerHandle(self.settings, proc)
        self.worker.wait_ready()
        return self.worker

    async def producer(self, linger_ms: int = 50) -> AIOKafkaProducer:
        p = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap_servers, linger_ms=linger_ms,
                             max_batch_size=1 << 20, acks=1, max_request_size=4 << 20,
                             **security.aiokafka_kwargs(self.settings))
        await p.start()
        return p

    def status_events(self, units: list[dict[str, Any]], n: int, seq0: int) -> list[tuple[bytes, bytes]]:
        now = datetime.now(UTC).isoformat()
        out = []
        for i in range(n):
            u = units[i % len(units)]
            out.append((u["unit_id"].encode(), orjson.dumps({
                "event_id": f"s{seq0}-{i}", "unit_id": u["unit_id"], "status": "available", "at": now,
                "seq": seq0 + i, "location": u["home"]})))
        return out

    async def produce_all(self, topic: str, records: list[tuple[bytes, bytes]]) -> float:
        p = await self.producer()
        started = time.perf_counter()
        try:
            futures = [await p.send(topic, v, key=k) for k, v in records]
            await asyncio.gather(*futures)
        finally:
            await p.stop()
        return time.perf_counter() - started

    def wait_metric(self, name: str, target: float, timeout: float, **labels: str) -> tuple[float, float]:
        """Poll until the metric reaches ``target``; return (first-change time, done time)."""
        assert self.worker is not None
        base_started = time.monotonic()
        first = None
        last = 0.0
        while time.monotonic() - base_started < timeout:
            last = self.worker.metric(name, **labels)
            now = time.monotonic()
            if first is None and last > 0:
                first = now
            if last >= target:
                return first or now, now
            time.sleep(0.05)
        return first or time.monotonic(), math.nan

    def wait_committed(self, group: str, topic: str, target: int, timeout: float) -> tuple[float, int, float]:
        """Poll the broker until ``group`` has committed ``target`` records of ``topic`` in all.

        Progress is read from the broker (the consumer group's committed offsets), not from the
        worker: polling the worker's /metrics 20 times a second would itself cost the worker
        a large share of its CPU. Returns (time progress was first seen, records committed by
        then, time ``target`` was reached — NaN on timeout).
        """
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.settings.bootstrap_servers,
                                 **security.kafka_python_kwargs(self.settings))
        try:
            started = time.monotonic()
            first: tuple[float, int] | None = None
            while time.monotonic() - started < timeout:
                offsets = admin.list_group_offsets(group).get(group, {})
                done = sum(max(0, om.offset) for tp, om in offsets.items() if tp.topic == topic)
                now = time.monotonic()
                if first is None and done > 0:
                    first = (now, done)
                if done >= target:
                    return (*(first or (now, done)), now)
                time.sleep(0.02)
            return (*(first or (time.monotonic(), 0)), math.nan)
        finally:
            admin.close()

    # -- phases -------------------------------------------------------------------------------
    async def baseline(self, records: list[tuple[bytes, bytes]]) -> float:
        """Plain aiokafka pass-through of the same events on the same broker (events/s)."""
        src, dst = self.topic("bench.baseline.in"), self.topic("bench.baseline.out")
        await self.produce_all(src, records)
        consumer = AIOKafkaConsumer(src, bootstrap_servers=self.settings.bootstrap_servers,
                                    group_id=f"{self.settings.app_id}-baseline", auto_offset_reset="earliest",
                                    enable_auto_commit=False, fetch_max_wait_ms=self.settings.firehose_fetch_wait_ms,
                                    max_partition_fetch_bytes=8 << 20, fetch_max_bytes=32 << 20,
                                    **security.aiokafka_kwargs(self.settings))
        producer = await self.producer(linger_ms=20)
        await consumer.start()
        forwarded = 0
        seen = 0
        started = None
        try:
            deadline = time.monotonic() + 120
            while seen < len(records) and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=200, max_records=self.settings.status_batch_max)
                if started is None and batches:
                    started = time.perf_counter()
                futures = []
                for recs in batches.values():
                    for rec in recs:
                        seen += 1
                        if self.drop_every and seen % self.drop_every == 0:
                            continue  # the test hook: this event is "lost"
                        futures.append(await producer.send(dst, rec.value, key=rec.key))
                await asyncio.gather(*futures)
                forwarded += len(futures)
                await consumer.commit()
            elapsed = time.perf_counter() - (started or time.perf_counter())
        finally:
            await consumer.stop()
            await producer.stop()
        check_loss("baseline pass-through", len(records), forwarded)
        return len(records) / elapsed

    async def floor(self, n: int = 1000, rate: float = 200.0) -> tuple[float, float]:
        """Produce → consume latency of the broker alone (p50, p99 in ms)."""
        topic = self.topic("bench.floor")
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.settings.bootstrap_servers,
                                    fetch_max_wait_ms=self.settings.fetch_max_wait_ms, auto_offset_reset="latest",
                                    **security.aiokafka_kwargs(self.settings))
        await consumer.start()
        await consumer.seek_to_end()
        producer = await self.producer(linger_ms=self.settings.producer_linger_ms)
        sent: dict[bytes, float] = {}
        lat: list[float] = []

        async def consume() -> None:
            async for rec in consumer:
                t = sent.pop(rec.value, None)
                if t is not None:
                    lat.append(time.perf_counter() - t)

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.5)
        try:
            for i in range(n):
                v = b"floor-%d" % i
                sent[v] = time.perf_counter()
                await producer.send(topic, v, key=v)
                await asyncio.sleep(1 / rate)
            deadline = time.monotonic() + 10
            while sent and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await producer.stop()
            await consumer.stop()
        check_loss("broker floor", n, len(lat))
        return percentile(lat, 0.5) * 1000, percentile(lat, 0.99) * 1000

    async def incidents_under_load(self, units: list[dict[str, Any]], status_rate: float) -> dict[str, float]:
        """Incidents at a fixed rate while status traffic runs; end-to-end and decision times."""
        assert self.worker is not None
        rng = random.Random(42)
        tag = uuid.uuid4().hex[:6]
        consumer = AIOKafkaConsumer(self.topic("dispatch.assignments.v1"),
                                    bootstrap_servers=self.settings.bootstrap_servers,
                                    fetch_max_wait_ms=self.settings.fetch_max_wait_ms, auto_offset_reset="latest",
                                    **security.aiokafka_kwargs(self.settings))
        await consumer.start()
        await consumer.seek_to_end()
        incidents = await self.producer(linger_ms=0)
        # The status traffic comes from a process of its own: generating 10,000+ events/s in
        # this one would delay the very timestamps this phase measures.
        ctx = multiprocessing.get_context("spawn")
        stop_bg, bg_sent = ctx.Event(), ctx.Value("q", 0)
        bg_proc = ctx.Process(target=status_traffic, daemon=True, args=(
            self.settings, self.topic("units.status.v1"),
            [(u["unit_id"], u["home"]) for u in units], status_rate, stop_bg, bg_sent))
        sent: dict[str, tuple[float, int]] = {}
        done: dict[str, float] = {}
        got: dict[str, int] = {}
        dec_before = self.worker.buckets("kaifong_decision_seconds")

        async def consume() -> None:
            async for rec in consumer:
                a = orjson.loads(rec.value)
                iid = a["incident_id"]
                if iid in sent and a["attempt"] == 0:
                    got[iid] = got.get(iid, 0) + 1
                    if got[iid] == sent[iid][1]:
                        done[iid] = time.perf_counter() - sent[iid][0]

        async def resolve_later(iid: str, at: datetime) -> None:
            await asyncio.sleep(3)
            await incidents.send(self.topic("incidents.updates.v1"), orjson.dumps({
                "event_id": f"res-{iid}", "incident_id": iid, "kind": "resolved",
                "at": (at + timedelta(seconds=3)).isoformat()}), key=iid.encode())

        reader = asyncio.ensure_future(consume())
        bg_proc.start()
        resolvers = []
        while bg_sent.value == 0 and bg_proc.is_alive():  # the traffic runs before the first incident
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        bg0, bg_t0 = bg_sent.value, time.perf_counter()
        try:
            n = int(self.incident_rate * self.duration_s)
            started = time.perf_counter()
            for i in range(n):
                u = rng.choice(units)
                iid = f"b{tag}-{i}"
                severity = rng.choice([1, 2, 3, 3, 4, 4])
                now = datetime.now(UTC)
                ev = {"event_id": f"be{tag}-{i}", "incident_id": iid, "category": rng.choice(
                    ["fire", "violence", "medical", "crowd", "traffic"]), "severity": severity,
                    "reported_at": now.isoformat(), "location": u["home"], "district": u["district"],
                    "grid": u["grid"], "venue_id": u["venue"]["id"], "source": "call_110", "exercise": False}
                rings = len(initial_rings(severity, [r.number for r in self.settings.ring_table()]))
                sent[iid] = (time.perf_counter(), rings)
                await incidents.send(self.topic("incidents.reported.v1"), orjson.dumps(ev), key=iid.encode())
                resolvers.append(asyncio.ensure_future(resolve_later(iid, now)))
                await asyncio.sleep(max(0.0, started + (i + 1) / self.incident_rate - time.perf_counter()))
            deadline = time.monotonic() + 60
            while len(done) < n and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:
            bg_rate = (bg_sent.value - bg0) / (time.perf_counter() - bg_t0)
            stop_bg.set()
            await asyncio.gather(*resolvers, return_exceptions=True)
            bg_proc.join(10)
            if bg_proc.is_alive():
                bg_proc.kill()
            reader.cancel()
            await incidents.stop()
            await consumer.stop()
        processed = self.worker.metric("kaifong_events_in_total", topic=self.topic("incidents.reported.v1"))
        self.log(f"      worker took {processed:,.0f} reports in all; {len(done)} of {n} incidents fully assigned "
                 f"as seen by the bench")
        check_loss("incidents (all rings assigned)", n, len(done))
        lat = list(done.values())
        dec_after = self.worker.buckets("kaifong_decision_seconds")
        before = dict(dec_before)
        dec = [(b, c - before.get(b, 0.0)) for b, c in dec_after]
        return {"e2e_p50_ms": percentile(lat, 0.5) * 1000, "e2e_p95_ms": percentile(lat, 0.95) * 1000,
                "e2e_p99_ms": percentile(lat, 0.99) * 1000,
                "decision_p50_ms": histogram_quantile(dec, 0.5) * 1000,
                "decision_p99_ms": histogram_quantile(dec, 0.99) * 1000, "incidents": n,
                "status_background_achieved_per_s": bg_rate}

    async def escalation_lateness(self, units: list[dict[str, Any]], n: int = 1000) -> tuple[float, float]:
        """1,000 open incidents whose ring-1 deadlines fall over ~10 s: lateness p50/p99 (ms)."""
        tag = uuid.uuid4().hex[:6]
        consumer = AIOKafkaConsumer(self.topic("incidents.escalations.v1"),
                                    bootstrap_servers=self.settings.bootstrap_servers,
                                    fetch_max_wait_ms=self.settings.fetch_max_wait_ms, auto_offset_reset="latest",
                                    **security.aiokafka_kwargs(self.settings))
        await consumer.start()
        await consumer.seek_to_end()
        producer = await self.producer(linger_ms=5)
        target = self.settings.ring_table()[0].target_s
        base = datetime.now(UTC) - timedelta(seconds=target - 5)
        rng = random.Random(7)
        for i in range(n):
            u = rng.choice(units)
            iid = f"l{tag}-{i}"
            await producer.send(self.topic("incidents.reported.v1"), orjson.dumps({
                "event_id": f"le{tag}-{i}", "incident_id": iid, "category": "other", "severity": 4,
                "reported_at": (base + timedelta(milliseconds=10 * i)).isoformat(), "location": u["home"],
                "district": u["district"], "grid": u["grid"], "source": "sensor", "exercise": False}),
                key=iid.encode())
        await producer.flush()
        await producer.stop()
        lateness: dict[str, float] = {}
        deadline = time.monotonic() + 60
        try:
            while len(lateness) < n and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                for recs in batches.values():
                    for rec in recs:
                        e = orjson.loads(rec.value)
                        if (e["incident_id"].startswith(f"l{tag}-") and e["ring"] == 1
                                and e["reason"] == "ring_deadline_missed" and e["notification"] == 0):
                            lateness[e["incident_id"]] = (datetime.fromisoformat(e["raised_at"])
                                                          - datetime.fromisoformat(e["deadline_at"])).total_seconds()
        finally:
            await consumer.stop()
        check_loss("escalations (one per ring-1 deadline)", n, len(lateness))
        values = list(lateness.values())
        return percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000

    async def fill_open_incidents(self, units: list[dict[str, Any]], n: int) -> None:
        """Open ``n`` more incidents (far-off deadlines) so the worker holds a city's worth."""
        tag = uuid.uuid4().hex[:6]
        producer = await self.producer(linger_ms=20)
        now = datetime.now(UTC).isoformat()
        rng = random.Random(3)
        for i in range(n):
            u = rng.choice(units)
            iid = f"o{tag}-{i}"
            await producer.send(self.topic("incidents.reported.v1"), orjson.dumps({
                "event_id": f"oe{tag}-{i}", "incident_id": iid, "category": "other", "severity": 4,
                "reported_at": now, "location": u["home"], "district": u["district"], "source": "sensor",
                "exercise": False}), key=iid.encode())
        await producer.flush()
        await producer.stop()

    # -- the run ------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        s = self.settings
        r = self.results
        r["machine"] = {"cores": os.cpu_count(), "python": sys.version.split()[0],
                        "broker": "embedded Tansu (memory)" if self.stack else s.broker_url,
                        "redis": "embedded Valkey" if self.stack else "external"}
        ensure_topics(s)
        for extra in ("bench.baseline.in", "bench.baseline.out", "bench.floor"):
            ensure_topics(s, (TopicSpec(extra, "k", "unit-status", "input"),))
        city = generate(seed=7, units=self.units)
        units = city.units
        records = self.status_events(units, self.events, seq0=1)

        self.log(f"[1/6] baseline: aiokafka pass-through of {self.events:,} status events …")
        r["baseline_events_per_s"] = await self.baseline(records)

        self.log(f"[2/6] kaifong status path: {len(units):,} units registered, then {self.events:,} statuses …")
        await self.produce_all(self.topic("units.registry.v1"),
                               [(u["unit_id"].encode(), orjson.dumps(u)) for u in units])
        worker = self.start_worker()
        _, done = self.wait_metric("kaifong_events_in_total", len(units), 120,
                                   topic=self.topic("units.registry.v1"))
        if math.isnan(done):
            raise BenchLoss("registry: not every unit was registered")
        worker.stop()
        await self.produce_all(self.topic("units.status.v1"), records)
        worker = self.start_worker()
        pids = {"worker": worker.proc.pid}
        if self.stack:
            pids["broker"] = self.stack.services[0].proc.pid  # type: ignore[union-attr]
            pids["redis"] = self.stack.services[1].proc.pid  # type: ignore[union-attr]
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        first, first_count, done = self.wait_committed(f"{s.app_id}-units", self.topic("units.status.v1"),
                                                       self.events, 300)
        cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
        ok = worker.metric("kaifong_events_in_total", topic=self.topic("units.status.v1"), outcome="ok")
        check_loss("kaifong status path", self.events, int(ok))
        if math.isnan(done):
            raise BenchLoss("kaifong status path: not every status event was committed within 300 s")
        # The rate between the first and the last commit seen: what was committed before the
        # first sighting is not counted in the numerator either.
        r["kaifong_status_events_per_s"] = (self.events - first_count) / max(done - first, 1e-3)
        r["throughput_ratio_vs_aiokafka"] = r["kaifong_status_events_per_s"] / r["baseline_events_per_s"]
        self.log(f"      baseline {r['baseline_events_per_s']:,.0f}/s, "
                 f"kaifong {r['kaifong_status_events_per_s']:,.0f}/s (ratio {r['throughput_ratio_vs_aiokafka']:.2f})")
        r["cpu_seconds_per_1000_events"] = {k: (cpu1[k] - cpu0[k]) / (self.events / 1000) for k in pids}

        self.log("[3/6] broker floor: produce → consume latency …")
        p50, p99 = await self.floor()
        r["broker_floor_p50_ms"], r["broker_floor_p99_ms"] = p50, p99

        rate = r["kaifong_status_events_per_s"] / 2
        self.log(f"[4/6] incidents at {self.incident_rate:g}/s for {self.duration_s:g}s with status traffic at "
                 f"{rate:,.0f}/s …")
        r["status_background_per_s"] = rate
        r.update(await self.incidents_under_load(units, rate))

        self.log("[5/6] escalation lateness with 1,000 open incidents …")
        r["escalation_lateness_p50_ms"], r["escalation_lateness_p99_ms"] = await self.escalation_lateness(units)

        opened = int(worker.metric("kaifong_incidents_open", exercise="false"))
        more = max(0, self.open_incidents - opened)
        self.log(f"[6/6] peak RSS with {len(units):,} units and {self.open_incidents:,} open incidents …")
        await self.fill_open_incidents(units, more)
        self.wait_metric("kaifong_events_in_total", opened + more + 1, 120, topic=self.topic("incidents.reported.v1"))
        await asyncio.sleep(6)  # one gauge sampling period
        r["open_incidents"] = worker.metric("kaifong_incidents_open", exercise="false")
        r["worker_peak_rss_mb"] = peak_rss_mb(worker.proc.pid)
        return r


def status_traffic(settings: Settings, topic: str, units: list[tuple[str, dict[str, float]]], rate: float,
                   stop: Any, sent: Any) -> None:
    """Background unit-status traffic at ``rate`` events/s until ``stop`` is set (own process)."""

    with contextlib.suppress(OSError):
        # A load generator, not the system measured: when the cores are contended the
        # processes under measurement run first (the achieved rate is reported).
        os.nice(10)

    async def main() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=50,
                                    max_batch_size=1 << 20, acks=1, max_request_size=4 << 20,
                                    **security.aiokafka_kwargs(settings))
        await producer.start()
        seq = int(time.time() * 1000)
        i = 0
        now = datetime.now(UTC).isoformat()
        tick = 0.05
        per_tick = max(1, int(rate * tick))
        started = time.perf_counter()
        try:
            while not stop.is_set():
                for _ in range(per_tick):
                    unit_id, home = units[i % len(units)]
                    i += 1
                    await producer.send(topic, orjson.dumps({
                        "event_id": f"bg{seq}-{i}", "unit_id": unit_id, "status": "available", "at": now,
                        "seq": seq + i, "location": home}), key=unit_id.encode())
                sent.value = i
                await asyncio.sleep(max(0.0, started + (i / per_tick) * tick - time.perf_counter()))
        finally:
            await producer.stop()

    asyncio.run(main())


TARGETS = {
    "throughput_ratio_vs_aiokafka": (">=", 0.5),
    "decision_p99_ms": ("<=", 10.0),
    "escalation_lateness_p99_ms": ("<=", 500.0),
    "worker_peak_rss_mb": ("<=", 400.0),
}


def verdicts(r: dict[str, Any]) -> dict[str, bool]:
    """Which targets the run met (the e2e one is relative to the same-run broker floor)."""
    out = {}
    for key, (op, bound) in TARGETS.items():
        if key in r:
            out[key] = r[key] >= bound if op == ">=" else r[key] <= bound
    if "e2e_p99_ms" in r and "broker_floor_p99_ms" in r:
        out["e2e_p99_ms"] = r["e2e_p99_ms"] <= r["broker_floor_p99_ms"] + 15
    return out


def table(r: dict[str, Any]) -> str:
    """The human-readable result table."""
    v = verdicts(r)

    def row(label: str, key: str, fmt: str, target: str = "") -> str:
        value = r.get(key)
        text = "—" if value is None else format(value, fmt)
        mark = "" if key not in v else ("  ✔" if v[key] else "  ✘")
        return f"| {label:<52} | {text:>12} | {target:<26}{mark} |"

    m = r.get("machine", {})
    lines = [f"kaifong bench — {m.get('cores')} cores, Python {m.get('python')}, broker: {m.get('broker')}, "
             f"redis: {m.get('redis')}",
             f"| {'measure':<52} | {'value':>12} | {'target':<28} |",
             "|" + "-" * 54 + "|" + "-" * 14 + "|" + "-" * 30 + "|",
             row("aiokafka pass-through baseline (events/s)", "baseline_events_per_s", ",.0f"),
             row("kaifong unit-status path, 1 worker (events/s)", "kaifong_status_events_per_s", ",.0f"),
             row("ratio to the baseline", "throughput_ratio_vs_aiokafka", ".2f", "≥ 0.50"),
             row("broker floor produce→consume p50 (ms)", "broker_floor_p50_ms", ".1f"),
             row("broker floor produce→consume p99 (ms)", "broker_floor_p99_ms", ".1f"),
             row("status traffic during the incident phase (events/s)", "status_background_per_s", ",.0f"),
             row("  … achieved by the traffic process (events/s)", "status_background_achieved_per_s", ",.0f"),
             row("reported→assignment p50 (ms)", "e2e_p50_ms", ".1f"),
             row("reported→assignment p95 (ms)", "e2e_p95_ms", ".1f"),
             row("reported→assignment p99 (ms)", "e2e_p99_ms", ".1f", "≤ floor p99 + 15 ms"),
             row("decision inside the worker p50 (ms)", "decision_p50_ms", ".2f"),
             row("decision inside the worker p99 (ms)", "decision_p99_ms", ".2f", "≤ 10 ms"),
             row("escalation lateness p50 (ms), 1,000 open", "escalation_lateness_p50_ms", ".0f"),
             row("escalation lateness p99 (ms), 1,000 open", "escalation_lateness_p99_ms", ".0f", "≤ 500 ms"),
             row("worker peak RSS (MB), city + open incidents", "worker_peak_rss_mb", ".0f", "≤ 400 MB")]
    cpu = r.get("cpu_seconds_per_1000_events") or {}
    for name, value in cpu.items():
        lines.append(f"| {'CPU s per 1,000 status events: ' + name:<52} | {value:>12.3f} | {'':<28} |")
    if "open_incidents" in r:
        lines.append(f"| {'open incidents held at the RSS reading':<52} | {r['open_incidents']:>12,.0f} | {'':<28} |")
    return "\n".join(lines)


def main(argv_events: int, incident_rate: float, duration_s: float, json_path: str | None,
         broker_url: str | None, redis_url: str | None, units: int, open_incidents: int) -> int:
    """Run the bench (CLI entry); 0 when every phase lost nothing, 1 otherwise."""
    workdir = Path(tempfile.mkdtemp(prefix="kaifong-bench-"))
    tag = uuid.uuid4().hex[:6]
    stack = None
    if not broker_url:
        stack = EmbeddedStack(free_port(), None if redis_url else free_port(), workdir=workdir).start()
        broker_url = stack.broker_url
        redis_url = redis_url or stack.redis_url
    settings = replace(Settings.from_env(), broker_url=broker_url, redis_url=redis_url or "",
                       topic_prefix=f"bench{tag}.", app_id=f"bench-{tag}", web_port=free_port(),
                       data_dir=str(workdir / "worker"))
    bench = Bench(settings, workdir, events=argv_events, incident_rate=incident_rate, duration_s=duration_s,
                  units=units, open_incidents=open_incidents, stack=stack)
    code = 0
    try:
        wait_for_broker(settings)
        asyncio.run(bench.run())
    except BenchLoss as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        # Figures of a run that lost events are not reported; the partial ones stay in the JSON
        # under their own key, for diagnosis only.
        bench.results = {"machine": bench.results.get("machine"), "error": str(exc),
                         "partial_unverified": {k: v for k, v in bench.results.items() if k != "machine"}}
        code = 1
    finally:
        if bench.worker:
            bench.worker.stop()
        if stack:
            stack.stop()
    if code == 0:
        print()
        print(table(bench.results))
        bench.results["targets_met"] = verdicts(bench.results)
    if json_path:
        Path(json_path).write_bytes(orjson.dumps(bench.results, option=orjson.OPT_INDENT_2))
        print(f"\nwrote {json_path}")
    return code

