"""Test helpers: a real Alertmanager on loopback, and a webhook sink that records what it is sent.

Layer: tests (shared helpers; ``tests/`` is on pytest's pythonpath, so ``import
alertmanager_helpers``). The Alertmanager is Debian's ``prometheus-alertmanager`` 0.25 binary
(``.ci/run`` installs the package); a missing binary fails the test, it never skips.

    with webhook_sink() as (sink_url, received), running_alertmanager(config, tmp_path) as am_url:
        post_alerts(am_url, [{"labels": {...}}])
        wait_for(lambda: received, timeout=10)
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

#: Where Debian's package puts the server (the upstream name is plain ``alertmanager``).
ALERTMANAGER_BINARIES = ("/usr/bin/prometheus-alertmanager", "prometheus-alertmanager", "alertmanager")
MISSING = ("the Alertmanager binary is missing: .ci/run installs it "
           "(Debian package prometheus-alertmanager: apt-get install -y prometheus-alertmanager)")


def alertmanager_binary() -> str:
    """The Alertmanager server binary, or fail the test saying how to install it."""
    for name in ALERTMANAGER_BINARIES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(MISSING)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)


@contextmanager
def running_alertmanager(config_path: Path, tmp_path: Path, *, ready_timeout: float = 15.0) -> Iterator[str]:
    """Start Alertmanager with ``config_path`` on a free 127.0.0.1 port; yield its base URL.

    Clustering is off (``--cluster.listen-address=``), its data lives under ``tmp_path``, and
    its output goes to a log file there (quoted when it fails to become ready). On exit the
    process is stopped by its PID: terminate, wait, then kill.
    """
    binary = alertmanager_binary()
    port = free_port()
    data = tmp_path / f"alertmanager-{port}"
    data.mkdir(parents=True, exist_ok=True)
    log_path = tmp_path / f"alertmanager-{port}.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.path={data}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=info"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            _wait_ready(proc, url, ready_timeout, log_path)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"Alertmanager exited with {proc.returncode} before it was ready:\n"
                        + log_path.read_text("utf-8", "replace")[-4000:])
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"Alertmanager at {url} not ready after {timeout:g} s:\n"
                        + log_path.read_text("utf-8", "replace")[-4000:])
        time.sleep(0.1)


def post_alerts(url: str, alerts: Sequence[dict[str, Any]]) -> None:
    """POST alerts to Alertmanager's v2 API (``/api/v2/alerts``); fail unless it answers 200."""
    request = urllib.request.Request(f"{url}/api/v2/alerts", data=json.dumps(list(alerts)).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200, response.read()


@contextmanager
def webhook_sink() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver on a free 127.0.0.1 port: yields ``(base_url, received)``.

    Every POST is answered 200 and recorded in ``received`` as ``{"path": ..., "body": ...}``
    (``body`` the parsed JSON, or the raw text when it is not JSON), in arrival order.
    """
    received: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8", "replace")
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw
            with lock:
                received.append({"path": self.path, "body": body})
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads ``received``, not the access log."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="webhook-sink", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
