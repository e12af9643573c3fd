"""Issue 10, security: client TLS/SASL/AUTH options, payload limits, no personal data in logs or
metric labels, constant-time token checks, and nothing rendered as HTML.

No Kafka broker with SASL or TLS is available here (the embedded Tansu speaks PLAINTEXT only),
so the Kafka side is checked on the options each client library receives and on the clients
accepting them; Redis TLS and AUTH are checked live, through a TLS-terminating proxy in front of a
password-protected Valkey (the bundled Valkey is built without TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaProducer

from kaifong.streams import security
from kaifong.streams.embedded import Service, free_port, valkey
from kaifong.streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "sasl-Secr3t-9f1c"  # a test secret, looked for in outputs


# -- certificates (openssl CLI) -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A throw-away CA, a server certificate for ``localhost`` and a client certificate."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=kaifong-test-ca")
    (d / "san.cnf").write_text("subjectAltName=DNS:localhost\n")  # not 127.0.0.1: see the host name check
    for name, cn in (("server", "localhost"), ("client", "kaifong-worker")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", "san.cnf")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other-ca.pem", "-days", "2",
        "-subj", "/CN=some-other-ca")
    return {k: str(d / f) for k, f in (("ca", "ca.pem"), ("server_cert", "server.pem"), ("server_key", "server.key"),
                                       ("client_cert", "client.pem"), ("client_key", "client.key"),
                                       ("other_ca", "other-ca.pem"))}


def sasl_ssl(pki: dict[str, str], **over: Any) -> Settings:
    base: dict[str, Any] = {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512",
                            "kafka_sasl_username": "kaifong", "kafka_sasl_password": PASSWORD,
                            "kafka_ssl_cafile": pki["ca"], "kafka_ssl_certfile": pki["client_cert"],
                            "kafka_ssl_keyfile": pki["client_key"]}
    base.update(over)
    return Settings(**base)


def assert_verifying_context(context: Any, pki: dict[str, str]) -> None:
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "kaifong-test-ca"),),)]


# -- 1. client options, per library ---------------------------------------------------------------------------
def test_kafka_python_kwargs(pki: dict[str, str]) -> None:
    """kafka-python (admin, topics, publisher, CLI): SASL_SSL with SCRAM, a verifying TLS context."""
    from kafka import KafkaConsumer
    from kafka.admin import KafkaAdminClient

    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        kw = security.client_kwargs(sasl_ssl(pki, kafka_sasl_mechanism=mechanism.lower()), "kafka-python")
        assert {k: v for k, v in kw.items() if k != "ssl_context"} == {
            "security_protocol": "SASL_SSL", "sasl_mechanism": mechanism, "sasl_plain_username": "kaifong",
            "sasl_plain_password": PASSWORD}
        assert_verifying_context(kw["ssl_context"], pki)
        for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
            assert set(kw) <= set(client.DEFAULT_CONFIG), client  # every option is one the client knows
    assert security.kafka_python_kwargs(Settings()) == {"security_protocol": "PLAINTEXT"}
    tls_only = security.kafka_python_kwargs(Settings(kafka_security_protocol="ssl", kafka_ssl_cafile=pki["ca"]))
    assert set(tls_only) == {"security_protocol", "ssl_context"} and tls_only["security_protocol"] == "SSL"


def test_aiokafka_kwargs_accepted_by_the_clients(pki: dict[str, str]) -> None:
    """aiokafka (units firehose, live feed, brokerwatch, bench, simulator): the clients accept the
    options (they validate protocol, mechanism and context when built)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    kw = security.client_kwargs(sasl_ssl(pki), "aiokafka")
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_password"] == PASSWORD
    assert_verifying_context(kw["ssl_context"], pki)

    async def build() -> None:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", **kw)
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9", group_id=None, **kw)
        assert producer.client._security_protocol == "SASL_SSL"
        assert consumer._client._sasl_mechanism == "SCRAM-SHA-512"
        await consumer.stop()

    asyncio.run(build())


