"""kaifong.agents.flows.seatbook — the seats file: read, checked with every error named, re-read on change.

Layer: agents/flows. :func:`read_seats` parses a JSON or YAML seats file, checks it against
``schemas/json/seats.schema.json`` (every schema error, not the first) and then the rules the
schema cannot say (:func:`kaifong.agents.core.seats.book_of`). :class:`SeatsFile` holds the book
in use and re-reads the file when its modification time or size changes; a file that became
invalid is refused with its reasons logged and counted, and the previous seats stay in use —
a typo in a live edit never leaves escalations without anybody to tell.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import yaml

from kaifong.agents.core.seats import SeatBook, SeatsInvalid, book_of
from kaifong.schemas.validation import load_schema
from kaifong.streams import metrics

log = logging.getLogger(__name__)

#: Largest seats file read (a city with every grid a seat is ~10 MB).
MAX_BYTES = 64 * 1024 * 1024


def _where(error: jsonschema.ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top)"


def parse_seats(text: bytes, name: str = "seats") -> SeatBook:
    """The seat book of a seats file's bytes (YAML when ``name`` ends .yaml/.yml, else JSON)."""
    try:
        data: Any = (yaml.safe_load(text) if name.endswith((".yaml", ".yml")) else orjson.loads(text))
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        raise SeatsInvalid([f"{name}: not valid {'YAML' if name.endswith(('.yaml', '.yml')) else 'JSON'}: "
                            f"{str(exc)[:300]}"]) from None
    validator = jsonschema.Draft202012Validator(load_schema("seats"))
    errors = sorted(f"{_where(e)}: {e.message[:300]}" for e in validator.iter_errors(data))
    return book_of(data, schema_errors=errors)


def read_seats(path: str | Path) -> SeatBook:
    """The seat book of the file at ``path``; :class:`SeatsInvalid` naming every problem."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_BYTES:
            raise SeatsInvalid([f"{p}: larger than {MAX_BYTES} bytes"])
        text = p.read_bytes()
    except OSError as exc:
        raise SeatsInvalid([f"{p}: cannot read ({exc.strerror or type(exc).__name__})"]) from None
    return parse_seats(text, p.name)


@dataclass
class SeatsFile:
    """The seats in use, re-read from ``path`` when it changes (every ``every_s``)."""

    path: str
    every_s: float = 2.0
    book: SeatBook | None = None
    _seen: tuple[int, int] | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: str, every_s: float = 2.0) -> SeatsFile:
        """Read ``path`` at start: an invalid file stops the start (:class:`SeatsInvalid`)."""
        holder = cls(path, every_s)
        holder._seen = holder._stamp()
        holder.book = read_seats(path)
        holder._publish(holder.book)
        metrics.SEATS_RELOADS.labels("ok").inc()
        return holder

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    @staticmethod
    def _publish(book: SeatBook) -> None:
        for level, n in book.counts().items():
            metrics.SEATS.labels(level).set(n)

    def check(self) -> bool:
        """Re-read the file if it changed; True when a new seat book is now in use."""
        stamp = self._stamp()
        if stamp == self._seen or stamp is None:
            return False  # unchanged, or gone for a moment (an editor's rename): keep the seats
        self._seen = stamp
        try:
            book = read_seats(self.path)
        except SeatsInvalid as exc:
            metrics.SEATS_RELOADS.labels("invalid").inc()
            log.error("seats file %s changed but is invalid; the previous seats stay in use: %s",  # noqa: TRY400 - the reasons are the message; a traceback adds nothing
                      self.path, "; ".join(exc.errors[:50]))
            return False
        metrics.SEATS_RELOADS.labels("ok").inc()
        if self.book is not None and book.digest == self.book.digest:
            return False
        self.book = book
        self._publish(book)
        log.info("seats file %s re-read: %d seats (%s)", self.path, len(book.seats),
                 ", ".join(f"{n} {lvl}" for lvl, n in book.counts().items()))
        return True

    async def watch(self) -> None:
        """Check for changes forever (a background task of the worker)."""
        while True:
            await asyncio.sleep(self.every_s)
            # A large file is parsed off the event loop: dispatch never waits for a reload.
            await asyncio.to_thread(self.check)
