"""kaifong.agents.web.firehose_child — the firehose process: its consumer and its loopback HTTP.

Layer: agents/web. ``kaifong firehose`` runs :class:`~kaifong.agents.flows.units.UnitsIntake`
and a tiny HTTP server on 127.0.0.1 (an ephemeral port, told to the parent on its stdout) with
``/metrics`` (kaifong's families only) and ``/ready`` (its consumer has joined). The parent
side, :class:`kaifong.agents.flows.firehose.Supervisor`, starts, restarts and scrapes it. It
lives in the web room because it answers HTTP (status codes live only here).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from prometheus_client import generate_latest

from kaifong.streams import metrics
from kaifong.streams.settings import Settings


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ready: asyncio.Event) -> None:
    """One request of the child's loopback HTTP server (GET /metrics, GET /ready)."""
    try:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
        if path == b"/metrics":
            status, body, ctype = b"200 OK", generate_latest(), b"text/plain; version=0.0.4"
        elif path == b"/ready":
            ok = ready.is_set()
            status, body, ctype = (b"200 OK" if ok else b"503 Service Unavailable",
                                   b'{"ready":true}' if ok else b'{"ready":false}', b"application/json")
        else:
            status, body, ctype = b"404 Not Found", b"", b"text/plain"
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


async def child_main(settings: Settings, port: int = 0) -> None:
    """The firehose process: consume unit events until SIGTERM/SIGINT."""
    from kaifong.agents.flows.units import UnitsIntake
    from kaifong.agents.store.units import UnitStore
    from kaifong.streams.redisio import connect

    redis = connect(settings)
    intake = UnitsIntake(settings, redis, UnitStore(redis, settings.unit_stale_after_s), settings.clock())
    server = await asyncio.start_server(lambda r, w: _http(r, w, intake.joined), "127.0.0.1", port)
    bound = server.sockets[0].getsockname()[1]
    # The parent reads this one line to find the child's metrics; nothing else goes to stdout.
    sys.stdout.write(f"kaifong-firehose-port {bound}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def sample_lag() -> None:
        while True:
            await asyncio.sleep(5)
            with contextlib.suppress(Exception):  # rebalancing: report what there is next round
                for (topic, partition), n in (await intake.lag()).items():
                    metrics.CONSUMER_LAG.labels(topic, str(partition)).set(n)

    consumer = asyncio.ensure_future(intake.run())
    lag = asyncio.ensure_future(sample_lag())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({consumer, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if consumer.done():
            consumer.result()  # what stopped the consumer ends the process with an error
    finally:
        for task in (consumer, lag, stopping):
            task.cancel()
        await asyncio.gather(consumer, lag, stopping, return_exceptions=True)
        server.close()
        await redis.aclose()


# -- the parent ---------------------------------------------------------------------------------
