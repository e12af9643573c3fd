"""kaifong.agents.web.identity — who a credential names: seat tokens (JWT) minted here or by OIDC issuers.

Layer: agents/web. Two kinds of credential reach the web port:

- **seat tokens**, JWTs verified with PyJWT: minted here by :func:`mint` (``kaifong seats token
  SEAT``; HS256, ``iss`` ``kaifong``) or by an OIDC issuer of ``KAIFONG_AUTH_ISSUERS`` (RS256 or
  ES256 with the issuer's PEM public key). Every one carries ``seat``, ``role``, ``exp`` and the
  configured audience; the seat must be in the *current* seats file and allow the role.
- **the service token** ``KAIFONG_API_TOKEN``: upstream systems' credential (HTTP ingest) and, for
  backwards compatibility, a city-wide admin. It names no seat: the audit trail records ``service``.

:meth:`Identity.verify` turns a token into a :class:`Principal` or a :class:`Refusal` whose reason
never quotes the token. Nothing here logs a credential.

The local HS256 key is ``HMAC-SHA256(secret, "kaifong-seat-tokens-v1")`` with ``secret`` =
``KAIFONG_AUTH_SIGNING_KEY``, else ``KAIFONG_API_TOKEN``: always 32 bytes, and a leaked seat
token tells nothing about the API token. With neither set, local tokens are refused (a warning
at start says so); OIDC tokens still work.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from kaifong.agents.core.seats import ROLES, Seat, SeatBook
from kaifong.streams.settings import Settings

log = logging.getLogger(__name__)

#: ``iss`` of the tokens minted here.
LOCAL_ISSUER = "kaifong"
#: Default and longest life of a minted seat token (a duty shift, at most a day).
DEFAULT_TTL_S, MAX_TTL_S = 12 * 3600.0, 24 * 3600.0
#: Clock skew tolerated on ``exp``/``iat``/``nbf``.
LEEWAY_S = 30
#: The ``kind`` claim of the browser session a service-token sign-in gets (cookie only).
SERVICE_SESSION = "service-session"
_KEY_CONTEXT = b"kaifong-seat-tokens-v1"
_MAX_TOKEN = 8192


class IdentityConfigError(ValueError):
    """``KAIFONG_AUTH_ISSUERS`` names a key that cannot be read or used."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a seat (``kind`` ``seat``), the service token, or nobody (``anonymous``).

    ``role`` is None for an anonymous caller, except in token-less development, where anonymous
    callers may write (``admin``), as they always could.
    """

    kind: str
    role: str | None
    seat: Seat | None = None
    token_id: str | None = None
    expires_at: datetime | None = None
    issuer: str | None = None
    #: Where the credential came from: ``bearer`` (Authorization header), ``cookie`` or None.
    via: str | None = None

    @property
    def seat_id(self) -> str | None:
        """The seat's id (None for the service token and anonymous callers)."""
        return self.seat.id if self.seat is not None else None

    @property
    def level(self) -> str:
        """The seat's level; ``city`` for the service token and anonymous callers."""
        return self.seat.level if self.seat is not None else "city"

    @property
    def everywhere(self) -> bool:
        """True when the caller's scope is the whole city."""
        return self.seat is None or self.seat.level == "city"

    def may(self, role: str) -> bool:
        """True when the caller's role is ``role`` or stronger (viewer < dispatcher < admin).

        >>> Principal("seat", "dispatcher").may("viewer"), Principal("anonymous", None).may("viewer")
        (True, False)
        """
        return self.role is not None and ROLES.index(self.role) >= ROLES.index(role)

    def covers(self, district: str | None, street: str | None, grid: str | None) -> bool:
        """True when (district, street, grid) is in the caller's jurisdiction (:meth:`Seat.covers`)."""
        return self.seat is None or self.seat.covers(district, street, grid)

    def sees(self, where: dict[str, Any]) -> bool:
        """True when a record with ``district``/``street``/``grid`` fields is in scope."""
        return self.everywhere or self.covers(where.get("district"), where.get("street"), where.get("grid"))

    def public(self) -> dict[str, Any]:
        """What ``/api/session`` says of the caller (never the credential)."""
        return {"principal": self.kind, "seat": self.seat_id, "role": self.role, "level": self.level,
                "name": self.seat.name if self.seat is not None else None,
                "jurisdiction": self.seat.public()["jurisdiction"] if self.seat is not None else {},
                "expires_at": self.expires_at.isoformat() if self.expires_at is not None else None,
                "via": self.via}


