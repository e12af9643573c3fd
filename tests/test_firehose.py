"""The unit firehose in its own process: one /metrics for both processes, a child that is
restarted when it dies, and that dies with its worker."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kaifong.agents.flows.firehose import merged_exposition
from kaifong.agents.store.keys import unit_live as live_key
from kaifong.agents.tools.bench import children


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"{key} exposed twice"
            out[key] = s.value
    return out


def test_merged_exposition_sums_counters_and_histograms_keeps_parent_gauges() -> None:
    parent, child = CollectorRegistry(), CollectorRegistry()
    for registry, n, lag_topic in ((parent, 3, "incidents"), (child, 5, "units")):
        Counter("kaifong_events_in_total", "in", ["topic"], registry=registry).labels("units").inc(n)
        Histogram("kaifong_batch_events", "b", ["agent"], buckets=(10, 100), registry=registry).labels(
            "units").observe(n * 10)
        Gauge("kaifong_worker_ready", "r", registry=registry).set(1 if registry is parent else 0)
        Gauge("kaifong_consumer_lag", "l", ["topic"], registry=registry).labels(lag_topic).set(n)
    Gauge("process_resident_memory_bytes", "m", registry=child).set(123)
    Counter("kaifong_firehose_only_total", "c", registry=child).inc(7)

    merged = samples(merged_exposition(generate_latest(child).decode(), parent))

    assert merged[("kaifong_events_in_total", (("topic", "units"),))] == 8
    # 30 (parent) falls in le=100, 50 (child) too: both in le=100 and +Inf, neither in le=10.
    assert merged[("kaifong_batch_events_bucket", (("agent", "units"), ("le", "10.0")))] == 0
    assert merged[("kaifong_batch_events_bucket", (("agent", "units"), ("le", "100.0")))] == 2
    assert merged[("kaifong_batch_events_count", (("agent", "units"),))] == 2
    assert merged[("kaifong_batch_events_sum", (("agent", "units"),))] == 80
    assert merged[("kaifong_worker_ready", ())] == 1  # the parent's gauge stands
    assert merged[("kaifong_consumer_lag", (("topic", "incidents"),))] == 3
    assert merged[("kaifong_consumer_lag", (("topic", "units"),))] == 5  # only the child has it
    assert merged[("kaifong_firehose_only_total", ())] == 7
    assert not any(name.startswith("process_") for name, _ in merged)
    # No child: the parent's exposition as it is.
    assert merged_exposition(None, parent) == generate_latest(parent)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.integration
def test_firehose_child_restarted_and_dies_with_its_worker(new_settings: Any, start_worker: Any) -> None:
    settings = new_settings()
    assert settings.firehose == "process"
    w = start_worker(settings)
    [child] = wait_for(lambda: children(w.proc.pid), 10, "the firehose child")
    assert w.metric("kaifong_firehose_up") == 1

    os.kill(child, signal.SIGKILL)
    wait_for(lambda: w.metric("kaifong_firehose_restarts_total") >= 1, 20, "the restart to be counted")
    [second] = wait_for(lambda: [c for c in children(w.proc.pid) if c != child and alive(c)], 20,
                        "a new firehose child")
    wait_for(lambda: w.get("/ready")[0] == 200 and w.metric("kaifong_firehose_up") == 1, 30,
             "the worker to be ready again")

    # The new child applies unit events, and the worker's /metrics counts them.
    tag = uuid.uuid4().hex[:6]
    unit = {"event_id": f"{tag}-g", "unit_id": f"{tag}-u", "kind": "unit", "name": "单元", "district": "天河区",
            "police_grid": "PG1", "grid": "G1", "venue": {"id": "V1", "type": "school"},
            "home": {"lat": 23.13, "lon": 113.32}, "responders": 8, "equipment": ["aed"]}
    status = {"event_id": f"{tag}-s", "unit_id": f"{tag}-u", "status": "available", "seq": 1,
              "at": "2026-11-29T14:00:00+08:00", "location": {"lat": 23.13, "lon": 113.32}}
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    producer.send(settings.topic_prefix + "units.registry.v1", key=unit["unit_id"].encode(), value=orjson.dumps(unit))
    producer.flush()
    producer.send(settings.topic_prefix + "units.status.v1", key=unit["unit_id"].encode(), value=orjson.dumps(status))
    producer.flush()
    producer.close()
    r = redis.Redis.from_url(settings.redis_url)
    wait_for(lambda: r.hget(live_key(f"{tag}-u"), "status") == b"available", 30, "the status to be applied")
    assert w.metric("kaifong_events_in_total", topic=settings.topic_prefix + "units.status.v1", outcome="ok") == 1

    # Killed without a chance to clean up, the worker still takes its child with it.
    w.stop(signal.SIGKILL)
    wait_for(lambda: not alive(second), 15, "the firehose child to exit with its worker")


class _Sent:
    """Records the dead letters the firehose sends (a stand-in producer: this test is about
    what the firehose decides when Redis refuses one event of a chunk)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes | None]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None) -> Any:
        import asyncio

        self.records.append((topic, value, key))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _apply_poisoned(settings: Any, batch: str, script: str, events: list[dict[str, Any]],
                    probe: Any) -> tuple[Any, dict[tuple[str, str], int], list[tuple[str, bytes, bytes | None]]]:
    """Apply one fetch of ``events`` (``batch``: "status" or "registry") with that batch's Redis
    script replaced by ``script`` — the real one, made to fail on unit "poison": it stands for
    an event the script cannot apply (a bug the schema does not catch). Returns what
    ``probe(redis)`` read afterwards, the outcome counts and the dead letters sent."""
    import asyncio

    import redis.asyncio as aioredis
    from aiokafka.structs import ConsumerRecord, TopicPartition

    from kaifong.agents.flows.units import Prepared, UnitsIntake
    from kaifong.agents.store.scripts import Scripts
    from kaifong.agents.store.units import UnitStore

    topic = settings.topic_prefix + f"units.{batch}.v1"

    async def run() -> tuple[Any, dict[tuple[str, str], int], list[tuple[str, bytes, bytes | None]]]:
        r = aioredis.Redis.from_url(settings.redis_url)
        store = UnitStore(r, 60, Scripts(r, {f"units_{batch}": script}))
        await store.load_scripts()
        intake = UnitsIntake(settings, r, store)
        prepared = Prepared(started=time.perf_counter())
        for offset, event in enumerate(events):
            rec = ConsumerRecord(topic, 0, offset, 0, 0, event["unit_id"].encode(), orjson.dumps(event), None, 0, 0, ())
            getattr(prepared, batch).append((rec, event))
        prepared.offsets[TopicPartition(topic, 0)] = len(events)
        sent = _Sent()
        await intake.apply(prepared, sent)  # type: ignore[arg-type]
        seen = await probe(r)
        await r.aclose()
        return seen, prepared.counts, sent.records

    return asyncio.run(run())


