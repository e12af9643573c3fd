"""kaifong.streams.security — TLS, SASL and Redis AUTH for every client kaifong builds.

Layer: streams. The one place that turns the settings into the keyword arguments of each client
library, so no client is ever built with a different (weaker) policy than another:

- :func:`kafka_python_kwargs` — kafka-python (``streams.admin``, ``streams.publisher``, the CLI);
- :func:`aiokafka_kwargs` — aiokafka (the units firehose, the live feed, the bench, the simulator);
- :func:`faust_conf` — the Faust app's own consumer and producer (``broker_credentials``);
- :func:`redis_kwargs` — redis-py (``rediss://`` TLS; AUTH rides in the URL's userinfo).

:func:`client_kwargs` dispatches by library name. Every TLS connection verifies the peer's
certificate *and* host name, with TLS 1.2 at least; a client certificate is presented when one is
configured (mutual TLS). A configuration that looks secure but is not (TLS files with a plaintext
protocol, PLAIN over an unencrypted link, SASL without a password, a CA file for a ``redis://``
URL) is refused at start with :class:`SecurityConfigError` instead of silently running in clear.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Any, Literal

from kaifong.streams.settings import Settings

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
Library = Literal["kafka-python", "aiokafka", "faust", "redis"]
#: Libraries whose DEBUG output carries message keys and values (aiokafka and kafka-python log
#: every record they send, payload included; Faust and mode log events): they never log below
#: INFO, whatever KAIFONG_LOG_LEVEL says, so a debugging session cannot put a caller's phone
#: number or a description in the log.
PAYLOAD_LOGGERS = ("aiokafka", "kafka", "faust", "mode", "redis")


class SecurityConfigError(ValueError):
    """The security settings are inconsistent or would silently run without protection."""


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """The Kafka security settings, checked and normalised."""

    protocol: str
    mechanism: str
    username: str
    password: str
    cafile: str
    certfile: str
    keyfile: str

    @property
    def tls(self) -> bool:
        """True when connections to the brokers are encrypted."""
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        """True when clients authenticate with SASL."""
        return self.protocol.startswith("SASL_")

    def __repr__(self) -> str:  # never the password, even in a traceback
        return f"KafkaSecurity(protocol={self.protocol!r}, mechanism={self.mechanism!r}, username={self.username!r})"


def kafka_security(settings: Settings) -> KafkaSecurity:
    """The checked Kafka security settings; raise :class:`SecurityConfigError` when inconsistent."""
    protocol = settings.kafka_security_protocol.strip().upper() or "PLAINTEXT"
    mechanism = settings.kafka_sasl_mechanism.strip().upper()
    if protocol not in PROTOCOLS:
        raise SecurityConfigError(f"KAIFONG_KAFKA_SECURITY_PROTOCOL={protocol!r}: expected one of "
                                  f"{', '.join(PROTOCOLS)}")
    sec = KafkaSecurity(protocol, mechanism, settings.kafka_sasl_username, settings.kafka_sasl_password,
                        settings.kafka_ssl_cafile, settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    if sec.sasl:
        if mechanism not in MECHANISMS:
            raise SecurityConfigError(f"KAIFONG_KAFKA_SASL_MECHANISM={mechanism!r}: expected one of "
                                      f"{', '.join(MECHANISMS)}")
        if not sec.username or not sec.password:
            raise SecurityConfigError(f"{protocol} needs KAIFONG_KAFKA_SASL_USERNAME and KAIFONG_KAFKA_SASL_PASSWORD")
        if mechanism == "PLAIN" and not sec.tls:
            raise SecurityConfigError("SASL PLAIN sends the password in clear: use SASL_SSL (or a SCRAM mechanism)")
    if not sec.tls and (sec.cafile or sec.certfile or sec.keyfile):
        raise SecurityConfigError(f"KAIFONG_KAFKA_SSL_* files are set but KAIFONG_KAFKA_SECURITY_PROTOCOL={protocol} "
                                  "is not encrypted: use SSL or SASL_SSL")
    if sec.keyfile and not sec.certfile:
        raise SecurityConfigError("KAIFONG_KAFKA_SSL_KEYFILE needs KAIFONG_KAFKA_SSL_CERTFILE")
    return sec


def tls_context(cafile: str = "", certfile: str = "", keyfile: str = "") -> ssl.SSLContext:
    """A client TLS context: peer certificate and host name verified, TLS 1.2 at least.

    ``cafile`` empty trusts the system store; ``certfile`` (and ``keyfile``) add a client
    certificate for mutual TLS.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if certfile:
        context.load_cert_chain(certfile, keyfile or None)
    return context


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the Kafka clients, or None when the protocol is not encrypted."""
    sec = kafka_security(settings)
    return tls_context(sec.cafile, sec.certfile, sec.keyfile) if sec.tls else None


def _kafka_common(settings: Settings) -> dict[str, Any]:
    # kafka-python and aiokafka share these option names.
    sec = kafka_security(settings)
    out: dict[str, Any] = {"security_protocol": sec.protocol}
    if sec.sasl:
        out.update(sasl_mechanism=sec.mechanism, sasl_plain_username=sec.username,
                   sasl_plain_password=sec.password)
    if sec.tls:
        out["ssl_context"] = tls_context(sec.cafile, sec.certfile, sec.keyfile)
    return out


def kafka_python_kwargs(settings: Settings) -> dict[str, Any]:
    """Options for kafka-python's ``KafkaProducer``, ``KafkaConsumer`` and ``KafkaAdminClient``."""
    return _kafka_common(settings)