#: The service token's principal (a city-wide admin, no seat).
SERVICE = Principal("service", "admin")
#: An anonymous caller: reads on a loopback-only port, nothing else.
ANONYMOUS = Principal("anonymous", None)
#: An anonymous caller in token-less development without seats: reads and writes, as before.
DEVELOPER = Principal("anonymous", "admin")


@dataclass(frozen=True)
class Refusal:
    """Why a credential was refused (a sentence for the caller; it never quotes the token)."""

    reason: str


def same_secret(candidate: str | None, secret: str) -> bool:
    """Constant-time comparison of a presented credential with a configured secret (False when
    either is empty)."""
    return bool(candidate and secret) and hmac.compare_digest(str(candidate).encode(), secret.encode())


def _secret(settings: Settings) -> str:
    return settings.auth_signing_key or settings.api_token


def signing_key(settings: Settings) -> bytes | None:
    """The local HS256 key (see the module's docstring), None when nothing to derive it from.

    >>> len(signing_key(Settings(auth_signing_key="k")) or b""), signing_key(Settings())
    (32, None)
    """
    secret = _secret(settings)
    return hmac.new(secret.encode(), _KEY_CONTEXT, hashlib.sha256).digest() if secret else None


def mint(settings: Settings, seat_id: str, role: str, ttl_s: float = DEFAULT_TTL_S,
         now: datetime | None = None) -> str:
    """A seat token for ``seat_id`` in ``role``, valid ``ttl_s`` seconds (at most :data:`MAX_TTL_S`)
    from ``now``, signed with the local key. The seat and its roles are checked when the token is
    used, against the seats file in force then. :class:`ValueError` without a key or with a bad
    role or life."""
    key = signing_key(settings)
    if key is None:
        raise ValueError("no signing key: set KAIFONG_AUTH_SIGNING_KEY (or KAIFONG_API_TOKEN)")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl must be between 1 s and {MAX_TTL_S:.0f} s (24 h)")
    if not seat_id or len(seat_id) > 64:
        raise ValueError("seat id must be 1 to 64 characters")
    now = now or datetime.now(UTC)
    claims = {"iss": LOCAL_ISSUER, "aud": settings.auth_audience, "sub": f"seat:{seat_id}", "seat": seat_id,
              "role": role, "iat": int(now.timestamp()), "exp": int((now + timedelta(seconds=ttl_s)).timestamp()),
              "jti": secrets.token_hex(12)}
    return jwt.encode(claims, key, algorithm="HS256")