def test_faust_conf_reaches_aiokafka(pki: dict[str, str]) -> None:
    """Faust's own consumer and producer get the same options through ``broker_credentials``."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from kaifong.streams.app import create_app

    settings = sasl_ssl(pki, kafka_sasl_mechanism="SCRAM-SHA-256")
    app = create_app(settings)
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    assert {k: v for k, v in auth.items() if k != "ssl_context"} == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "kaifong",
        "sasl_plain_password": PASSWORD}
    assert_verifying_context(auth["ssl_context"], pki)
    assert PASSWORD not in repr(app.conf.broker_credentials)
    tls = create_app(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pki["ca"]))
    auth = credentials_to_aiokafka_auth(tls.conf.broker_credentials, tls.conf.ssl_context)
    assert auth["security_protocol"] == "SSL"
    assert_verifying_context(auth["ssl_context"], pki)
    plain = create_app(Settings())
    assert credentials_to_aiokafka_auth(plain.conf.broker_credentials, plain.conf.ssl_context) == {
        "security_protocol": "PLAINTEXT"}


def test_redis_kwargs(pki: dict[str, str]) -> None:
    """redis-py: ``rediss://`` verifies the server against the CA file and its host name."""
    from redis.asyncio.connection import SSLConnection

    from kaifong.streams.redisio import connect

    settings = Settings(redis_url="rediss://kaifong:pw@127.0.0.1:6380/2", redis_ssl_cafile=pki["ca"])
    kw = security.client_kwargs(settings, "redis")
    assert kw == {"ssl_cert_reqs": "required", "ssl_check_hostname": True, "ssl_ca_certs": pki["ca"],
                  "ssl_min_version": ssl.TLSVersion.TLSv1_2}
    client = connect(settings)
    pool = client.connection_pool
    assert pool.connection_class is SSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == pki["ca"]
    assert pool.connection_kwargs["password"] == "pw" and pool.connection_kwargs["username"] == "kaifong"
    assert security.redis_kwargs(Settings(redis_url="redis://127.0.0.1:6379/0")) == {}


@pytest.mark.parametrize(("over", "match"), [
    ({"kafka_security_protocol": "TLS"}, "KAIFONG_KAFKA_SECURITY_PROTOCOL"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_password": ""}, "KAIFONG_KAFKA_SASL_PASSWORD"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI"}, "KAIFONG_KAFKA_SASL_MECHANISM"),
    ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN"}, "in clear"),
    ({"kafka_security_protocol": "PLAINTEXT", "kafka_ssl_cafile": "/x.pem"}, "not encrypted"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "/k.pem"}, "KAIFONG_KAFKA_SSL_CERTFILE"),
    ({"redis_url": "redis://127.0.0.1:6379/0", "redis_ssl_cafile": "/x.pem"}, "not rediss://"),
])
def test_insecure_or_inconsistent_settings_refused(over: dict[str, str], match: str) -> None:
    base = {"kafka_sasl_username": "u", "kafka_sasl_password": "p", **over}
    settings = Settings(**base)  # type: ignore[arg-type]
    with pytest.raises(security.SecurityConfigError, match=match):
        for library in ("kafka-python", "aiokafka", "faust", "redis"):
            security.client_kwargs(settings, library)  # type: ignore[arg-type]


