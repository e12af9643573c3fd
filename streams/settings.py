"""kaifong.streams.settings — one frozen settings object, read from ``KAIFONG_*`` variables.

Layer: streams. Built once by :meth:`Settings.from_env` when the app is built (never at
import time); tests construct their own. Every field documents itself: ``kaifong config``
prints the table, and the README's configuration table is generated from it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Ring:
    """One response ring: its number, name and target seconds from the report."""

    number: int
    name: str
    target_s: float


#: DESIGN.md §1: the 1-3-5 rings of the programme plus the street and professional rings.
DEFAULT_RINGS = "self_rescue:60,mutual_aid:180,grid:300,street:600,professional:1200"


def parse_rings(text: str) -> tuple[Ring, ...]:
    """Parse ``name:seconds,name:seconds,…`` (ring numbers follow the order).

    >>> [r.target_s for r in parse_rings("self_rescue:60,mutual_aid:180,grid:300")]
    [60.0, 180.0, 300.0]
    """
    rings: list[Ring] = []
    for number, part in enumerate((p.strip() for p in text.split(",") if p.strip()), start=1):
        name, _, seconds = part.partition(":")
        if not name or not seconds:
            raise ValueError(f"ring {number}: expected name:seconds, got {part!r}")
        target = float(seconds)
        if target <= 0:
            raise ValueError(f"ring {number} ({name}): target must be positive")
        if rings and target <= rings[-1].target_s:
            raise ValueError(f"ring {number} ({name}): targets must increase ring by ring")
        rings.append(Ring(number, name.strip(), target))
    if not rings:
        raise ValueError("the ring table is empty")
    return tuple(rings)


def _mask_url_password(url: str) -> str:
    """``url`` with the password of its userinfo replaced by ``***``.

    >>> _mask_url_password("rediss://kaifong:s3cret@redis:6380/0")
    'rediss://kaifong:***@redis:6380/0'
    """
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not sep or not at or not colon:
        return url
    return f"{scheme}://{user}:***@{host}{slash}{path}"


def _opt(env: str, default: _T, doc: str) -> _T:
    # Typed as the default's type so each field keeps its annotation's type under mypy.
    result: _T = field(default=default, metadata={"env": env, "doc": doc})
    return result


def _parse_bool(raw: str) -> bool:
    # bool("false") is True: a flag needs its own parser.
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a kaifong process can be told, each field with its variable and meaning."""

    broker_url: str = _opt("KAIFONG_BROKER_URL", "kafka://127.0.0.1:19092",
                           "Kafka bootstrap servers, `kafka://host:port[;host:port]`.")
    redis_url: str = _opt("KAIFONG_REDIS_URL", "redis://127.0.0.1:16379/0",
                          "Redis holding unit state, reservations, clocks and dedupe keys. "
                          "`kaifong up` starts an embedded Valkey unless this is set.")
    topic_prefix: str = _opt("KAIFONG_TOPIC_PREFIX", "kaifong.", "Prefix of every topic name.")
    partitions: int = _opt("KAIFONG_PARTITIONS", 4,
                           "Partitions of each keyed topic (scale is partitions: at most one "
                           "worker per partition does work).")
    replication_factor: int = _opt("KAIFONG_REPLICATION_FACTOR", 1,
                                   "Replication factor for created topics (3 in production).")
    app_id: str = _opt("KAIFONG_APP_ID", "kaifong",
                       "Consumer group id of the workers (and Faust app id).")
    instance_id: str = _opt("KAIFONG_INSTANCE_ID", "",
                            "Static consumer-group membership id of this worker (e.g. the pod name of a "
                            "StatefulSet): a restarted worker takes its old place at once instead of "
                            "waiting for the dead member's session to expire. Empty = dynamic.")
    web_host: str = _opt("KAIFONG_WEB_HOST", "127.0.0.1", "Address of the worker's web port.")
    web_port: int = _opt("KAIFONG_WEB_PORT", 6066,
                         "Worker web port: /health, /ready, /metrics, /api/*, the console.")
    data_dir: str = _opt("KAIFONG_DATA_DIR", ".kaifong",
                         "Directory for the worker's local files (one per worker process).")
    rings: str = _opt("KAIFONG_RINGS", DEFAULT_RINGS,
                      "Ring table, `name:seconds,…` in order (ring 1 first).")
    max_event_bytes: int = _opt("KAIFONG_MAX_EVENT_BYTES", 256 * 1024,
                                "Largest accepted input event; larger ones are dead-lettered.")
    max_events_per_request: int = _opt("KAIFONG_MAX_EVENTS_PER_REQUEST", 1000,
                                       "Most events one `POST /api/events` request may carry: a longer array "
                                       "is refused whole (413 too_many_events) before any event is checked.")
    dedupe_ttl_s: int = _opt("KAIFONG_DEDUPE_TTL_S", 7 * 24 * 3600,
                             "How long an event_id is remembered for duplicate detection.")
    session_timeout_s: float = _opt("KAIFONG_BROKER_SESSION_TIMEOUT_S", 6.0,
                                    "Consumer-group session timeout; a join waits about half "
                                    "of it, so it bounds start-up and failover time.")
    heartbeat_interval_s: float = _opt("KAIFONG_BROKER_HEARTBEAT_INTERVAL_S", 0.5,
                                       "Consumer-group heartbeat interval.")
    fetch_max_wait_ms: int = _opt("KAIFONG_FETCH_MAX_WAIT_MS", 10,
                                  "Longest a fetch waits for data. Faust hard-codes 1500 ms and "
                                  "some brokers hold a fetch for the whole wait: every hop would "
                                  "cost ~1.2 s.")
    firehose_fetch_wait_ms: int = _opt("KAIFONG_FIREHOSE_FETCH_WAIT_MS", 50,
                                       "Fetch wait of the unit-status firehose and the console feed: "
                                       "bigger batches, and an idle consumer polls 20×/s instead of 100×/s.")
    producer_linger_ms: int = _opt("KAIFONG_PRODUCER_LINGER_MS", 0,
                                   "Linger of the worker's producer on the incident flow (low volume: "
                                   "latency first; the firehose's dead letters use 20 ms).")
    producer_acks: str = _opt("KAIFONG_PRODUCER_ACKS", "all", "Producer acks: all, 1 or 0.")
    status_batch_max: int = _opt("KAIFONG_STATUS_BATCH_MAX", 2000,
                                 "Largest batch the unit-status firehose processes at once.")
    firehose: str = _opt("KAIFONG_FIREHOSE", "process",
                         "Where the unit-status firehose runs: `process` (a child process per worker, "
                         "supervised and restarted; the incident flow keeps its own core) or `inline` "
                         "(inside the worker's process).")
    firehose_nice: int = _opt("KAIFONG_FIREHOSE_NICE", 10,
                              "Scheduling niceness added to the firehose process: when the cores are "
                              "contended the incident flow runs first (0 = same priority).")
    report_concurrency: int = _opt("KAIFONG_REPORT_CONCURRENCY", 4,
                                   "Incident reports handled at once per worker (each incident is still "
                                   "serialised; a burst does not queue behind one report's round trips).")
    unit_stale_after_s: float = _opt("KAIFONG_UNIT_STALE_AFTER_S", 60.0,
                                     "A unit whose status/heartbeats stop for longer is treated as "
                                     "unavailable until it speaks again.")
    run_cards_file: str = _opt("KAIFONG_RUN_CARDS_FILE", "",
                               "JSON run cards (category → severity → responders, equipment); "
                               "empty = the built-in cards.")
    readiness_weight: float = _opt("KAIFONG_READINESS_WEIGHT", 0.0,
                                   "How much a unit's drill readiness (0..1) weighs in ranking, in "
                                   "minutes of ETA per unit of readiness (0 = off).")
    districts: str = _opt("KAIFONG_DISTRICTS",
                          "越秀区,荔湾区,海珠区,天河区,白云区,黄埔区,番禺区,花都区,南沙区,从化区,增城区",
                          "The city's districts (comma-separated): the only values a `district` "
                          "metric label takes (anything else is counted as `other`).")
    escalation_renotify_s: float = _opt("KAIFONG_ESCALATION_RENOTIFY_S", 60.0,
                                        "Re-notify an unacknowledged escalation this often.")
    ack_window_fraction: float = _opt("KAIFONG_ACK_WINDOW_FRACTION", 0.33,
                                      "An assigned unit that neither acknowledges nor moves within this fraction "
                                      "of its ring's target (ring 1: 60 s x 0.33 = 20 s) is a no-show: released, "
                                      "counted, and its ring re-dispatched at once.")
    ack_windows: str = _opt("KAIFONG_ACK_WINDOWS", "",
                            "Acknowledgement windows per ring in seconds, `ring:seconds,...` (e.g. `1:15,2:45`); "
                            "rings not named use KAIFONG_ACK_WINDOW_FRACTION of their target.")
    stuck_factor: float = _opt("KAIFONG_STUCK_FACTOR", 2.0,
                               "A unit en route for longer than this many times its ETA (and at least 60 s "
                               "more) is flagged stuck, counted, and its ring re-dispatched when it is still "
                               "pending.")
    early_update_hold_s: float = _opt("KAIFONG_EARLY_UPDATE_HOLD_S", 30.0,
                                      "How long an update that arrives before its incident's report "
                                      "is held before it is dead-lettered.")
    clock_tick_s: float = _opt("KAIFONG_CLOCK_TICK_S", 0.1,
                               "How often each worker fires the ring deadlines that are due.")
    time_scale: float = _opt("KAIFONG_TIME_SCALE", 1.0,
                             "Accelerated simulation: the worker's clock runs this many times faster than "
                             "the wall clock from KAIFONG_TIME_EPOCH (1 = real time; never in production).")
    time_epoch: float = _opt("KAIFONG_TIME_EPOCH", 0.0,
                             "Unix time at which the accelerated clock equals the wall clock (shared by the "
                             "simulator and every worker of an accelerated run).")
    kafka_security_protocol: str = _opt("KAIFONG_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT",
                                        "Kafka security protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL "
                                        "(production: SASL_SSL). Applies to every Kafka client kaifong builds.")
    kafka_sasl_mechanism: str = _opt("KAIFONG_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512",
                                     "SASL mechanism when the protocol is SASL_*: SCRAM-SHA-256, SCRAM-SHA-512 "
                                     "or PLAIN (PLAIN only over SASL_SSL).")
    kafka_sasl_username: str = _opt("KAIFONG_KAFKA_SASL_USERNAME", "", "SASL user name.")
    kafka_sasl_password: str = _opt("KAIFONG_KAFKA_SASL_PASSWORD", "",
                                    "SASL password. Secret: never logged (masked by `kaifong config`).")
    kafka_ssl_cafile: str = _opt("KAIFONG_KAFKA_SSL_CAFILE", "",
                                 "PEM file of the CA(s) that sign the brokers' certificates; empty = the "
                                 "system trust store. Hostnames are always verified.")
    kafka_ssl_certfile: str = _opt("KAIFONG_KAFKA_SSL_CERTFILE", "",
                                   "PEM client certificate for mutual TLS (with KAIFONG_KAFKA_SSL_KEYFILE).")
    kafka_ssl_keyfile: str = _opt("KAIFONG_KAFKA_SSL_KEYFILE", "", "PEM private key of the client certificate.")
    redis_ssl_cafile: str = _opt("KAIFONG_REDIS_SSL_CAFILE", "",
                                 "PEM CA file for a `rediss://` KAIFONG_REDIS_URL (TLS); empty = the system "
                                 "trust store. Redis AUTH rides in the URL: `rediss://user:password@host:port/0`.")
    watchdog_interval_s: float = _opt("KAIFONG_WATCHDOG_INTERVAL_S", 60.0,
                                      "How often the broker watchdog times a fetch of the newest record of "
                                      "every partition (0 = off).")
    drills_per_day: int = _opt("KAIFONG_DRILLS_PER_DAY", 705,
                               "Pull-test drills the scheduler issues a day (the programme: 705 for 23,000 units).")
    drill_coverage_days: int = _opt("KAIFONG_DRILL_COVERAGE_DAYS", 35,
                                    "Every unit is drilled at least once in this many days (needs "
                                    "KAIFONG_DRILLS_PER_DAY x days >= units).")
    drill_hours: str = _opt("KAIFONG_DRILL_HOURS", "8-20",
                            "Local hours (UTC+8) scheduled drills are issued in, `start-end`, e.g. 8-20.")
    drill_ack_target_s: float = _opt("KAIFONG_DRILL_ACK_TARGET_S", 60.0,
                                     "A drilled unit must acknowledge within this many seconds to pass (no "
                                     "acknowledgement within 3x this is no_answer).")
    drill_muster_target_s: float = _opt("KAIFONG_DRILL_MUSTER_TARGET_S", 180.0,
                                        "A drilled unit must muster its responders within this many seconds to "
                                        "pass (no muster within 3x this is fail).")
    drill_seed: int = _opt("KAIFONG_DRILL_SEED", 0,
                           "Seed of the daily drill draw (the same seed, registry and history give the same "
                           "plan); 0 = random each day.")
    drills_enabled: bool = _opt("KAIFONG_DRILLS_ENABLED", True,
                                "Run the drill scheduler (one worker at a time holds the lease and issues the "
                                "day's drills); manual drills and scoring work either way.")
    drill_spread_s: float = _opt("KAIFONG_DRILL_SPREAD_S", 0.0,
                                 "Tests and demos: squeeze a newly planned day of drills into this many seconds "
                                 "from planning (0 = spread over KAIFONG_DRILL_HOURS; never in production).")
    log_level: str = _opt("KAIFONG_LOG_LEVEL", "info", "Log level: debug, info, warning, error.")
    api_token: str = _opt("KAIFONG_API_TOKEN", "",
                          "Bearer token for HTTP writes (and for everything when the web port "
                          "is bound beyond loopback). Secret: never logged.")
    seats_file: str = _opt("KAIFONG_SEATS_FILE", "",
                           "Duty seats (JSON or YAML, schema `seats`): escalations are addressed to the "
                           "on-duty seats of their level and jurisdiction, seats sign in with their own "
                           "tokens. Re-read when it changes. Empty: no routing, one shared token. "
                           "`kaifong up` writes one for the synthetic city.")
    seats_reload_s: float = _opt("KAIFONG_SEATS_RELOAD_S", 2.0,
                                 "Look at the seats file's modification time this often (a change is "
                                 "re-read and checked; an invalid file keeps the previous seats).")
    alertmanager_urls: str = _opt("KAIFONG_ALERTMANAGER_URLS", "",
                                  "Alertmanager base URLs (comma-separated, every one of an HA pair): each open "
                                  "escalation is pushed to /api/v2/alerts of each, kept alive while open and "
                                  "resolved when acknowledged or closed. Empty: console and log only.")
    notify_interval_s: float = _opt("KAIFONG_NOTIFY_INTERVAL_S", 2.0,
                                    "Look for escalations to push (or resolve) this often; the worker that "
                                    "raised one also pushes it at once.")
    notify_keepalive_s: float = _opt("KAIFONG_NOTIFY_KEEPALIVE_S", 60.0,
                                     "Re-push every open escalation this often; each push holds it open in "
                                     "Alertmanager for 5 of these (a kaifong that died stops holding it).")
    console_url: str = _opt("KAIFONG_CONSOLE_URL", "",
                            "The console's address as duty officers reach it (links in notifications); "
                            "default http://<web host>:<web port>.")
    auth_signing_key: str = _opt("KAIFONG_AUTH_SIGNING_KEY", "",
                                 "HS256 key that signs seat tokens (`kaifong seats token SEAT`) in the embedded "
                                 "mode. Secret: never logged. Empty with a seats file: derived from "
                                 "KAIFONG_API_TOKEN.")
    auth_issuers: str = _opt("KAIFONG_AUTH_ISSUERS", "",
                             "OIDC issuers whose RS256/ES256 tokens are accepted: `issuer=path-to-PEM-public-key` "
                             "(comma-separated). Claims: `seat` (a seat id), `role` (viewer, dispatcher, admin).")
    auth_audience: str = _opt("KAIFONG_AUTH_AUDIENCE", "kaifong", "The `aud` every seat token must carry.")
    embedded_broker_port: int = _opt("KAIFONG_EMBEDDED_BROKER_PORT", 19092,
                                     "`kaifong up`: port of the embedded Tansu broker.")
    embedded_redis_port: int = _opt("KAIFONG_EMBEDDED_REDIS_PORT", 16379,
                                    "`kaifong up`: port of the embedded Valkey.")
    embedded_alertmanager_port: int = _opt("KAIFONG_EMBEDDED_ALERTMANAGER_PORT", 19093,
                                           "`kaifong up`: port of the Alertmanager it starts (when installed "
                                           "and KAIFONG_ALERTMANAGER_URLS is empty).")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``), then ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            kind: Any = type(f.default)
            try:
                values[f.name] = _parse_bool(raw) if kind is bool else kind(raw)
            except ValueError:
                raise ValueError(f"{f.metadata['env']}={raw!r}: expected {kind.__name__}") from None
        values.update(overrides)
        settings = cls(**values)
        settings.ring_table()  # fail at start, not at the first incident
        settings.ack_window_table()
        if not 0 < settings.ack_window_fraction <= 1:
            raise ValueError(f"KAIFONG_ACK_WINDOW_FRACTION={settings.ack_window_fraction!r}: expected 0 < x <= 1")
        if not settings.stuck_factor >= 1:
            raise ValueError(f"KAIFONG_STUCK_FACTOR={settings.stuck_factor!r}: expected >= 1")
        if settings.firehose not in ("process", "inline"):
            raise ValueError(f"KAIFONG_FIREHOSE={settings.firehose!r}: expected process or inline")
        return settings

    def ring_table(self) -> tuple[Ring, ...]:
        """The configured rings, parsed."""
        return parse_rings(self.rings)

    def ack_window_table(self) -> dict[int, float]:
        """Acknowledgement window (s) of every configured ring.

        >>> Settings(ack_windows="1:15").ack_window_table()
        {1: 15.0, 2: 59.4, 3: 99.0, 4: 198.0, 5: 396.0}
        """
        table = {r.number: round(r.target_s * self.ack_window_fraction, 1) for r in self.ring_table()}
        for item in filter(None, (x.strip() for x in self.ack_windows.split(","))):
            ring, sep, seconds = item.partition(":")
            try:
                number, value = int(ring), float(seconds)
            except ValueError:
                number, value = -1, -1.0
            if not sep or number not in table or not value > 0:
                raise ValueError(f"KAIFONG_ACK_WINDOWS={self.ack_windows!r}: expected ring:seconds for "
                                 f"configured rings with seconds > 0, e.g. 1:15,2:45")
            table[number] = value
        return table

    @property
    def bootstrap_servers(self) -> list[str]:
        """``host:port`` list for Kafka clients (scheme stripped)."""
        return [s.split("://", 1)[-1] for s in self.broker_url.replace(",", ";").split(";") if s]

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked (safe to log or print)."""
        out = dataclasses.asdict(self)
        for secret in ("api_token", "kafka_sasl_password", "auth_signing_key"):
            if out[secret]:
                out[secret] = "***"
        for url in ("broker_url", "redis_url"):  # a password in a URL's userinfo
            out[url] = _mask_url_password(out[url])
        return out

    def clock(self) -> Callable[[], datetime]:
        """The clock every component is given: wall time, or the accelerated simulation time."""
        scale, epoch = self.time_scale, self.time_epoch
        if scale == 1.0:
            return lambda: datetime.now(UTC)

        def accelerated() -> datetime:
            return datetime.fromtimestamp(epoch + (time.time() - epoch) * scale, UTC)

        return accelerated

    def district_labels(self) -> tuple[str, ...]:
        """The bounded set of district label values (configured districts plus ``other``)."""
        return (*[d.strip() for d in self.districts.split(",") if d.strip()], "other")

    def to_env(self) -> dict[str, str]:
        """The ``KAIFONG_*`` variables that rebuild these settings in another process."""
        return {f.metadata["env"]: str(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """``(variable, default, meaning)`` for every setting."""
        return [(f.metadata["env"], str(f.default), f.metadata["doc"]) for f in dataclasses.fields(cls)]