def parse_issuers(text: str) -> dict[str, tuple[Any, list[str]]]:
    """``issuer=path-to-PEM,…`` → issuer → (public key, its one algorithm: RS256 or ES256).

    The algorithm follows the key (an RSA key verifies RS256 only, a P-256 key ES256 only), so a
    token cannot pick a weaker one. :class:`IdentityConfigError` naming the bad entry otherwise.
    """
    out: dict[str, tuple[Any, list[str]]] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        issuer, sep, path = item.partition("=")
        issuer, path = issuer.strip(), path.strip()
        if not sep or not issuer or not path:
            raise IdentityConfigError(f"KAIFONG_AUTH_ISSUERS: {item[:100]!r} is not issuer=path-to-public-key.pem")
        if issuer == LOCAL_ISSUER:
            raise IdentityConfigError(f"KAIFONG_AUTH_ISSUERS: {LOCAL_ISSUER!r} is the local issuer's name")
        try:
            key: Any = load_pem_public_key(Path(path).read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            raise IdentityConfigError(f"KAIFONG_AUTH_ISSUERS: {issuer}: cannot read a PEM public key from "
                                      f"{path} ({type(exc).__name__})") from None
        if isinstance(key, rsa.RSAPublicKey):
            out[issuer] = (key, ["RS256"])
        elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            out[issuer] = (key, ["ES256"])
        else:
            raise IdentityConfigError(f"KAIFONG_AUTH_ISSUERS: {issuer}: the key must be RSA or EC P-256")
    return out


@dataclass
class Identity:
    """Verifies credentials against the keys configured and the seats file in force."""

    settings: Settings
    #: The seat book in use (None: no seats file, so no seat token is accepted).
    seats: Callable[[], SeatBook | None]
    key: bytes | None = None
    issuers: dict[str, tuple[Any, list[str]]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, seats: Callable[[], SeatBook | None]) -> Identity:
        """The verifier of ``settings`` (issuers' keys read now: a bad one stops the start)."""
        identity = cls(settings, seats, signing_key(settings), parse_issuers(settings.auth_issuers))
        if settings.seats_file and identity.key is None:
            log.warning("KAIFONG_AUTH_SIGNING_KEY and KAIFONG_API_TOKEN are both empty: tokens minted by "
                        "`kaifong seats token` are refused (%s)",
                        "only the configured OIDC issuers' tokens are accepted" if identity.issuers
                        else "no seat can sign in; loopback reads stay open")
        return identity

    def is_service(self, token: str | None) -> bool:
        """Constant-time comparison with ``KAIFONG_API_TOKEN`` (False when either is empty)."""
        return same_secret(token, self.settings.api_token)

    def service_session(self, now: datetime, ttl_s: float = DEFAULT_TTL_S) -> tuple[str, datetime]:
        """A browser session for a service-token sign-in: a JWT of the local key that only the
        session cookie is accepted with (never the API token itself in a cookie)."""
        if self.key is None:  # unreachable: a service token implies the derived key
            raise ValueError("no signing key")
        expires = now + timedelta(seconds=ttl_s)
        claims = {"iss": LOCAL_ISSUER, "aud": self.settings.auth_audience, "sub": "service",
                  "kind": SERVICE_SESSION, "iat": int(now.timestamp()), "exp": int(expires.timestamp()),
                  "jti": secrets.token_hex(12)}
        return jwt.encode(claims, self.key, algorithm="HS256"), expires.replace(microsecond=0)

    def verify(self, token: str, *, cookie: bool = False, via: str | None = None) -> Principal | Refusal:
        """The principal ``token`` names, or why it is refused (401). ``cookie``: the token came
        in the session cookie (a service session is accepted there only)."""
        segments = token.split(".", 3)  # a JWT is header.payload.signature
        if len(token) > _MAX_TOKEN or len(segments) != 3:
            return Refusal("the credential is neither the service token nor a seat token")
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return Refusal("the credential is not a well-formed token")
        issuer = unverified.get("iss")
        if issuer == LOCAL_ISSUER:
            if self.key is None:
                return Refusal("locally minted tokens are not accepted: no signing key is configured")
            key: Any = self.key
            algorithms = ["HS256"]
        elif isinstance(issuer, str) and issuer in self.issuers:
            key, algorithms = self.issuers[issuer]
        else:
            return Refusal("the token's issuer is not trusted")
        try:
            claims = jwt.decode(token, key, algorithms=algorithms, audience=self.settings.auth_audience,
                                issuer=issuer, leeway=LEEWAY_S, options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            return Refusal("the token has expired")
        except jwt.InvalidAudienceError:
            return Refusal("the token is for another audience")
        except jwt.PyJWTError as exc:
            return Refusal(f"the token is invalid ({type(exc).__name__})")
        expires = datetime.fromtimestamp(float(claims["exp"]), UTC)
        jti = str(claims.get("jti") or "")[:64] or None
        if claims.get("kind") == SERVICE_SESSION and issuer == LOCAL_ISSUER:
            if not cookie:
                return Refusal("a console session is only accepted in its cookie")
            return Principal("service", "admin", None, jti, expires, issuer, via)
        return self._seat(claims, expires, jti, issuer, via)

    def _seat(self, claims: dict[str, Any], expires: datetime, jti: str | None, issuer: str,
              via: str | None) -> Principal | Refusal:
        seat_id, role = claims.get("seat"), claims.get("role")
        if not isinstance(seat_id, str) or not isinstance(role, str):
            return Refusal("the token names no seat and role")
        book = self.seats()
        if book is None:
            return Refusal("seat tokens are not accepted: no seats file is configured")
        seat = book.by_id.get(seat_id)
        if seat is None:
            return Refusal("the token's seat is not in the seats file")
        if role not in ROLES or role not in seat.roles:
            return Refusal("the token's role is not allowed for its seat")
        return Principal("seat", role, seat, jti, expires, issuer, via)
