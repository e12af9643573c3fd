"""kaifong.agents.tools.bench_stack — the bench's stack lifecycle: broker, Redis and worker processes.

Layer: agents/tools. Starts, reads and stops what the bench measures: a `kaifong worker` subprocess (its
/metrics, its processes' CPU and memory from /proc), the embedded broker and Redis, the city loaded into them.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from kaifong.agents.tools.bench_load import produce_all, status_events
from kaifong.agents.tools.bench_report import BenchLoss
from kaifong.streams import security
from kaifong.streams.admin import ensure_topics, wait_for_broker
from kaifong.streams.embedded import EmbeddedStack, free_port
from kaifong.streams.settings import Settings
from kaifong.streams.topics import TopicSpec


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Child processes of ``pid`` (a worker's firehose process)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


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
class Rig:
    """The broker, Redis and worker one bench run drives: started, loaded, read and stopped here.

    ``stack`` is the embedded broker and Redis (None with an external broker); ``settings``
    follow it when :meth:`fresh` replaces it, so the phases read them at the time they run.
    """

    settings: Settings
    workdir: Path
    stack: EmbeddedStack | None = None
    log: Callable[[str], None] = print
    worker: WorkerHandle | None = None

    def topic(self, suffix: str) -> str:
        return self.settings.topic_prefix + suffix

    def ensure_topics(self, *extras: str) -> None:
        """kaifong's topics, and the bench's own ``extras`` (baseline, floor)."""
        ensure_topics(self.settings)
        for extra in extras:
            ensure_topics(self.settings, (TopicSpec(extra, "k", "unit-status", "input"),))

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

    def pids(self) -> dict[str, int]:
        """The processes whose CPU the throughput phase counts: the worker (and its firehose
        child), and the embedded broker and Redis when the bench started them."""
        assert self.worker is not None
        pids = {"worker": self.worker.proc.pid}
        firehose = children(self.worker.proc.pid)
        if firehose:
            pids["firehose"] = firehose[0]
        if self.stack:
            pids["broker"] = self.stack.services[0].proc.pid  # type: ignore[union-attr]
            pids["redis"] = self.stack.services[1].proc.pid  # type: ignore[union-attr]
        return pids

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

    async def load_city(self, units: list[dict[str, Any]], *, available: bool = False) -> WorkerHandle:
        """Publish the city's registry, start a worker, wait until it has every unit (and, with
        ``available``, until every unit has reported available)."""
        await produce_all(self.settings, self.topic("units.registry.v1"),
                          [(u["unit_id"].encode(), orjson.dumps(u)) for u in units])
        worker = self.start_worker()
        _, done = self.wait_metric("kaifong_events_in_total", len(units), 120,
                                   topic=self.topic("units.registry.v1"))
        if math.isnan(done):
            raise BenchLoss("registry: not every unit was registered")
        if available:
            await produce_all(self.settings, self.topic("units.status.v1"),
                              status_events(units, len(units), seq0=1))
            _, done = self.wait_metric("kaifong_events_in_total", len(units), 120,
                                       topic=self.topic("units.status.v1"))
            if math.isnan(done):
                raise BenchLoss("not every unit reported available")
        return worker

    async def fresh(self, units: list[dict[str, Any]]) -> WorkerHandle:
        """The latency phases run on a fresh embedded broker and Redis, the city loaded again.

        The embedded broker (Tansu, in memory) slows down as it accumulates record batches —
        every fetch walks a partition's batches — so after the ~600,000 records of the
        throughput phases the latency phases would measure the broker's age rather than
        kaifong, and the floor (a fresh topic) would not see it. Each latency phase that could
        see an earlier one's batches gets its own young broker (its floor measured on it too).
        With an external broker this is skipped.
        """
        assert self.worker is not None
        if self.stack is None or not self.stack.redis_url:
            return self.worker  # an external broker or Redis: the latency phases run on it as it is
        self.log("      a fresh embedded broker and Redis, the city loaded again …")
        self.worker.stop()
        self.stack.stop()
        tag = uuid.uuid4().hex[:6]
        self.stack = EmbeddedStack(free_port(), free_port(), workdir=self.workdir / f"latency-{tag}").start()
        self.settings = replace(self.settings, broker_url=self.stack.broker_url, redis_url=self.stack.redis_url or "",
                                topic_prefix=f"bench{tag}.", app_id=f"bench-{tag}", web_port=free_port())
        wait_for_broker(self.settings)
        self.ensure_topics("bench.floor")
        return await self.load_city(units, available=True)

    def stop(self) -> None:
        """Stop the worker, then the stack (the latency phases' one: the first was stopped before them)."""
        if self.worker:
            self.worker.stop()
        if self.stack:
            self.stack.stop()
