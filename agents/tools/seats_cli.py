"""kaifong.agents.tools.seats_cli — `kaifong seats …`: check a seats file, mint a seat token, write the defaults.

Layer: agents/tools. ``kaifong seats check FILE`` names every error of a seats file (exit 1) or
summarises it; ``kaifong seats token SEAT`` mints a short-lived token for a seat (embedded mode:
the local signing key); ``kaifong seats default`` writes the seats of the synthetic city;
``kaifong seats alertmanager FILE`` writes the Alertmanager configuration routing to them.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from kaifong.streams.settings import Settings


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def cmd_check(args: argparse.Namespace) -> int:
    """Check a seats file; print every error, or what it holds."""
    from kaifong.agents.core.seats import SeatsInvalid
    from kaifong.agents.flows.seatbook import read_seats

    try:
        book = read_seats(args.file)
    except SeatsInvalid as exc:
        sys.stderr.write(f"{args.file}: {len(exc.errors)} error(s)\n")
        for e in exc.errors:
            sys.stderr.write(f"  - {e}\n")
        return 1
    counts = ", ".join(f"{n} {lvl}" for lvl, n in book.counts().items() if n)
    _out(f"{args.file}: ok — {len(book.seats)} seats ({counts}); time zone {book.tz}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Mint a seat token (printed on stdout, nothing else: pipe it where it goes)."""
    from kaifong.agents.core.seats import SeatsInvalid
    from kaifong.agents.flows.seatbook import read_seats
    from kaifong.agents.web import identity

    settings = Settings.from_env()
    embedded = Path(settings.data_dir) / "embedded"  # where `kaifong up` keeps its seats and key
    path = args.seats or settings.seats_file or (str(embedded / "seats.json")
                                                 if (embedded / "seats.json").exists() else "")
    if not path:
        sys.stderr.write("no seats file: pass --seats FILE or set KAIFONG_SEATS_FILE\n")
        return 2
    try:
        book = read_seats(path)
    except SeatsInvalid as exc:
        sys.stderr.write(f"{path}: invalid seats file: {exc.errors[0]}\n")
        return 1
    seat = book.by_id.get(args.seat)
    if seat is None:
        near = sorted(s for s in book.by_id if args.seat.lower() in s.lower())[:5]
        sys.stderr.write(f"no seat {args.seat!r} in {path}" + (f" (did you mean {', '.join(near)}?)" if near else "")
                         + "\n")
        return 1
    role = args.role or ("dispatcher" if "dispatcher" in seat.roles else sorted(seat.roles)[0])
    if role not in seat.roles:
        sys.stderr.write(f"seat {seat.id} may not be {role}: its roles are {', '.join(sorted(seat.roles))}\n")
        return 1
    key = embedded / "signing.key"
    overrides: dict[str, Any] = {"seats_file": path}
    if not settings.auth_signing_key and not settings.api_token and key.exists():
        overrides["auth_signing_key"] = key.read_text("utf-8").strip()  # `kaifong up`'s
    settings = Settings.from_env(**overrides)
    try:
        _out(identity.mint(settings, seat.id, role, args.ttl, datetime.now(UTC)))
    except ValueError as exc:  # no signing key, a ttl over the limit
        sys.stderr.write(f"cannot mint a token: {exc}\n")
        return 2
    return 0


def default_seats(webhook_base: str = "http://127.0.0.1:6066/api/notifications") -> dict[str, Any]:
    """The seats of the synthetic city (one city, 11 district, 176 street seats; grid-level
    escalations go up to the street seat), each with a webhook to ``webhook_base/<seat>``."""
    from kaifong.agents.tools.alertmanager import example_seats

    data = example_seats()
    sink = "http://kaifong-notify-sink:9095/hooks"  # the deploy files' placeholder
    for seat in data["seats"]:
        for r in seat["receivers"]:
            if r["type"] == "webhook" and r["url"].startswith(sink):
                r["url"] = webhook_base.rstrip("/") + r["url"][len(sink):]
    return data


def cmd_default(args: argparse.Namespace) -> int:
    """Write the synthetic city's seats file."""
    data = default_seats(args.webhook_base)
    text = orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
    if args.out == "-":
        _out(text)
    else:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        sys.stderr.write(f"wrote {len(data['seats'])} seats to {args.out}\n")
    return 0


