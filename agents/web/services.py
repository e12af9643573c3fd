"""kaifong.agents.web.services — what the web room is given to work with (never the whole worker).

Layer: agents/web. The composition root (:mod:`kaifong.agents.worker`) builds one
:class:`WebServices` and hands it to :func:`kaifong.agents.web.server.register`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kaifong.agents.core.seats import SeatBook
from kaifong.agents.store.views import Views
from kaifong.streams.codec import Headers
from kaifong.streams.settings import Settings

#: Produce records in order and wait for every acknowledgement (raises when the broker did not take them).
SendAll = Callable[[list[tuple[str, bytes | None, bytes, Headers]]], Awaitable[None]]


def _no_seats() -> SeatBook | None:
    return None


class DrillOrders(Protocol):
    """The drill requests the API forwards (:class:`kaifong.agents.flows.drills.Drills`).

    Each returns the answer's body or raises :class:`kaifong.agents.core.errors.Rejected`.
    """

    async def order(self, body: bytes) -> dict[str, Any]:
        """Order a manual pull test from a request body."""

    async def listing(self, day_text: str | None = None) -> dict[str, Any]:
        """The drills of a local day (YYYY-MM-DD, else today)."""

    async def rates(self, by: str | None) -> dict[str, Any]:
        """Drill pass rates per district or grid."""


@dataclass(frozen=True)
class WebServices:
    """Everything the HTTP surface reads or calls."""

    settings: Settings
    #: The read-only Redis queries of the API.
    views: Views
    #: The worker's producer (HTTP ingest, acknowledgements).
    send_all: SendAll
    drills: DrillOrders
    #: Readiness as ``/ready`` reports it (the broker's reachability included).
    is_ready: Callable[[], bool]
    #: ``time.monotonic()`` when the worker was built (``/health``'s uptime).
    started_monotonic: float
    #: Seconds from process start to ready, None while not ready yet.
    ready_after_s: Callable[[], float | None]
    #: The firehose process's metrics exposition (None: the firehose runs inline, or no answer).
    child_metrics: Callable[[], Awaitable[str | None]] | None = None
    #: The duty seats in force (re-read when the file changes; None: no seats file).
    seats: Callable[[], SeatBook | None] = _no_seats
