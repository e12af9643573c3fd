"""kaifong.agents.flows.notify — open escalations pushed to Alertmanager, kept alive, resolved.

Layer: agents/flows. Alertmanager (a real, well-kept router) does the routing to people,
grouping, inhibition and silences; kaifong tells it what is open. One worker at a time (the
holder of a Redis lease) pushes. Each round it reads the open incidents' escalations and:

- pushes every unacknowledged escalation, once per addressed seat, as an alert (labels below)
  the moment it appears (the worker that raised one wakes the notifier), and all of them again
  every ``KAIFONG_NOTIFY_KEEPALIVE_S`` with ``endsAt`` five of those ahead — a kaifong that
  died stops holding them and Alertmanager resolves them by itself;
- pushes ``endsAt = now`` (resolved) for every alert it held whose escalation was acknowledged
  or whose incident closed.

Every URL of ``KAIFONG_ALERTMANAGER_URLS`` (an HA pair) gets every push, as Prometheus does.
A target that fails or is slow (3 s) is retried with exponential backoff (0.5 s to 30 s); what
it has not accepted stays queued for it (newest version of each alert) and goes out when it
answers. The notifier runs as its own task and never holds an incident's lock: dispatch never
waits for it.

Alert labels (the alert's identity in Alertmanager; not Prometheus metric labels):
``alertname="KaifongEscalation"``, ``incident``, ``escalation``, ``level`` (the level of the
seat told), ``district``, ``ring``, ``reason``, ``seat``, ``exercise``. Annotations:
``summary``, ``console`` (link), ``raised_level``, ``deadline_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import orjson

from kaifong.agents.core.clock import TERMINAL, parse_time
from kaifong.agents.flows.drillschedule import new_worker_id
from kaifong.agents.flows.intake import INFRA_ERRORS
from kaifong.agents.store.notify import NotifyStore
from kaifong.agents.store.views import Views
from kaifong.streams import metrics
from kaifong.streams.settings import Settings

log = logging.getLogger(__name__)

PUSH_TIMEOUT_S = 3.0
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 30.0
LEASE_MS = 15_000


def target_of(url: str) -> str:
    """The bounded metric label of an Alertmanager URL: ``host:port``.

    >>> target_of("http://alertmanager-1:9093/"), target_of("https://am.example.org")
    ('alertmanager-1:9093', 'am.example.org:443')
    """
    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    return f"{u.hostname}:{port}"


def alert_key(escalation_id: str, seat: str) -> str:
    """The key of one escalation's alert to one seat."""
    return f"{escalation_id}|{seat}"


def alerts_of(doc: dict[str, Any], console: str) -> dict[str, dict[str, Any]]:
    """The alerts (without times) an incident's stored document holds open: one per
    unacknowledged escalation and addressed seat; none once the incident is closed.

    >>> doc = {"state": {"status": "open", "category": "fire"}, "escalations": {"i:r1:x:0": {
    ...     "acked_at": None, "body": {"escalation_id": "i:r1:x:0", "incident_id": "i", "ring": 1,
    ...     "level": "grid", "seat_level": "street", "seats": ["s1"], "reason": "x", "exercise": False,
    ...     "district": "A", "raised_at": "2026-12-04T00:00:00+00:00", "deadline_at": "2026-12-04T00:00:00+00:00"}}}}
    >>> a = alerts_of(doc, "http://c")["i:r1:x:0|s1"]
    >>> a["labels"]["level"], a["labels"]["seat"], a["annotations"]["raised_level"]
    ('street', 's1', 'grid')
    """
    if doc["state"]["status"] in TERMINAL:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for esc_id, entry in (doc.get("escalations") or {}).items():
        if entry.get("acked_at") is not None:
            continue
        body = entry["body"]
        seats = body.get("seats") or ["unrouted"]
        for seat in seats:
            labels = {"alertname": "KaifongEscalation", "incident": body["incident_id"], "escalation": esc_id,
                      "level": body.get("seat_level", body["level"]), "district": body.get("district") or "",
                      "ring": str(body["ring"]), "reason": body["reason"], "seat": seat,
                      "exercise": "true" if body["exercise"] else "false"}
            summary = (f"{'[exercise] ' if body['exercise'] else ''}{doc['state'].get('category', 'incident')} "
                       f"{body['incident_id']}: ring {body['ring']} {body['reason'].replace('_', ' ')}")
            out[alert_key(esc_id, seat)] = {
                "labels": labels,
                "annotations": {"summary": summary, "raised_level": body["level"],
                                "deadline_at": body["deadline_at"],
                                "console": f"{console}/#incident={quote(body['incident_id'])}"},
                "startsAt": body["raised_at"], "generatorURL": f"{console}/#incident={quote(body['incident_id'])}",
            }
    return out