#: The source analysis of the next two tests, run in a fresh interpreter: CPython 3.11.7's
#: ``ast.parse`` can fail with "AST constructor recursion depth mismatch" late in a session full
#: of asyncio and threads (see the note in conftest.py), which says nothing about the code read.
ANALYSIS = r"""
import ast, json, re, sys
from pathlib import Path

root = Path(sys.argv[1])
kafka = {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient", "AIOKafkaProducer", "AIOKafkaConsumer"}
secret = re.compile(r"token|cookie|bearer|secret|password", re.IGNORECASE)
out = {"clients": [], "without": [], "compare_digest": {}, "secret_compares": []}


def is_client(call):
    name = ast.unparse(call.func)
    return name.rsplit(".", 1)[-1] in kafka or name.endswith("Redis.from_url") or \
        name in ("Redis", "redis.Redis", "aioredis.Redis")


for path in sorted([*root.glob("streams/*.py"), *root.glob("agents/**/*.py")]):
    tree = ast.parse(path.read_text("utf-8"))
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if "web" in path.parts and func.name in ("token_matches", "same_secret"):
            out["compare_digest"][func.name] = sorted({ast.unparse(c.func) for c in ast.walk(func)
                                                       if isinstance(c, ast.Call)})
        for call in ast.walk(func):
            if not isinstance(call, ast.Call) or not is_client(call):
                continue
            where = f"{path.name}:{call.lineno}: {ast.unparse(call.func)}"
            spreads = [k.value for k in call.keywords if k.arg is None]
            direct = any("security." in ast.unparse(v) for v in spreads)
            # KafkaProducer(**config) where config holds **security.... (the publisher)
            via_dict = any(isinstance(v, ast.Name) and any(
                isinstance(a, (ast.Assign, ast.AnnAssign)) and v.id in ast.unparse(a).split("=", 1)[0]
                and "security." in ast.unparse(a) for a in ast.walk(func)) for v in spreads)
            out["clients"].append(where)
            if not (direct or via_dict):
                out["without"].append(where)
    if "web" in path.parts:  # every module of the HTTP room
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                operands = [o for o in (node.left, *node.comparators) if not isinstance(o, ast.Constant)]
                if any(secret.search(ast.unparse(o)) for o in operands):
                    out["secret_compares"].append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
print(json.dumps(out))
"""


def analysis() -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", ANALYSIS, str(ROOT)], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_every_client_gets_the_security_options() -> None:
    """Every Kafka or Redis client built in kaifong's code passes the security helper's options,
    as keyword arguments of the call or of the dict spread into it (a new client that forgets them
    fails here)."""
    found = analysis()
    assert not found["without"], f"clients built without **security.<library>_kwargs(settings): {found['without']}"
    assert len(found["clients"]) >= 15, found["clients"]
    assert "security.faust_conf(settings)" in (ROOT / "streams" / "app.py").read_text("utf-8")


def test_redacted_masks_every_secret() -> None:
    settings = Settings(api_token="tok-123456", kafka_sasl_password=PASSWORD,
                        redis_url="rediss://kaifong:redis-Pw-77@redis:6380/0",
                        broker_url="kafka://user:brokerPw@k1:9093;k2:9093")
    text = json.dumps(settings.redacted(), ensure_ascii=False)
    for secret in ("tok-123456", PASSWORD, "redis-Pw-77", "brokerPw"):
        assert secret not in text
    assert settings.redacted()["redis_url"] == "rediss://kaifong:***@redis:6380/0"
    assert settings.redacted()["kafka_sasl_password"] == "***"
    out = subprocess.run([sys.executable, "-m", "kaifong.agents.cli", "config"],
                         env={**settings.to_env(), "PATH": "/usr/bin"},
                         capture_output=True, text=True, check=True).stdout
    assert "KAIFONG_KAFKA_SASL_PASSWORD=***" in out
    for secret in ("tok-123456", PASSWORD, "redis-Pw-77", "brokerPw"):
        assert secret not in out


# -- 2. Redis TLS and AUTH, live ---------------------------------------------------------------------------------
class TLSProxy:
    """TLS on 127.0.0.1:port, plain TCP to ``target_port`` (what a TLS-enabled Redis looks like)."""

    def __init__(self, target_port: int, cert: str, key: str) -> None:
        self.target_port, self.port = target_port, free_port()
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.context))
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> TLSProxy:
        self.thread.start()
        self.ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        def stop() -> None:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.stop()

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(5)


