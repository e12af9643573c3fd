"""kaifong.agents.flows.firehose — the unit firehose in a process of its own, supervised by the worker.

Layer: agents/flows. The unit-status firehose (:mod:`kaifong.agents.flows.units`) is CPU-bound Python —
decode, validate, pack — at thousands of events a second. In the worker's process it shares
one GIL and one event loop with the incident flow, and every Redis round trip of a report
waits behind a slice of firehose work: measured on 2 cores with 10,000 status events/s, the
decision time p99 was ~100 ms in one process. So by default (``KAIFONG_FIREHOSE=process``)
each worker starts one firehose child:

- the child (``kaifong firehose``, :mod:`kaifong.agents.web.firehose_child`) runs
  :class:`~kaifong.agents.flows.units.UnitsIntake` and a tiny HTTP server
  on 127.0.0.1 (an ephemeral port, told to the parent on its stdout) with
  ``/metrics`` (kaifong's families only) and ``/ready`` (its consumer has joined);
- the parent (:class:`Supervisor`) starts it, dies with it never (the child gets SIGTERM when
  the parent dies, even by SIGKILL), restarts it with backoff when it exits, counts restarts,
  is ready only while the child is, and merges the child's metrics into its own ``/metrics``
  (:func:`merged_exposition`), so Prometheus still scrapes one target per worker.

``KAIFONG_FIREHOSE=inline`` keeps the firehose in the worker's process (one process per
worker, e.g. for a 1-core container).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from kaifong.streams import metrics
from kaifong.streams.settings import Settings

log = logging.getLogger(__name__)

#: Restart backoff of a firehose child that exited: doubles from the first to the last.
BACKOFF_S = (0.5, 30.0)
#: A child that ran this long is healthy again: the next restart starts from the first backoff.
HEALTHY_AFTER_S = 60.0


class Supervisor:
    """Starts the firehose child, restarts it when it exits, reads its metrics."""

    def __init__(self, settings: Settings, joined: asyncio.Event) -> None:
        self.settings = settings
        self.joined = joined
        self.proc: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self.up = False
        self.restarts = 0

    def command(self) -> list[str]:
        """The child's command line (the same interpreter and package as the worker)."""
        return [sys.executable, "-m", "kaifong.agents.cli", "firehose"]

    async def run(self) -> None:
        """Keep one child running until cancelled; then stop it (SIGTERM, then SIGKILL)."""
        backoff = BACKOFF_S[0]
        env = {**os.environ, **self.settings.to_env()}
        try:
            while True:
                started = time.monotonic()
                self.proc = await asyncio.create_subprocess_exec(
                    *self.command(), env=env, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
                    preexec_fn=self._preexec)
                log.info("firehose process %d started", self.proc.pid)
                watch = asyncio.ensure_future(self._watch(self.proc))
                code = await self.proc.wait()
                watch.cancel()
                self.up, self.port = False, None
                metrics.FIREHOSE_UP.set(0)
                ran = time.monotonic() - started
                if ran > HEALTHY_AFTER_S:
                    backoff = BACKOFF_S[0]
                self.restarts += 1
                metrics.FIREHOSE_RESTARTS.inc()
                log.error("firehose process exited with %s after %.1fs; restarting in %.1fs "
                          "(unit status is not applied meanwhile)", code, ran, backoff)
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_S[1], backoff * 2)
        finally:
            await self.stop()

    def _preexec(self) -> None:  # pragma: no cover - runs in the child before exec
        from kaifong.streams.embedded import _die_with_parent

        if sys.platform.startswith("linux"):
            _die_with_parent()
        if self.settings.firehose_nice > 0:
            # Status is throughput work, the incident flow latency work: when the cores are
            # contended the worker's incident flow gets them first, idle cores still all go here.
            with contextlib.suppress(OSError):
                os.nice(self.settings.firehose_nice)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Read the child's port, then poll /ready until it has joined its group."""
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                return
            if line.startswith(b"kaifong-firehose-port "):
                self.port = int(line.split()[1])
                break
        while not self.up:
            status, _ = await self._get("/ready")
            if status == 200:
                self.up = True
                metrics.FIREHOSE_UP.set(1)
                self.joined.set()
                log.info("firehose process %d ready", proc.pid)
                break
            await asyncio.sleep(0.1)
        while True:  # keep draining stdout so the child never blocks on a full pipe
            if not await proc.stdout.readline():
                return

    async def _get(self, path: str, wait_s: float = 2.0) -> tuple[int, bytes]:
        """GET ``path`` from the child (status 0 when it does not answer)."""
        if self.port is None:
            return 0, b""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), wait_s)
        except (OSError, TimeoutError):
            return 0, b""
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            raw = await asyncio.wait_for(reader.read(), wait_s)
        except (OSError, TimeoutError):
            return 0, b""
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        try:
            return int(head.split(b" ", 2)[1]), body
        except (IndexError, ValueError):
            return 0, b""

    async def child_metrics(self) -> str | None:
        """The child's exposition, or None when it does not answer."""
        status, body = await self._get("/metrics")
        return body.decode() if status == 200 else None

    async def stop(self) -> None:
        """SIGTERM the child and wait for it (SIGKILL after 10 s)."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


# -- one /metrics for both ----------------------------------------------------------------------
class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


_SUMMED = ("counter", "histogram", "summary")


def merged_exposition(child_text: str | None, registry: Any = REGISTRY) -> bytes:
    """The parent's exposition with the child's kaifong families merged in.

    Counters and histograms with the same labels are summed (both processes count the same
    things, e.g. dead letters); a gauge the parent also reports keeps the parent's value; a
    series only the child has (its consumer lag) is taken as it is. The child's process and
    runtime families are left out: they would clash with the parent's.
    """
    if not child_text:
        return generate_latest(registry)
    families = {f.name: f for f in registry.collect()}
    for child in text_string_to_metric_families(child_text):
        if not child.name.startswith("kaifong_"):
            continue
        mine = families.get(child.name)
        if mine is None:
            families[child.name] = child
            continue
        index = {(s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(mine.samples)}
        for sample in child.samples:
            at = index.get((sample.name, tuple(sorted(sample.labels.items()))))
            if at is None:
                mine.samples.append(sample)
            elif mine.type in _SUMMED and not sample.name.endswith("_created"):
                mine.samples[at] = mine.samples[at]._replace(value=mine.samples[at].value + sample.value)
    return generate_latest(_Families(families.values()))  # type: ignore[arg-type]
