"""The `kaifong` command end to end: up, publish, tail, topics, and a clean Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kaifong.streams.embedded import free_port, port_open

pytestmark = pytest.mark.integration

SAMPLE = {"event_id": "cli-evt-1", "incident_id": "cli-inc-1", "category": "fire", "severity": 2,
          "reported_at": "2026-11-29T14:00:00+08:00", "location": {"lat": 23.129, "lon": 113.264},
          "district": "越秀区", "grid": "YX-001", "source": "call_110", "exercise": False}


def kaifong(*args: str, env: dict[str, str], timeout: float = 60, stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kaifong.agents.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, input=stdin)


def descendants(pid: int) -> set[int]:
    """PIDs whose parent chain leads to ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {p for p, pp in parents.items() if pp in frontier} - out
        out |= children
        frontier = children
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_up_publish_tail_topics_and_clean_stop(tmp_path: Path) -> None:
    broker, redis_port, web = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAIFONG_")}
    env.update({"KAIFONG_EMBEDDED_BROKER_PORT": str(broker), "KAIFONG_EMBEDDED_REDIS_PORT": str(redis_port),
                "KAIFONG_WEB_PORT": str(web), "KAIFONG_DATA_DIR": str(tmp_path / "data"),
                "KAIFONG_BROKER_URL": f"kafka://127.0.0.1:{broker}"})
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-m", "kaifong.agents.cli", "up"], env=env, stdout=log,
                          stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        health = None
        while time.monotonic() - started < 30:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web}/health", timeout=1) as r:
                    health = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.2)
        assert health is not None and health["status"] == "ok", (tmp_path / "up.log").read_text()
        out = (tmp_path / "up.log").read_text()
        assert f"127.0.0.1:{broker}" in out and "MEMORY ONLY" in out and f"127.0.0.1:{redis_port}" in out

        sample = tmp_path / "sample.json"
        sample.write_text(json.dumps(SAMPLE, ensure_ascii=False), "utf-8")
        published = kaifong("publish", "incident-reported", f"@{sample}", env=env)
        assert published.returncode == 0, published.stderr
        assert "incidents.reported.v1" in published.stdout

        tail = kaifong("tail", "incidents.state.v1", "--from-beginning", "--max", "1", "--timeout", "20",
                       env=env)
        assert "incident_id=cli-inc-1" in tail.stdout and "status=open" in tail.stdout, tail.stdout + tail.stderr
        tail_json = kaifong("tail", "incidents.state.v1", "--from-beginning", "--max", "1", "--json",
                            "--timeout", "20", env=env)
        record = json.loads(tail_json.stdout.splitlines()[0])
        assert record["value"]["incident_id"] == "cli-inc-1" and record["headers"]["ce_type"]

        # Invalid input: a clear error, a non-zero exit, nothing sent.
        bad = kaifong("publish", "incident-reported", json.dumps({**SAMPLE, "severity": 9}), env=env)
        assert bad.returncode == 1 and "out_of_range" in bad.stderr and "severity" in bad.stderr
        from_stdin = kaifong("publish", "incident-update", "-", env=env, stdin=json.dumps(
            {"event_id": "cli-u-1", "incident_id": "cli-inc-1", "kind": "acknowledged",
             "at": "2026-11-29T14:00:20+08:00"}))
        assert from_stdin.returncode == 0, from_stdin.stderr

        topics = kaifong("topics", env=env)
        lines = {line.split()[0]: line.split() for line in topics.stdout.splitlines()[1:]}
        assert lines["kaifong.incidents.reported.v1"][1] == "4"
        assert lines["kaifong.incidents.reported.v1"][2] == "1"  # one message
        assert lines["kaifong.incidents.updates.v1"][2] == "1"
        assert int(lines["kaifong.incidents.state.v1"][2]) >= 2  # opened, acknowledged (+ any breaches)

        children = descendants(up.pid)
        assert len(children) >= 3  # broker, redis, worker
    finally:
        up.send_signal(signal.SIGINT)  # what Ctrl-C sends
        code = up.wait(30)
        log.close()
    assert code == 0
    time.sleep(0.5)
    assert not [p for p in children if alive(p)], "Ctrl-C must leave no process behind"
    assert not port_open("127.0.0.1", broker) and not port_open("127.0.0.1", redis_port)
    assert not port_open("127.0.0.1", web)