def _only_poison_dead_lettered(settings: Any, batch: str, counts: dict[tuple[str, str], int],
                               dead: list[tuple[str, bytes, bytes | None]]) -> None:
    topic = settings.topic_prefix + f"units.{batch}.v1"
    assert counts == {(topic, "ok"): 2, (topic, "refused"): 1}
    [(dl_topic, body, key)] = dead
    assert dl_topic == settings.topic_prefix + "deadletter.v1" and key == b"poison"
    letter = orjson.loads(body)
    assert letter["error_class"] == "internal_error" and "cannot apply" in letter["error"]
    assert letter["source_offset"] == 1


def _poison_case(batch: str) -> tuple[str, list[dict[str, Any]], Any]:
    """For ``batch``: the real script made to fail on unit "poison", three events (u1, poison,
    u2) and a probe of what each left in Redis (truthy: applied)."""
    from kaifong.agents.store.keys import unit_registry as registry_key
    from kaifong.agents.store.scripts import source

    STATUS_LUA, REGISTRY_LUA = source("units_status"), source("units_registry")

    units = ("u1", "poison", "u2")
    if batch == "status":
        script = STATUS_LUA.replace(
            "local events = cjson.decode(ARGV[2])", "local events = cjson.decode(ARGV[2])\n"
            "for _, x in ipairs(events) do if x[2] == 'poison' then error('cannot apply') end end", 1)
        events = [{"event_id": f"e-{u}", "unit_id": u, "status": "available", "seq": 1,
                   "at": "2026-11-29T14:00:00+08:00"} for u in units]

        async def probe(r: Any) -> list[Any]:
            return [await r.hget(live_key(u), "status") for u in units]
    else:
        script = REGISTRY_LUA.replace(
            "if redis.call('EXISTS', KEYS[1]) == 1 then return 'dup' end",
            "if ARGV[3] == 'poison' then error('cannot apply') end\n"
            "if redis.call('EXISTS', KEYS[1]) == 1 then return 'dup' end", 1)
        events = [{"event_id": f"g-{u}", "unit_id": u, "kind": "unit", "name": "单元", "district": "天河区",
                   "police_grid": "PG1", "grid": "G1", "venue": {"id": "V1", "type": "school"},
                   "home": {"lat": 23.13, "lon": 113.32}, "responders": 6, "equipment": ["aed"]} for u in units]

        async def probe(r: Any) -> list[Any]:
            return [await r.exists(registry_key(u)) for u in units]
    return script, events, probe


