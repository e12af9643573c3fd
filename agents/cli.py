"""kaifong.agents.cli — the ``kaifong`` command: up, worker, publish, tail, topics, config, drill.

Layer: top (it wires the worker). Run ``kaifong --help`` or ``kaifong config`` for every
setting and its ``KAIFONG_*`` variable.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from kaifong.agents.tools import seats_cli
from kaifong.streams.settings import Settings

PROCESS_START = time.time()

EPILOG = "Settings (environment variables):\n" + "\n".join(
    f"  {env:<38} {doc} [default: {default}]" for env, default, doc in Settings.describe()
)


def _settings() -> Settings:
    return Settings.from_env()


def _logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# -- up ---------------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    """Start the embedded stack and a worker; stop everything on Ctrl-C or SIGTERM."""
    from kaifong.streams.admin import ensure_topics, wait_for_broker
    from kaifong.streams.embedded import EmbeddedStack, port_open

    base = _settings()
    external_redis = bool(os.environ.get("KAIFONG_REDIS_URL"))
    workdir = Path(base.data_dir).resolve() / "embedded"
    stack = EmbeddedStack(base.embedded_broker_port, None if external_redis else base.embedded_redis_port,
                          workdir=workdir)
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker: subprocess.Popen[bytes] | None = None
    children: list[subprocess.Popen[bytes]] = []
    try:
        stack.start()
        env = dict(os.environ)
        env["KAIFONG_BROKER_URL"] = stack.broker_url
        if stack.redis_url:
            env["KAIFONG_REDIS_URL"] = stack.redis_url
        settings = Settings.from_env(env)
        wait_for_broker(settings)
        ensure_topics(settings)
        notify_line = seats_cli.up_notifications(base, env, workdir, stack)
        print(f"kaifong up — broker  {stack.broker_url}  (Tansu, MEMORY ONLY: every event is lost when it stops)")
        print(f"             redis   {settings.redis_url}" + ("  (external)" if external_redis else
                                                              "  (embedded Valkey, not persisted)"))
        print(f"             web     http://{settings.web_host}:{settings.web_port}/  "
              "(/health /ready /metrics)")
        print(f"             logs    {workdir}")
        print(notify_line)
        print("The embedded mode is for development and demos; production runs on Kafka/Redpanda "
              "and Redis (README, Production). Ctrl-C stops everything.", flush=True)
        if args.accelerate != 1.0:
            env["KAIFONG_TIME_SCALE"] = str(args.accelerate)
            env["KAIFONG_TIME_EPOCH"] = str(time.time())
        # Children in sessions of their own (see streams.embedded.Service.start): on Ctrl-C this
        # process stops the simulator, then the worker, then the broker and Redis, in that order.
        worker = subprocess.Popen([sys.executable, "-m", "kaifong.agents.cli", "worker", "--no-ensure-topics"],
                                  env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                                  preexec_fn=_die_with_parent)  # noqa: PLW1509
        children.append(worker)
        if args.simulate:
            sim_log = (workdir / "simulate.log").open("ab")
            children.append(subprocess.Popen(
                [sys.executable, "-m", "kaifong.agents.cli", "simulate", *args.sim_args.split()],
                env=env, stdin=subprocess.DEVNULL, stdout=sim_log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent))  # noqa: PLW1509
            print(f"             simulator running (log: {workdir / 'simulate.log'})", flush=True)
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    print(f"{'worker' if child is worker else 'simulator'} exited with {child.returncode}",
                          file=sys.stderr)
                    return child.returncode or 1
            if not all(s.running() for s in stack.services):
                print("an embedded service died; see " + str(workdir), file=sys.stderr)
                return 1
            time.sleep(0.2)
        print("stopping…", flush=True)
        return 0
    finally:
        for child in reversed(children):  # simulator first, then the worker
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(15)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(5)
        stack.stop()
        _ = port_open  # (imported for symmetry with tests)


def _die_with_parent() -> None:  # pragma: no cover - child side
    from kaifong.streams.embedded import _die_with_parent as die

    die()


# -- worker -----------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    """Run one worker process against the configured Kafka and Redis."""
    from kaifong.agents.worker import Worker
    from kaifong.streams.admin import ensure_topics, wait_for_broker

    settings = _settings()
    if args.web_port:
        settings = Settings.from_env(web_port=args.web_port)
    _logging(settings)
    if not args.no_ensure_topics:
        wait_for_broker(settings)
        ensure_topics(settings)
    Worker(settings, process_start=PROCESS_START).run()
    return 0


def cmd_firehose(args: argparse.Namespace) -> int:
    """Run the unit firehose (registry + status → Redis) in this process until SIGTERM."""
    import asyncio

    from kaifong.agents.web.firehose_child import child_main

    settings = _settings()
    _logging(settings)
    asyncio.run(child_main(settings, args.metrics_port))
    return 0


# -- publish ----------------------------------------------------------------------------------
def _read_events(source: str) -> list[dict[str, Any]]:
    if source == "-":
        text = sys.stdin.read()
    elif source.startswith("@"):
        text = Path(source[1:]).read_text("utf-8")
    else:
        text = source
    text = text.strip()
    try:
        parsed = orjson.loads(text)
        return parsed if isinstance(parsed, list) else [parsed]
    except orjson.JSONDecodeError:
        # JSON lines: one event per line.
        return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def cmd_publish(args: argparse.Namespace) -> int:
    """Validate and publish events of one input type."""
    from kaifong.schemas.validation import InvalidEvent
    from kaifong.streams.publisher import Publisher

    settings = _settings()
    try:
        events = _read_events(args.event)
    except (orjson.JSONDecodeError, OSError) as exc:
        print(f"error: cannot read events: {exc}", file=sys.stderr)
        return 2
    publisher = Publisher(settings)
    failed = 0
    try:
        for i, event in enumerate(events):
            try:
                meta = publisher.publish(args.event_type, event)
                print(f"published {args.event_type} to {meta.topic}[{meta.partition}]@{meta.offset}")
            except InvalidEvent as exc:
                failed += 1
                print(f"error: event {i} refused ({exc.error_class}):", file=sys.stderr)
                for reason in exc.reasons:
                    print(f"  - {reason}", file=sys.stderr)
    finally:
        publisher.close()
    return 1 if failed else 0


# -- units / city -----------------------------------------------------------------------------
def cmd_units_load(args: argparse.Namespace) -> int:
    """Publish a registry file (CSV or JSON lines) to the registry topic, validated first."""
    from kaifong.schemas.validation import InvalidEvent, validate
    from kaifong.streams.city import read_registry
    from kaifong.streams.publisher import Publisher

    settings = _settings()
    try:
        units = read_registry(Path(args.file))
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    bad = 0
    for i, unit in enumerate(units):
        try:
            validate("unit-registered", dict(unit))
        except InvalidEvent as exc:
            bad += 1
            if bad <= 20:
                print(f"error: line {i + 1} ({unit.get('unit_id', '?')}): {exc}", file=sys.stderr)
    if bad:
        print(f"error: {bad} of {len(units)} units are invalid; nothing was published", file=sys.stderr)
        return 1
    publisher = Publisher(settings, linger_ms=50, batch_size=512 * 1024)
    started = time.monotonic()
    try:
        futures = [publisher.publish("unit-registered", dict(u), wait=False) for u in units]
        publisher.flush()
        for f in futures:
            f.get(timeout=30)
    finally:
        publisher.close()
    print(f"published {len(units)} units to {settings.topic_prefix}units.registry.v1 "
          f"in {time.monotonic() - started:.1f}s")
    return 0


def cmd_city_generate(args: argparse.Namespace) -> int:
    """Write a seeded Guangzhou-like registry (and optionally its district outlines)."""
    from kaifong.streams.city import generate, write_geo, write_registry

    started = time.monotonic()
    city = generate(seed=args.seed, units=args.units)
    out = Path(args.out)
    fmt = "csv" if out.suffix == ".csv" else "jsonl"
    n = write_registry(city, out, fmt)
    if args.geo:
        write_geo(city, Path(args.geo))
    summary = city.summary()
    print(f"wrote {n} units ({fmt}) to {out} in {time.monotonic() - started:.1f}s: "
          + ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, dict)))
    return 0


# -- simulate ---------------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    """Drive the pipeline with the generated city (real time or accelerated)."""
    from kaifong.streams.admin import ensure_topics, wait_for_broker
    from kaifong.streams.simulate import SimConfig, Simulator

    settings = _settings()
    if args.accelerate and args.accelerate != settings.time_scale:
        if settings.time_scale != 1.0 and settings.time_epoch:
            print("error: --accelerate differs from KAIFONG_TIME_SCALE of the running workers", file=sys.stderr)
            return 2
        # Workers must share this clock: start them with the same KAIFONG_TIME_SCALE/EPOCH
        # (`kaifong up --accelerate N` does it for you).
        settings = Settings.from_env(time_scale=args.accelerate, time_epoch=settings.time_epoch or time.time())
    _logging(settings)
    wait_for_broker(settings)
    ensure_topics(settings)
    config = SimConfig(seed=args.seed, units=args.units, heartbeat_interval_s=args.heartbeat_interval,
                       heartbeat_per=args.heartbeat_per, incidents_per_hour=args.incidents_per_hour,
                       exercise_share=args.exercise_share, no_show_share=args.no_show_share,
                       decline_share=args.decline_share, duration_s=args.duration or None,
                       publish_registry=not args.no_registry)
    sim = Simulator(settings, config)
    print(f"simulating {config.units:,} units, heartbeat every {config.heartbeat_interval_s:g}s per "
          f"{config.heartbeat_per}, ~{config.incidents_per_hour:g} incidents/h, time ×{settings.time_scale:g}",
          flush=True)
    import asyncio

    try:
        stats = asyncio.run(sim.run(report=lambda line: print(line, flush=True)))
    except KeyboardInterrupt:
        return 0
    print("done: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    return 0


# -- bench ------------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    """Measure throughput and latency against the same-run baseline (see agents/bench.py)."""
    from kaifong.agents.tools.bench import main as bench_main

    return bench_main(args.events, args.incident_rate, args.duration, args.json, args.broker_url or None,
                      args.redis_url or None, args.units, args.open_incidents,
                      only="" if args.what == "all" else args.what)


# -- drill ------------------------------------------------------------------------------------
def cmd_drill(args: argparse.Namespace) -> int:
    """Order a manual pull test through a worker's API (``POST /api/drills``)."""
    import urllib.error
    import urllib.request

    settings = _settings()
    host = settings.web_host if settings.web_host not in ("", "0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    base = args.url or f"http://{host}:{settings.web_port}"
    if not base.startswith(("http://", "https://")):
        print(f"error: --url must be an http(s) URL, got {base!r}", file=sys.stderr)
        return 2
    target = {"unit_id": args.unit} if args.unit else {"grid": args.grid} if args.grid else {"district": args.district}
    request = urllib.request.Request(base.rstrip("/") + "/api/drills", method="POST",  # noqa: S310 - http(s) only
                                     data=orjson.dumps({**target, "channel": args.channel}),
                                     headers={"Content-Type": "application/json"})
    if settings.api_token:
        request.add_header("Authorization", f"Bearer {settings.api_token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310 - our own worker's URL
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError as exc:
        print(f"error: cannot reach the worker at {base}: {exc}", file=sys.stderr)
        return 1
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = {"error": "not_json", "message": body[:200].decode("utf-8", "replace")}
    if status == 202:
        for drill in doc.get("drills", []):
            print(f"drill {drill['drill_id']} issued to unit {drill['unit_id']} ({drill['channel']}, "
                  f"{drill.get('district', '?')} {drill.get('grid', '?')}) at {drill['issued_at']}")
        return 0
    print(f"error: {status} {doc.get('error', '')}: {doc.get('message', '')}", file=sys.stderr)
    for reason in doc.get("reasons", []):
        print(f"  - {reason}", file=sys.stderr)
    return 1


# -- report -----------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    """Write an after-action report for a time range: HTML, PDF, figures.json and CSV files."""
    from kaifong.agents.report import ReportError, Window, generate, load_rings, parse_when

    settings = _settings()
    try:
        window = Window(parse_when(args.start), parse_when(args.end), args.district or None)
        what_if = load_rings(Path(args.rings)) if args.rings else None
        started = time.monotonic()
        result = generate(settings, window, Path(args.out), what_if=what_if, pdf=not args.no_pdf)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    incidents = result.figures["incidents"]
    print(f"report {window.start.isoformat()} → {window.end.isoformat()}: {incidents['real']} incidents, "
          f"{incidents['exercise']} exercises, {result.figures['sources']['records_read']} records read "
          f"in {time.monotonic() - started:.1f}s")
    for path in result.files:
        print(f"  {path}")
    return 0


# -- tail -------------------------------------------------------------------------------------
def _summary(value: bytes | None) -> str:
    if value is None:
        return "(tombstone)"
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return f"(not JSON, {len(value)} bytes)"
    if not isinstance(data, dict):
        return f"(JSON {type(data).__name__})"
    # Readable line: the identifying and state fields only — never free text or caller data.
    keys = ("incident_id", "unit_id", "drill_id", "assignment_id", "escalation_id", "kind", "status",
            "stage", "outcome", "ring", "level", "reason", "severity", "category", "version",
            "error_class", "source_topic", "source_offset", "error")
    return " ".join(f"{k}={data[k]}" for k in keys if k in data and not isinstance(data[k], dict | list))


def cmd_tail(args: argparse.Namespace) -> int:
    """Print records of a topic as they arrive."""
    from kafka import KafkaConsumer, TopicPartition

    from kaifong.streams import security
    from kaifong.streams.admin import true_end_offsets
    from kaifong.streams.topics import by_name

    settings = _settings()
    try:
        name = by_name(settings, args.topic).name(settings)
    except KeyError:
        name = args.topic
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             fetch_max_wait_ms=50, client_id="kaifong-tail", **security.kafka_python_kwargs(settings))
    parts = [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())]
    if not parts:
        print(f"error: topic {name} not found", file=sys.stderr)
        return 2
    starts = consumer.beginning_offsets(parts) if args.from_beginning else true_end_offsets(consumer, parts)
    consumer.assign(parts)
    for tp in parts:
        consumer.seek(tp, starts[tp])
    seen = 0
    deadline = time.monotonic() + args.timeout if args.timeout else None
    try:
        while deadline is None or time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for rec in records:
                    if args.json:
                        out = {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset,
                               "timestamp": rec.timestamp,
                               "key": rec.key.decode("utf-8", "replace") if rec.key else None,
                               "headers": {k: v.decode("utf-8", "replace") for k, v in rec.headers or []}}
                        try:
                            out["value"] = orjson.loads(rec.value) if rec.value is not None else None
                        except orjson.JSONDecodeError:
                            out["value_bytes"] = len(rec.value)
                        sys.stdout.write(orjson.dumps(out).decode() + "\n")
                    else:
                        ts = time.strftime("%H:%M:%S", time.localtime(rec.timestamp / 1000))
                        key = rec.key.decode("utf-8", "replace") if rec.key else "-"
                        sys.stdout.write(f"{ts} {rec.topic}[{rec.partition}]@{rec.offset} key={key} "
                                         f"{_summary(rec.value)}\n")
                    sys.stdout.flush()
                    seen += 1
                    if args.max and seen >= args.max:
                        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        consumer.close()
    return 0


