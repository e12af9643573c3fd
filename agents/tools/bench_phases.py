"""kaifong.agents.tools.bench_phases — the bench's measured phases, each a function of the rig it runs on.

Layer: agents/tools. Each phase sends its load (bench_load), reads the broker and the worker (bench_stack),
checks that nothing was lost and returns its figures (the names the report and the JSON use).
"""

from __future__ import annotations

import asyncio
import gc
import math
import multiprocessing
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from kaifong.agents.core.clock import initial_rings
from kaifong.agents.tools.bench_load import fill_open_incidents, produce_all, start_producer, status_traffic
from kaifong.agents.tools.bench_report import BenchLoss, check_loss, histogram_quantile, percentile
from kaifong.agents.tools.bench_stack import Rig, children, cpu_seconds, peak_rss_mb
from kaifong.streams import security


async def output_reader(rig: Rig, topic: str) -> AIOKafkaConsumer:
    """A consumer of one of the worker's output topics, from its end: what a phase produces."""
    settings = rig.settings
    consumer = AIOKafkaConsumer(rig.topic(topic), bootstrap_servers=settings.bootstrap_servers,
                                fetch_max_wait_ms=settings.fetch_max_wait_ms, auto_offset_reset="latest",
                                **security.aiokafka_kwargs(settings))
    await consumer.start()
    await consumer.seek_to_end()
    return consumer

async def baseline(rig: Rig, records: list[tuple[bytes, bytes]], drop_every: int = 0) -> float:
    """Plain aiokafka pass-through of the same events on the same broker (events/s).

    ``drop_every`` is a test hook: every n-th event is not forwarded (the loss check must catch it).
    """
    settings = rig.settings
    src, dst = rig.topic("bench.baseline.in"), rig.topic("bench.baseline.out")
    await produce_all(settings, src, records)
    consumer = AIOKafkaConsumer(src, bootstrap_servers=settings.bootstrap_servers,
                                group_id=f"{settings.app_id}-baseline", auto_offset_reset="earliest",
                                enable_auto_commit=False, fetch_max_wait_ms=settings.firehose_fetch_wait_ms,
                                max_partition_fetch_bytes=8 << 20, fetch_max_bytes=32 << 20,
                                **security.aiokafka_kwargs(settings))
    producer = await start_producer(settings, linger_ms=20)
    await consumer.start()
    forwarded = 0
    seen = 0
    started = None
    try:
        deadline = time.monotonic() + 120
        while seen < len(records) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=settings.status_batch_max)
            if started is None and batches:
                started = time.perf_counter()
            futures = []
            for recs in batches.values():
                for rec in recs:
                    seen += 1
                    if drop_every and seen % drop_every == 0:
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


def status_throughput(rig: Rig, events: int, baseline_per_s: float) -> dict[str, Any]:
    """kaifong's unit-status path: a worker started on ``events`` status events already in the
    topic; its rate, its ratio to the baseline, and CPU seconds per 1,000 events of each process."""
    worker = rig.start_worker()
    pids = rig.pids()
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    first, first_count, done = rig.wait_committed(f"{rig.settings.app_id}-units", rig.topic("units.status.v1"),
                                                  events, 300)
    cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
    ok = worker.metric("kaifong_events_in_total", topic=rig.topic("units.status.v1"), outcome="ok")
    check_loss("kaifong status path", events, int(ok))
    if math.isnan(done):
        raise BenchLoss("kaifong status path: not every status event was committed within 300 s")
    r: dict[str, Any] = {}
    # The rate between the first and the last commit seen: what was committed before the
    # first sighting is not counted in the numerator either.
    r["kaifong_status_events_per_s"] = (events - first_count) / max(done - first, 1e-3)
    r["throughput_ratio_vs_aiokafka"] = r["kaifong_status_events_per_s"] / baseline_per_s
    rig.log(f"      baseline {baseline_per_s:,.0f}/s, "
            f"kaifong {r['kaifong_status_events_per_s']:,.0f}/s (ratio {r['throughput_ratio_vs_aiokafka']:.2f})")
    per_1000 = {k: (cpu1[k] - cpu0[k]) / (events / 1000) for k in pids}
    if "firehose" in per_1000:  # the worker is both its processes; the firehose's share shown too
        per_1000 = {"worker": per_1000["worker"] + per_1000["firehose"],
                    "(of which its firehose)": per_1000.pop("firehose"),
                    **{k: v for k, v in per_1000.items() if k != "worker"}}
    r["cpu_seconds_per_1000_events"] = per_1000
    return r


async def floor(rig: Rig, n: int = 1000, rate: float = 200.0) -> tuple[float, float]:
    """Produce → consume latency of the broker alone (p50, p99 in ms)."""
    settings = rig.settings
    topic = rig.topic("bench.floor")
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.bootstrap_servers,
                                fetch_max_wait_ms=settings.fetch_max_wait_ms, auto_offset_reset="latest",
                                **security.aiokafka_kwargs(settings))
    await consumer.start()
    await consumer.seek_to_end()
    producer = await start_producer(settings, linger_ms=settings.producer_linger_ms)
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