@pytest.fixture
def protected_valkey(tmp_path: Path) -> Iterator[Service]:
    svc = valkey(free_port(), tmp_path)
    svc.start()
    redis.Redis(port=svc.port).config_set("requirepass", "redis-Pw-77")
    try:
        yield svc
    finally:
        svc.stop()


@pytest.mark.integration
def test_redis_tls_and_auth_live(pki: dict[str, str], protected_valkey: Service) -> None:
    from kaifong.streams.redisio import connect

    async def ping(settings: Settings) -> Any:
        client = connect(settings)
        try:
            return await client.ping()
        finally:
            await client.aclose()

    with TLSProxy(protected_valkey.port, pki["server_cert"], pki["server_key"]) as proxy:
        good = Settings(redis_url=f"rediss://:redis-Pw-77@localhost:{proxy.port}/0", redis_ssl_cafile=pki["ca"])
        assert asyncio.run(ping(good)) is True
        # A server whose certificate another CA signed is refused (no silent downgrade).
        with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(ping(Settings(redis_url=good.redis_url, redis_ssl_cafile=pki["other_ca"])))
        # The host name is checked: the certificate names localhost, not 127.0.0.1.
        with pytest.raises(redis.exceptions.ConnectionError, match=r"(?i)hostname|match"):
            asyncio.run(ping(Settings(redis_url=f"rediss://:redis-Pw-77@127.0.0.1:{proxy.port}/0",
                                      redis_ssl_cafile=pki["ca"])))
        # AUTH: a wrong password is refused.
        with pytest.raises(redis.exceptions.AuthenticationError):
            asyncio.run(ping(Settings(redis_url=f"rediss://:nope@localhost:{proxy.port}/0",
                                      redis_ssl_cafile=pki["ca"])))
        # Plain TCP to the TLS port gets nowhere.
        with pytest.raises(redis.exceptions.ConnectionError):
            asyncio.run(ping(Settings(redis_url=f"redis://:redis-Pw-77@localhost:{proxy.port}/0")))


# -- 3. constant-time token checks, no HTML ---------------------------------------------------------------------
def test_token_comparisons_are_constant_time() -> None:
    """agents/web/ compares the bearer token (the guard) and every presented secret (identity's
    same_secret) with hmac.compare_digest, and no module of agents/web/ compares a secret with ==/!=."""
    from kaifong.agents.web.api import Guard

    found = analysis()
    for name in ("token_matches", "same_secret"):  # the guard's bearer check; identity's
        assert "hmac.compare_digest" in found["compare_digest"][name], (name, found["compare_digest"])
    assert not found["secret_compares"], found["secret_compares"]
    guard = Guard("s3cret-token", loopback=False)
    assert guard.token_matches("s3cret-token") and not guard.token_matches("s3cret-tokeN")
    assert not guard.token_matches("") and not guard.token_matches(None)
    assert not Guard("", loopback=True).token_matches("")


def _non_literal(arg: str) -> bool:
    arg = arg.strip()
    return not (re.fullmatch(r'"[^"$]*"|\'[^\'$]*\'|`[^`$]*`', arg) is not None)


def test_console_js_never_renders_data_as_html() -> None:
    """No innerHTML/outerHTML assignment, insertAdjacentHTML or document.write with anything but a
    literal; no eval or Function constructor (the CSP forbids inline script as well)."""
    js = (ROOT / "agents" / "web" / "static" / "console.js").read_text("utf-8")
    code = re.sub(r"//[^\n]*|/\*.*?\*/", "", js, flags=re.DOTALL)  # comments may mention the words
    offenders = [m.group(0) for m in re.finditer(r"\.(innerHTML|outerHTML)\s*\+?=\s*([^;\n]+)", code)
                 if _non_literal(m.group(2))]
    offenders += [m.group(0) for m in re.finditer(r"insertAdjacentHTML\s*\(\s*[^,]+,\s*([^)]+)\)", code)
                  if _non_literal(m.group(1))]
    offenders += re.findall(r"document\.write(?:ln)?\s*\([^)]*\)", code)
    offenders += re.findall(r"\beval\s*\(|\bnew\s+Function\s*\(|set(?:Timeout|Interval)\s*\(\s*[\"'`]", code)
    assert not offenders, offenders
    assert "textContent" in code  # the way it renders text
    html = (ROOT / "agents" / "web" / "static" / "index.html").read_text("utf-8")
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "no inline script in the console page"
    assert not re.search(r"\son[a-z]+\s*=", html), "no inline event handlers"