# -- topics / config --------------------------------------------------------------------------
def cmd_topics(args: argparse.Namespace) -> int:
    """List the catalogue's topics with partitions and offsets."""
    from kaifong.streams.admin import describe, ensure_topics

    settings = _settings()
    if args.create:
        for name, what in ensure_topics(settings).items():
            print(f"{name}: {what}")
    rows = describe(settings)
    by_topic: dict[str, list[Any]] = {}
    for row in rows:
        by_topic.setdefault(row.topic, []).append(row)
    print(f"{'topic':<36} {'partitions':>10} {'messages':>10}  end offsets")
    for topic, parts in by_topic.items():
        total = sum(p.end - p.beginning for p in parts)
        ends = ",".join(str(p.end) for p in parts)
        print(f"{topic:<36} {len(parts):>10} {total:>10}  {ends}")
    if not rows:
        print("(no kaifong topics yet: start a worker or run `kaifong topics --create`)")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print every setting, its variable, current value and meaning."""
    current = _settings().redacted()
    names = {f_env: name for name, f_env in zip(current, (e for e, _, _ in Settings.describe()), strict=True)}
    for env, default, doc in Settings.describe():
        print(f"{env}={current[names[env]]}\n    {doc} [default: {default}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the README's command list)."""
    parser = argparse.ArgumentParser(prog="kaifong", description="kaifong — real-time emergency "
                                     "incident pipeline on Kafka.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the embedded broker, Redis and a worker (memory only)")
    up.add_argument("--simulate", action="store_true", help="also run the simulated city (the demo)")
    up.add_argument("--accelerate", type=float, default=1.0, help="time scale for the worker and simulator")
    up.add_argument("--sim-args", default="", help="extra arguments for `kaifong simulate`")
    w = sub.add_parser("worker", help="run a worker against KAIFONG_BROKER_URL and KAIFONG_REDIS_URL")
    w.add_argument("--web-port", type=int, default=0, help="override KAIFONG_WEB_PORT")
    w.add_argument("--no-ensure-topics", action="store_true", help="do not create missing topics first")
    fh = sub.add_parser("firehose", help="run the unit-status firehose alone (a worker starts one itself "
                        "unless KAIFONG_FIREHOSE=inline)")
    fh.add_argument("--metrics-port", type=int, default=0,
                    help="loopback port of its /metrics and /ready (default: an ephemeral one, printed)")
    p = sub.add_parser("publish", help="validate and publish input events")
    p.add_argument("event_type", help="incident-reported, incident-update, unit-registered, unit-status, "
                   "drill-response")
    p.add_argument("event", help="JSON text, @file (a JSON object, array or JSON lines) or - for stdin")
    t = sub.add_parser("tail", help="print a topic's records as they arrive")
    t.add_argument("topic", help="full name or suffix, e.g. incidents.state.v1")
    t.add_argument("--json", action="store_true", help="one JSON object per record")
    t.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    t.add_argument("--max", type=int, default=0, help="stop after N records")
    t.add_argument("--timeout", type=float, default=0, help="stop after S seconds")
    tp = sub.add_parser("topics", help="each topic with partitions and end offsets")
    tp.add_argument("--create", action="store_true", help="create missing topics first")
    sub.add_parser("config", help="print every setting with its value and meaning")
    sm = sub.add_parser("simulate", help="drive the pipeline with the generated city")
    sm.add_argument("--accelerate", type=float, default=0.0, help="simulated seconds per real second")
    sm.add_argument("--duration", type=float, default=0.0, help="simulated seconds to run (0 = until Ctrl-C)")
    sm.add_argument("--seed", type=int, default=7)
    sm.add_argument("--units", type=int, default=23_000)
    sm.add_argument("--heartbeat-interval", type=float, default=10.0, help="simulated seconds between reports")
    sm.add_argument("--heartbeat-per", choices=["unit", "responder"], default="unit")
    sm.add_argument("--incidents-per-hour", type=float, default=120.0)
    sm.add_argument("--exercise-share", type=float, default=0.05)
    sm.add_argument("--no-show-share", type=float, default=0.08,
                    help="assigned units that never answer (released at their acknowledgement window)")
    sm.add_argument("--decline-share", type=float, default=0.03, help="assigned units that decline")
    sm.add_argument("--no-registry", action="store_true", help="do not publish the registry first")
    b = sub.add_parser("bench", help="measure kaifong against the same-run aiokafka baseline and broker floor")
    b.add_argument("what", nargs="?", choices=["all", "dispatch"], default="all",
                   help="all phases (default), or dispatch alone: the city loaded, incidents at the fixed rate")
    b.add_argument("--json", default="", help="also write the results as JSON to this file")
    b.add_argument("--events", type=int, default=200_000, help="status events for the throughput phases")
    b.add_argument("--incident-rate", type=float, default=100.0, help="incidents per second (latency phase)")
    b.add_argument("--duration", type=float, default=20.0, help="seconds of the latency phase")
    b.add_argument("--units", type=int, default=23_000, help="size of the generated city")
    b.add_argument("--open-incidents", type=int, default=10_000, help="open incidents at the RSS reading")
    b.add_argument("--broker-url", default="", help="use this Kafka instead of an embedded broker")
    b.add_argument("--redis-url", default="", help="use this Redis instead of an embedded one")
    dr = sub.add_parser("drill", help="order a manual pull test through the worker's API")
    dt = dr.add_mutually_exclusive_group(required=True)
    dt.add_argument("--unit", help="drill this unit")
    dt.add_argument("--grid", help="drill one random eligible unit of this grid")
    dt.add_argument("--district", help="drill one random eligible unit of this district")
    dr.add_argument("--channel", choices=["radio", "video"], default="radio")
    dr.add_argument("--url", default="", help="worker base URL (default: KAIFONG_WEB_HOST:KAIFONG_WEB_PORT)")
    rp = sub.add_parser("report", help="after-action report for a time range: HTML, PDF, figures.json, CSV")
    rp.add_argument("--from", dest="start", required=True,
                    help="start (inclusive): RFC 3339 time, or a date YYYY-MM-DD (local midnight, UTC+8)")
    rp.add_argument("--to", dest="end", required=True, help="end (exclusive), same forms as --from")
    rp.add_argument("--rings", default="", help="what-if ring table file: JSON or `name:seconds,…` text")
    rp.add_argument("--district", default="", help="only this district (e.g. 天河区)")
    rp.add_argument("--out", required=True, help="output directory")
    rp.add_argument("--no-pdf", action="store_true", help="skip report.pdf (no chromium needed)")
    units = sub.add_parser("units", help="the unit registry").add_subparsers(dest="units_command", required=True)
    ul = units.add_parser("load", help="publish a registry file (CSV or JSON lines) to units.registry.v1")
    ul.add_argument("file")
    city = sub.add_parser("city", help="the synthetic city").add_subparsers(dest="city_command", required=True)
    cg = city.add_parser("generate", help="write a seeded Guangzhou-like unit registry")
    cg.add_argument("--seed", type=int, default=7)
    cg.add_argument("--units", type=int, default=23000)
    cg.add_argument("--out", default="city.jsonl", help="output file (.csv for CSV, else JSON lines)")
    cg.add_argument("--geo", default="", help="also write district outlines (JSON) for maps")
    seats_cli.add_parser(sub)
    return parser


COMMANDS = {"up": cmd_up, "worker": cmd_worker, "firehose": cmd_firehose, "publish": cmd_publish, "tail": cmd_tail,
            "topics": cmd_topics, "config": cmd_config, "units-load": cmd_units_load,
            "city-generate": cmd_city_generate, "bench": cmd_bench,
            "simulate": cmd_simulate, "drill": cmd_drill, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kaifong`` command."""
    args = build_parser().parse_args(argv)
    command = args.command
    if command == "units":
        command = f"units-{args.units_command}"
    elif command == "city":
        command = f"city-{args.city_command}"
    elif command == "seats":
        return int(args.func(args))
    try:
        return COMMANDS[command](args)
    except ValueError as exc:  # bad settings
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