async def incidents_under_load(rig: Rig, units: list[dict[str, Any]], status_rate: float, incident_rate: float,
                               duration_s: float) -> dict[str, float]:
    """Incidents at a fixed rate while status traffic runs; end-to-end and decision times."""
    worker = rig.worker
    assert worker is not None
    settings = rig.settings
    # This process timestamps every assignment: its own garbage collections must not walk
    # the city and earlier phases' objects inside the measured window.
    gc.collect()
    gc.freeze()
    rng = random.Random(42)
    tag = uuid.uuid4().hex[:6]
    consumer = await output_reader(rig, "dispatch.assignments.v1")
    incidents = await start_producer(settings, linger_ms=0)
    # The status traffic comes from a process of its own: generating 10,000+ events/s in
    # this one would delay the very timestamps this phase measures.
    ctx = multiprocessing.get_context("spawn")
    stop_bg, bg_sent = ctx.Event(), ctx.Value("q", 0)
    bg_proc = ctx.Process(target=status_traffic, daemon=True, args=(
        settings, rig.topic("units.status.v1"),
        [(u["unit_id"], u["home"]) for u in units], status_rate, stop_bg, bg_sent))
    sent: dict[str, tuple[float, int]] = {}
    done: dict[str, float] = {}
    got: dict[str, int] = {}
    # Histogram → result key: the decision with the broker's ack, and the worker's own part.
    decisions = {"kaifong_decision_seconds": "decision", "kaifong_decision_stored_seconds": "decision_stored"}
    dec_before = {name: dict(worker.buckets(name)) for name in decisions}

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
        await incidents.send(rig.topic("incidents.updates.v1"), orjson.dumps({
            "event_id": f"res-{iid}", "incident_id": iid, "kind": "resolved",
            "at": (at + timedelta(seconds=3)).isoformat()}), key=iid.encode())

    reader = asyncio.ensure_future(consume())
    if status_rate > 0:
        bg_proc.start()
    resolvers = []
    while status_rate > 0 and bg_sent.value == 0 and bg_proc.is_alive():  # traffic first
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    loaded_floor: dict[str, float] = {}
    if status_rate > 0:
        # The broker's own produce→consume floor under this same status load (the headline
        # floor is measured on an idle broker): what the loaded broker adds by itself.
        p50, p99 = await floor(rig)
        loaded_floor = {"floor_under_load_p50_ms": p50, "floor_under_load_p99_ms": p99}
    bg0, bg_t0 = bg_sent.value, time.perf_counter()
    try:
        n = int(incident_rate * duration_s)
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
            rings = len(initial_rings(severity, [r.number for r in settings.ring_table()]))
            sent[iid] = (time.perf_counter(), rings)
            await incidents.send(rig.topic("incidents.reported.v1"), orjson.dumps(ev), key=iid.encode())
            resolvers.append(asyncio.ensure_future(resolve_later(iid, now)))
            await asyncio.sleep(max(0.0, started + (i + 1) / incident_rate - time.perf_counter()))
        deadline = time.monotonic() + 60
        while len(done) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        bg_rate = (bg_sent.value - bg0) / (time.perf_counter() - bg_t0)
        stop_bg.set()
        await asyncio.gather(*resolvers, return_exceptions=True)
        if status_rate > 0:
            bg_proc.join(10)
            if bg_proc.is_alive():
                bg_proc.kill()
        reader.cancel()
        await incidents.stop()
        await consumer.stop()
    processed = worker.metric("kaifong_events_in_total", topic=rig.topic("incidents.reported.v1"))
    rig.log(f"      worker took {processed:,.0f} reports in all; {len(done)} of {n} incidents fully assigned "
            f"as seen by the bench")
    check_loss("incidents (all rings assigned)", n, len(done))
    lat = list(done.values())
    out = {"e2e_p50_ms": percentile(lat, 0.5) * 1000, "e2e_p95_ms": percentile(lat, 0.95) * 1000,
           "e2e_p99_ms": percentile(lat, 0.99) * 1000, "incidents": n,
           "status_background_achieved_per_s": bg_rate, **loaded_floor}
    # This phase's share of each decision histogram.
    for name, key in decisions.items():
        dec = [(b, c - dec_before[name].get(b, 0.0)) for b, c in worker.buckets(name)]
        out[f"{key}_p50_ms"] = histogram_quantile(dec, 0.5) * 1000
        out[f"{key}_p99_ms"] = histogram_quantile(dec, 0.99) * 1000
    return out


async def escalation_lateness(rig: Rig, units: list[dict[str, Any]], n: int = 1000) -> tuple[float, float]:
    """1,000 open incidents whose ring-1 deadlines fall over ~10 s: lateness p50/p99 (ms)."""
    settings = rig.settings
    tag = uuid.uuid4().hex[:6]
    consumer = await output_reader(rig, "incidents.escalations.v1")
    producer = await start_producer(settings, linger_ms=5)
    target = settings.ring_table()[0].target_s
    base = datetime.now(UTC) - timedelta(seconds=target - 5)
    rng = random.Random(7)
    for i in range(n):
        u = rng.choice(units)
        iid = f"l{tag}-{i}"
        await producer.send(rig.topic("incidents.reported.v1"), orjson.dumps({
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


async def peak_rss(rig: Rig, units: list[dict[str, Any]], open_incidents: int) -> dict[str, float]:
    """The worker's peak RSS (both its processes) with the city loaded and ``open_incidents`` open."""
    worker = rig.worker
    assert worker is not None
    opened = int(worker.metric("kaifong_incidents_open", exercise="false"))
    more = max(0, open_incidents - opened)
    rig.log(f"[7/7] peak RSS with {len(units):,} units and {open_incidents:,} open incidents …")
    await fill_open_incidents(rig.settings, rig.topic("incidents.reported.v1"), units, more)
    rig.wait_metric("kaifong_events_in_total", opened + more + 1, 120, topic=rig.topic("incidents.reported.v1"))
    await asyncio.sleep(6)  # one gauge sampling period
    return {"open_incidents": worker.metric("kaifong_incidents_open", exercise="false"),
            # Both processes of the worker: the incident flow's and the firehose's peaks, added.
            "worker_peak_rss_mb": sum(peak_rss_mb(p) for p in [worker.proc.pid, *children(worker.proc.pid)])}