def cmd_alertmanager(args: argparse.Namespace) -> int:
    """Write the Alertmanager configuration that routes to a seats file's receivers."""
    import yaml

    from kaifong.agents.core.seats import SeatsInvalid
    from kaifong.agents.flows.seatbook import read_seats
    from kaifong.agents.tools import alertmanager

    try:
        read_seats(args.file)  # refuse an invalid file with its reasons before generating anything
    except SeatsInvalid as exc:
        sys.stderr.write(f"{args.file}: invalid seats file:\n" + "".join(f"  - {e}\n" for e in exc.errors))
        return 1
    text = Path(args.file).read_bytes()
    data = yaml.safe_load(text) if args.file.endswith((".yaml", ".yml")) else orjson.loads(text)
    _out(alertmanager.dump(alertmanager.render(data)))
    return 0


def up_notifications(base: Settings, env: dict[str, str], workdir: Path, stack: Any) -> str:
    """``kaifong up``: the synthetic city's seats (unless KAIFONG_SEATS_FILE names a file) and an
    Alertmanager routing to them (when installed, unless KAIFONG_ALERTMANAGER_URLS is set);
    the line that says where notifications go."""
    from kaifong.agents.tools import alertmanager
    from kaifong.streams.embedded import alertmanager as am_service
    from kaifong.streams.embedded import alertmanager_binary

    if not base.auth_signing_key and not base.api_token:
        # Seat tokens need a signing key: one per `kaifong up`, readable by `kaifong seats token`.
        key = workdir / "signing.key"
        key.write_text(secrets.token_hex(32), encoding="utf-8")
        key.chmod(0o600)
        env["KAIFONG_AUTH_SIGNING_KEY"] = key.read_text("utf-8")
    seats_path = Path(base.seats_file) if base.seats_file else workdir / "seats.json"
    if not base.seats_file:
        hooks = f"http://{base.web_host}:{base.web_port}/api/notifications"
        seats_path.write_bytes(orjson.dumps(default_seats(hooks), option=orjson.OPT_INDENT_2))
        env["KAIFONG_SEATS_FILE"] = str(seats_path)
    signin = ("             sign in kaifong seats token city   (paste it on the console; any seat id of "
              f"{seats_path.name} works, e.g. district-YX)\n")
    if base.alertmanager_urls:
        return signin + f"             notify  {base.alertmanager_urls}  (KAIFONG_ALERTMANAGER_URLS)"
    if alertmanager_binary() is None:
        return signin + ("             notify  Alertmanager is not installed (Debian: apt-get install "
                "prometheus-alertmanager):\n                     escalations reach the console, the escalations "
                "topic and the log only")
    import yaml

    text = seats_path.read_bytes()
    data = yaml.safe_load(text) if seats_path.suffix in (".yaml", ".yml") else orjson.loads(text)
    config = workdir / "alertmanager.yml"
    config.write_text(alertmanager.dump(alertmanager.render(data, group_wait="2s", group_interval="30s")),
                      encoding="utf-8")
    service = am_service(base.embedded_alertmanager_port, workdir, config)
    service.start()
    stack.services.append(service)  # stopped with the broker and Redis
    url = f"http://127.0.0.1:{base.embedded_alertmanager_port}"
    env["KAIFONG_ALERTMANAGER_URLS"] = url
    return signin + f"             notify  {url}/  (Alertmanager; routes to the seats in {seats_path})"


def add_parser(sub: Any) -> None:
    """Add ``kaifong seats …`` to the CLI's sub-commands."""
    seats = sub.add_parser("seats", help="duty seats: check a file, mint a token, defaults, Alertmanager config"
                           ).add_subparsers(dest="seats_command", required=True)
    c = seats.add_parser("check", help="check a seats file and name every error")
    c.add_argument("file")
    c.set_defaults(func=cmd_check)
    t = seats.add_parser("token", help="mint a short-lived token for a seat (local signing key)")
    t.add_argument("seat")
    t.add_argument("--role", choices=("viewer", "dispatcher", "admin"), help="default: dispatcher if allowed")
    t.add_argument("--ttl", type=float, default=12 * 3600.0, help="seconds (default 12 h, at most 24 h)")
    t.add_argument("--seats", help="seats file (default KAIFONG_SEATS_FILE)")
    t.set_defaults(func=cmd_token)
    d = seats.add_parser("default", help="write the synthetic city's seats file")
    d.add_argument("--out", default="-", help="file to write (default stdout)")
    d.add_argument("--webhook-base", default="http://127.0.0.1:6066/api/notifications",
                   help="each seat's webhook is <base>/<seat id>")
    d.set_defaults(func=cmd_default)
    a = seats.add_parser("alertmanager", help="print the Alertmanager configuration for a seats file")
    a.add_argument("file")
    a.set_defaults(func=cmd_alertmanager)
