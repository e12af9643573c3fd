"""Shared fixtures: a real embedded broker (Tansu) and Redis (Valkey) per test session, and
worker processes started against them. An integration test that cannot reach its broker fails.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis  # noqa: F401 - imported up front: see the note below
import pytest

from kaifong.streams.admin import ensure_topics, wait_for_broker
from kaifong.streams.embedded import EmbeddedStack, free_port
from kaifong.streams.settings import Settings

# Note: hypothesis is imported at collection time on purpose. Left to pytest's lazy import at
# session end, CPython 3.11.7 sometimes fails it with "AST constructor recursion depth
# mismatch" after asyncio-heavy tests (a CPython bug in ast.parse's recursion counter).

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
_db_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """The embedded broker and Redis, started once for the session on free ports."""
    workdir = tmp_path_factory.mktemp("stack")
    with EmbeddedStack(free_port(), free_port(), workdir=workdir) as s:
        yield s


@pytest.fixture(scope="session")
def valkey_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Redis (Valkey) of its own, no broker: for the store's tests (each Lua script on the
    real server)."""
    from kaifong.streams.embedded import valkey

    service = valkey(free_port(), tmp_path_factory.mktemp("valkey"))
    service.start()
    try:
        yield service.port
    finally:
        service.stop()


@pytest.fixture
def with_store_redis(valkey_port: int) -> object:
    """Runs an async test body with an asyncio Redis client on the store tests' Valkey (its
    database emptied first; the client closed after)."""
    import asyncio

    import redis
    import redis.asyncio as aioredis

    def run(body: Any) -> None:
        redis.Redis(port=valkey_port).flushdb()

        async def main() -> None:
            client = aioredis.Redis(port=valkey_port)
            try:
                await body(client)
            finally:
                await client.aclose()

        asyncio.run(main())

    return run


@dataclass
class WorkerProc:
    """A `kaifong worker` subprocess and the settings it runs with."""

    settings: Settings
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def wait_ready(self, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                status, _ = self.get("/ready", timeout=1)
                if status == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready in {timeout}s:\n{self.log_path.read_text()[-4000:]}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples matching ``labels`` from the worker's /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        _, body = self.get("/metrics")
        total = 0.0
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


def make_settings(stack: EmbeddedStack, **overrides: object) -> Settings:
    """Settings isolated per test: own topic prefix, consumer group, Redis db and web port."""
    tag = uuid.uuid4().hex[:8]
    base = {"broker_url": stack.broker_url,
            "redis_url": f"redis://127.0.0.1:{stack.redis_port}/{next(_db_numbers) % 16}",
            "topic_prefix": f"t{tag}.", "app_id": f"kf-{tag}", "web_port": free_port(),
            "partitions": 4,
            # The drill scheduler is tested on its own (test_drills_integration): elsewhere it
            # would issue drills into other tests' traffic.
            "drills_enabled": False}
    if "redis_url" not in overrides:
        # Sixteen databases serve the whole session: start each test on an empty one (the
        # previous user of this number has finished; its workers were stopped at teardown).
        import redis as sync_redis

        sync_redis.Redis.from_url(str(base["redis_url"])).flushdb()
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
def new_settings(stack: EmbeddedStack) -> object:
    """Factory fixture: isolated settings on the session's embedded stack."""
    return lambda **overrides: make_settings(stack, **overrides)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a subprocess see ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAIFONG_")}
    env.update(settings.to_env())
    return env


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[object]:
    """Factory: start a worker process for given settings (stopped at teardown)."""
    procs: list[WorkerProc] = []

    def start(settings: Settings, wait: bool = True, name: str = "worker") -> WorkerProc:
        # Every worker process gets its own web port (several may share the other settings).
        settings = dataclasses.replace(settings, web_port=free_port())
        wait_for_broker(settings, timeout=10)
        ensure_topics(settings)
        env = settings_env(settings)
        env["KAIFONG_DATA_DIR"] = str(tmp_path / f"{name}-{len(procs)}")
        log_path = tmp_path / f"{name}-{len(procs)}.log"
        proc = subprocess.Popen([sys.executable, "-m", "kaifong.agents.cli", "worker", "--no-ensure-topics"],
                                env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
        w = WorkerProc(settings, env, proc, log_path)
        procs.append(w)
        if wait:
            w.wait_ready()
        return w

    yield start
    for w in procs:
        w.stop()