# -- 4. a worker: limits, descriptions as JSON, no personal data in logs or metrics ---------------------------------
PHONE, NAME = "13912345678", "陈大文"
DESCRIPTION = "李女士住在幸福路8号三楼 <script>alert('x')</script><img src=x onerror=alert(1)> &amp; \"q\""
NOTE = "call back Mr Wong on 852-6123-4567"
SECRETS = ("api-T0ken-abc", PASSWORD)


def post(base: str, path: str, body: bytes, token: str | None = None, chunked: bool = False) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data: Any = iter([body[i:i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
    req = urllib.request.Request(base + path, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read() or b"{}")
    except (ConnectionError, urllib.error.URLError) as e:  # closed while uploading: the answer was 413
        return -1, str(e)


@pytest.mark.integration
def test_worker_limits_pii_and_html(new_settings: Any, start_worker: Any) -> None:
    """One worker at DEBUG log level: payload limits on topics and over HTTP, /api/incidents hands
    descriptions out as JSON strings, and no caller phone, name, description or note — nor a
    secret — appears in its log or its /metrics."""
    started = time.monotonic()
    settings = new_settings(log_level="debug", api_token=SECRETS[0], kafka_sasl_password=SECRETS[1],
                            max_event_bytes=4096, rings="self_rescue:3600,mutual_aid:3601,grid:3602",
                            early_update_hold_s=2.0)
    worker = start_worker(settings)
    tag = uuid.uuid4().hex[:6]
    p = settings.topic_prefix
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks="all",
                             max_request_size=1 << 20)

    def incident(n: int, **over: Any) -> dict[str, Any]:
        event = {"event_id": f"{tag}-r{n}", "incident_id": f"{tag}-i{n}", "category": "fire", "severity": 2,
                 "reported_at": "2026-11-29T14:00:00+08:00", "location": {"lat": 23.129, "lon": 113.264},
                 "district": "越秀区", "source": "call_110", "exercise": False, "description": DESCRIPTION,
                 "caller": {"phone": PHONE, "name": NAME}}
        event.update(over)
        return event

    sent = [incident(n) for n in range(5)]
    bad = [incident(10, severity=9), incident(11, caller={"phone": PHONE * 3, "name": NAME}),  # too long phone
           incident(12, description=DESCRIPTION * 40),  # over KAIFONG_MAX_EVENT_BYTES: too_large
           incident(13, extra=NAME), {"caller": {"phone": PHONE, "name": NAME}}]
    for event in sent + bad:
        producer.send(p + "incidents.reported.v1", key=str(event.get("incident_id", "x")).encode(),
                      value=orjson.dumps(event))
    producer.send(p + "incidents.reported.v1", key=b"raw", value=f"{{not json {PHONE} {NAME}".encode())
    # Updates with a personal note: one applied, one for an incident that never comes (parked,
    # then dead-lettered by the clock: the late dead-letter path).
    for n, iid in ((0, f"{tag}-i0"), (1, f"{tag}-never")):
        producer.send(p + "incidents.updates.v1", key=iid.encode(), value=orjson.dumps(
            {"event_id": f"{tag}-u{n}", "incident_id": iid, "kind": "acknowledged",
             "at": "2026-11-29T14:00:30+08:00", "note": NOTE}))
    producer.send(p + "units.status.v1", key=b"u", value=orjson.dumps(
        {"event_id": "s", "unit_id": "u", "status": "available", "at": "2026-11-29T14:00:00+08:00", "seq": 1,
         "who": NAME}))
    producer.flush(30)
    producer.close(5)

    # HTTP ingest with personal data, valid and not.
    base = worker.base_url
    status, answer = post(base, "/api/events/incident-reported", orjson.dumps(incident(20)), SECRETS[0])
    assert status == 202, answer
    status, answer = post(base, "/api/events/incident-reported", orjson.dumps(incident(21, severity=0)), SECRETS[0])
    assert status == 400 and answer["errors"][0]["error_class"] == "out_of_range"

    # Payload limits over HTTP: one event over KAIFONG_MAX_EVENT_BYTES is refused (400, too_large);
    # a body over 100 x that is 413 — by its declared length, and while reading a chunked one.
    status, answer = post(base, "/api/events/incident-reported", orjson.dumps(incident(22, description="x" * 4000)),
                          SECRETS[0])
    assert status == 400 and answer["errors"][0]["error_class"] == "too_large"
    huge = b"[" + b" " * (4096 * 100) + b"]"
    assert post(base, "/api/events/incident-reported", huge, SECRETS[0])[0] in (413, -1)
    assert post(base, "/api/events/incident-reported", huge, SECRETS[0], chunked=True)[0] in (413, -1)
    assert post(base, "/api/escalations/x:r1:ring_deadline_missed:0/ack", b"{" + b" " * 5000 + b"}",
                SECRETS[0])[0] in (413, -1)
    assert worker.metric("kaifong_http_requests_total", code="413") == 3
    assert post(base, "/api/events/incident-reported", orjson.dumps(incident(23)))[0] == 401  # no token

    # Everything processed (5 + 1 valid reports; the rest dead-lettered), the parked update expired.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = sum(worker.metric("kaifong_events_in_total", outcome=o) for o in ("ok", "invalid", "refused"))
        if done >= 15 and worker.metric("kaifong_deadletters_total", stage="clock") >= 1:
            break
        time.sleep(0.3)
    assert worker.metric("kaifong_events_in_total", topic=p + "incidents.reported.v1", outcome="ok") == 6
    assert worker.metric("kaifong_events_in_total", topic=p + "incidents.reported.v1", outcome="invalid") == 6
    assert worker.metric("kaifong_deadletters_total", stage="intake", error_class="too_large") == 1
    assert worker.metric("kaifong_deadletters_total", stage="clock") >= 1

    # /api/incidents: the description is the JSON string it was, nothing escaped or interpreted.
    request = urllib.request.Request(base + "/api/incidents")
    with urllib.request.urlopen(request, timeout=10) as r:
        headers, raw = dict(r.headers), r.read()
    assert headers["Content-Type"].startswith("application/json")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    items = {i["incident_id"]: i for i in orjson.loads(raw)["incidents"]}
    assert items[f"{tag}-i1"]["description"] == DESCRIPTION
    assert b"&lt;" not in raw and "caller" not in items[f"{tag}-i1"]
    # The caller's contact is not kept (nor served): only the description rides along.
    with urllib.request.urlopen(base + f"/api/incidents/{tag}-i1", timeout=10) as r:
        detail = r.read().decode("utf-8")
    assert PHONE not in detail and NAME not in detail

    time.sleep(1.0)  # let the last log lines reach the file
    _, metrics_body = worker.get("/metrics")
    log_text = worker.log_path.read_text("utf-8", "replace")
    assert "DEBUG" in log_text, "the worker must have logged at DEBUG level"
    assert "dead-lettered" in log_text, "the dead-letter path must have logged"
    metrics_text = metrics_body.decode("utf-8")
    for needle in (PHONE, NAME, "李女士", "幸福路", NOTE, "852-6123-4567", "<script>", *SECRETS):
        assert needle not in log_text, f"{needle!r} in the worker log"
        assert needle not in metrics_text, f"{needle!r} in /metrics"
    print(f"\nworker at DEBUG: {len(log_text.splitlines())} log lines, {len(metrics_text.splitlines())} metric "
          f"lines scanned; {time.monotonic() - started:.1f}s")