@pytest.mark.integration
@pytest.mark.parametrize("batch", ["status", "registry"])
def test_unit_batch_with_an_event_redis_cannot_apply_refuses_only_that_event(new_settings: Any, batch: str) -> None:
    # Status chunks fall back to one event at a time, registry batches read per-entry results:
    # without that the whole batch — and the firehose with it — would fail on every retry.
    settings = new_settings()
    script, events, probe = _poison_case(batch)
    applied, counts, dead = _apply_poisoned(settings, batch, script, events, probe)
    assert [bool(x) for x in applied] == [True, False, True]
    _only_poison_dead_lettered(settings, batch, counts, dead)


@pytest.mark.integration
def test_registry_change_reaches_the_next_decision_despite_the_cache(new_settings: Any) -> None:
    """A worker caches registry entries for matching; each carries a version, so an update of a
    unit's equipment is seen by the very next candidate search (no stale cache window)."""
    import asyncio

    import redis.asyncio as aioredis
    from aiokafka.structs import ConsumerRecord, TopicPartition

    from kaifong.agents.flows.units import Prepared, UnitsIntake
    from kaifong.agents.store.units import UnitStore

    settings = new_settings()
    reg_topic, status_topic = settings.topic_prefix + "units.registry.v1", settings.topic_prefix + "units.status.v1"

    def entry(event_id: str, equipment: list[str]) -> dict[str, Any]:
        return {"event_id": event_id, "unit_id": "u-cache", "kind": "unit", "name": "单元", "district": "天河区",
                "police_grid": "PG1", "grid": "G1", "venue": {"id": "V1", "type": "school"},
                "home": {"lat": 23.13, "lon": 113.32}, "responders": 6, "equipment": equipment}

    async def apply(intake: UnitsIntake, registry: dict[str, Any] | None, status: dict[str, Any] | None) -> None:
        prepared = Prepared(started=time.perf_counter())
        for topic, event, target in ((reg_topic, registry, prepared.registry), (status_topic, status, prepared.status)):
            if event is not None:
                rec = ConsumerRecord(topic, 0, 0, 0, 0, b"u-cache", orjson.dumps(event), None, 0, 0, ())
                target.append((rec, event))
                prepared.offsets[TopicPartition(topic, 0)] = 1
        await intake.apply(prepared, _Sent())  # type: ignore[arg-type]

    async def run() -> tuple[frozenset[str], frozenset[str], int]:
        r = aioredis.Redis.from_url(settings.redis_url)
        intake = UnitsIntake(settings, r, UnitStore(r, 3600))
        matcher = UnitStore(r, 3600)  # the worker's store, with its own cache
        await apply(intake, entry("g1", ["aed"]), {"event_id": "s1", "unit_id": "u-cache", "status": "available",
                                                   "seq": 1, "at": "2026-11-29T14:00:00+08:00"})
        assert await matcher.warm_registry() == 1
        [before] = await matcher.candidates(23.13, 113.32, [("unit", 500.0, 5)], pool="avail")
        await apply(intake, entry("g2", ["aed", "life_buoy"]), None)
        [after] = await matcher.candidates(23.13, 113.32, [("unit", 500.0, 5)], pool="avail")
        await r.aclose()
        return before.equipment, after.equipment, after.responders

    before, after, responders = asyncio.run(run())
    assert before == frozenset({"aed"})
    assert after == frozenset({"aed", "life_buoy"})
    assert responders == 6


@pytest.mark.integration
def test_registry_loaded_after_start_is_cached_whole_once_it_settles(new_settings: Any, start_worker: Any) -> None:
    """A city loaded after the worker started: once the registry stops changing, the worker
    reads it whole into its matching cache (the first decisions then take no registry round
    trip), and says so on /metrics."""
    settings = new_settings()
    w = start_worker(settings)
    assert w.metric("kaifong_registry_cached_units") == 0  # nothing registered yet
    tag = uuid.uuid4().hex[:6]
    n = 250  # more than one read step (READ_STEP) and than REWARM_CHANGES
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=20)
    for i in range(n):
        unit = {"event_id": f"{tag}-g{i}", "unit_id": f"{tag}-u{i}", "kind": "unit", "name": "单元",
                "district": "天河区", "police_grid": "PG1", "grid": "G1", "venue": {"id": f"V{i}", "type": "school"},
                "home": {"lat": 23.13 + i * 1e-4, "lon": 113.32}, "responders": 4, "equipment": ["aed"]}
        producer.send(settings.topic_prefix + "units.registry.v1", key=unit["unit_id"].encode(),
                      value=orjson.dumps(unit))
    producer.flush()
    producer.close()
    wait_for(lambda: w.metric("kaifong_registry_cached_units") == n, 60, "the registry to be cached whole")