@dataclass
class Target:
    """One Alertmanager: what it has not accepted yet, and when to try it again."""

    url: str
    label: str
    queued: dict[str, dict[str, Any]] = field(default_factory=dict)
    next_try: float = 0.0
    delay: float = 0.0
    failing: bool = False


@dataclass
class Notifier:
    """Pushes open escalations to every configured Alertmanager (one worker at a time)."""

    settings: Settings
    views: Views
    store: NotifyStore
    clock: Callable[[], datetime]
    worker_id: str = field(default_factory=new_worker_id)
    leader: bool = False
    targets: list[Target] = field(default_factory=list)
    #: Alert key → the alert as last pushed firing (times included).
    firing: dict[str, dict[str, Any]] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _last_keepalive: float = float("-inf")
    _session: aiohttp.ClientSession | None = None
    _loaded: bool = False
    #: Alerts not yet accepted by any target since they first fired (their latency is measured).
    _new: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        urls = [u.strip().rstrip("/") for u in self.settings.alertmanager_urls.split(",") if u.strip()]
        self.targets = [Target(u, target_of(u)) for u in urls]
        for t in self.targets:
            for outcome in ("ok", "error"):
                metrics.NOTIFY_PUSHES.labels(t.label, outcome)
            metrics.NOTIFY_RETRIES.labels(t.label)
        for state in ("firing", "resolved"):
            metrics.NOTIFY_ALERTS.labels(state)

    @property
    def console(self) -> str:
        """The console's base URL as duty officers reach it."""
        s = self.settings
        return (s.console_url or f"http://{s.web_host}:{s.web_port}").rstrip("/")

    def wake(self) -> None:
        """Push now rather than at the next round (called after escalations change)."""
        self._wake.set()

    async def run(self) -> None:
        """Forever: hold the lease, reconcile, push; never raises (errors are counted)."""
        if not self.targets:
            log.info("notifications: KAIFONG_ALERTMANAGER_URLS is empty; escalations reach the console, "
                     "the escalations topic and the log only")
            return
        lease = self.store.lease(self.worker_id)
        last_renew = float("-inf")
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PUSH_TIMEOUT_S))
        try:
            while True:
                try:
                    if time.monotonic() - last_renew >= LEASE_MS / 3000:
                        self.leader = await (lease.renew(LEASE_MS) if self.leader else lease.take(LEASE_MS))
                        last_renew = time.monotonic()
                    if self.leader:
                        await self.round()
                except INFRA_ERRORS as exc:
                    metrics.REDIS_ERRORS.labels("notify").inc()
                    log.warning("notifier: redis unavailable (%s); retrying", type(exc).__name__)
                except Exception:
                    metrics.INTERNAL_ERRORS.labels("notifier").inc()
                    log.exception("notifier round failed; going on")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._sleep_s())
                self._wake.clear()
        finally:
            if self.leader:
                await lease.release()
            await self._session.close()

    def _sleep_s(self) -> float:
        soonest = min((t.next_try for t in self.targets if t.queued), default=float("inf"))
        return max(0.05, min(self.settings.notify_interval_s, soonest - time.monotonic()))

    async def desired(self) -> dict[str, dict[str, Any]]:
        """Every alert that should be firing now (from the open incidents in Redis)."""
        docs = await self.views.incidents(await self.views.open_ids(None))
        out: dict[str, dict[str, Any]] = {}
        for doc in docs:
            out.update(alerts_of(doc, self.console))
        return out

    async def round(self) -> None:
        """Compare what should fire with what was pushed; queue the differences; push."""
        if not self._loaded:
            self.firing = await self.store.firing()  # a previous holder's, to resolve what closed
            self._loaded = True
        now = self.clock()
        want = await self.desired()
        until = (now + timedelta(seconds=5 * self.settings.notify_keepalive_s)).isoformat()
        keepalive = time.monotonic() - self._last_keepalive >= self.settings.notify_keepalive_s
        changed: dict[str, dict[str, Any]] = {}
        for key, alert in want.items():
            if keepalive or key not in self.firing:
                changed[key] = {**alert, "endsAt": until}
        gone = [k for k in self.firing if k not in want]
        resolved = {k: {**self.firing[k], "endsAt": now.isoformat()} for k in gone}
        if keepalive:
            self._last_keepalive = time.monotonic()
        if changed or resolved:
            fresh = {k: v for k, v in changed.items() if k not in self.firing}
            self._new |= set(fresh)
            self._new -= set(gone)
            await self.store.keep(fresh, gone)
            self.firing.update(changed)
            for k in gone:
                self.firing.pop(k, None)
            for t in self.targets:
                t.queued.update(changed)
                t.queued.update(resolved)
        metrics.NOTIFY_FIRING.set(len(self.firing))
        await self.push()

    async def push(self) -> None:
        """Send each target what it has queued (those due: not backing off)."""
        due = [t for t in self.targets if t.queued and t.next_try <= time.monotonic()]
        if due:
            await asyncio.gather(*(self._push_one(t) for t in due))
        pending = set.intersection(*(set(t.queued) for t in self.targets)) if self.targets else set()
        metrics.NOTIFY_PENDING.set(len(pending))

    async def _push_one(self, t: Target) -> None:
        assert self._session is not None
        batch = dict(t.queued)
        if t.failing:
            metrics.NOTIFY_RETRIES.labels(t.label).inc()
        try:
            async with self._session.post(f"{t.url}/api/v2/alerts", data=orjson.dumps(list(batch.values())),
                                          headers={"Content-Type": "application/json"}) as response:
                if response.status >= 300:
                    raise aiohttp.ClientResponseError(response.request_info, (), status=response.status,
                                                      message=(await response.text())[:200])
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            metrics.NOTIFY_PUSHES.labels(t.label, "error").inc()
            t.delay = min(BACKOFF_MAX_S, max(BACKOFF_FIRST_S, t.delay * 2))
            t.next_try = time.monotonic() + t.delay
            if not t.failing:
                log.warning("notifier: alertmanager %s refused or unreachable (%s); %d alerts queued, retrying "
                            "with backoff", t.label, type(exc).__name__, len(batch))
            t.failing = True
            return
        metrics.NOTIFY_PUSHES.labels(t.label, "ok").inc()
        metrics.NOTIFY_LAST_OK.labels(t.label).set(time.time())
        if t.failing:
            log.info("notifier: alertmanager %s answers again; %d alerts delivered", t.label, len(batch))
        t.failing, t.delay, t.next_try = False, 0.0, 0.0
        # Counted once per alert change: when the first target accepts it.
        others = [o for o in self.targets if o is not t]
        first = [k for k in batch if all(o.queued.get(k) is batch[k] for o in others)]
        for k, alert in batch.items():
            if t.queued.get(k) is alert:
                del t.queued[k]
        for k in first:
            alert = batch[k]
            resolved = parse_time(alert["endsAt"]) <= self.clock()
            metrics.NOTIFY_ALERTS.labels("resolved" if resolved else "firing").inc()
            if k in self._new and not resolved:
                self._new.discard(k)
                metrics.NOTIFY_LATENCY.observe(max(0.0, (self.clock() - parse_time(alert["startsAt"])).total_seconds()))