def aiokafka_kwargs(settings: Settings) -> dict[str, Any]:
    """Options for aiokafka's ``AIOKafkaProducer`` and ``AIOKafkaConsumer``."""
    return _kafka_common(settings)


def faust_conf(settings: Settings) -> dict[str, Any]:
    """Faust app settings (``broker_credentials``) for the worker's own consumer and producer.

    Empty for PLAINTEXT (Faust's default). Faust hands these to aiokafka through
    ``credentials_to_aiokafka_auth``, so the result equals :func:`aiokafka_kwargs`.
    """
    import faust

    sec = kafka_security(settings)
    context = kafka_ssl_context(settings)
    if sec.sasl:
        return {"broker_credentials": faust.SASLCredentials(username=sec.username, password=sec.password,
                                                            ssl_context=context, mechanism=sec.mechanism)}
    if context is not None:
        return {"broker_credentials": faust.SSLCredentials(context)}
    return {}


def redis_kwargs(settings: Settings) -> dict[str, Any]:
    """Options for ``redis.Redis.from_url(settings.redis_url, **kwargs)`` (sync or asyncio).

    ``rediss://`` is TLS: the server certificate and host name are verified against
    ``KAIFONG_REDIS_SSL_CAFILE`` (or the system store). Redis AUTH (password, or ACL user and
    password) rides in the URL: ``rediss://user:password@host:6380/0``.
    """
    scheme = settings.redis_url.split("://", 1)[0].lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise SecurityConfigError(f"KAIFONG_REDIS_URL: unsupported scheme {scheme!r} (redis://, rediss://, unix://)")
    if scheme != "rediss":
        if settings.redis_ssl_cafile:
            raise SecurityConfigError("KAIFONG_REDIS_SSL_CAFILE is set but KAIFONG_REDIS_URL is not rediss://: "
                                      "the connection would not be encrypted")
        return {}
    out: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True,
                           "ssl_min_version": ssl.TLSVersion.TLSv1_2}
    if settings.redis_ssl_cafile:
        out["ssl_ca_certs"] = settings.redis_ssl_cafile
    return out


def client_kwargs(settings: Settings, library: Library) -> dict[str, Any]:
    """The security options of ``library``'s clients under ``settings`` (see the module doc)."""
    builders = {"kafka-python": kafka_python_kwargs, "aiokafka": aiokafka_kwargs, "faust": faust_conf,
                "redis": redis_kwargs}
    try:
        build = builders[library]
    except KeyError:
        raise ValueError(f"unknown client library {library!r}; one of {', '.join(builders)}") from None
    return build(settings)


def quiet_payload_loggers(log_level: str) -> None:
    """Keep the :data:`PAYLOAD_LOGGERS` at INFO or above (``log_level`` when that is higher).

    Called when the app is built, before Faust configures logging (which leaves named loggers'
    levels alone), so it holds for the worker's whole life.
    """
    configured = logging.getLevelName(log_level.upper())  # a number for a known level name
    level = max(logging.INFO, configured if isinstance(configured, int) else logging.INFO)
    for name in PAYLOAD_LOGGERS:
        logging.getLogger(name).setLevel(level)
