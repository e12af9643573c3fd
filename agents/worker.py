"""kaifong.agents.worker — the composition root: one app, its agents, tasks and web views.

Layer: agents (top). ``Worker(settings)`` wires Redis, the Faust app, the intake pipeline and
the handlers together; ``run()`` runs it until SIGINT/SIGTERM. Agents are registered here
explicitly (no autodiscovery), so what runs is what this file says.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import faust

from kaifong.agents import report
from kaifong.agents.flows import brokerwatch, gauges, watchdog
from kaifong.agents.flows.dispatch import Dispatcher
from kaifong.agents.flows.drills import Drills
from kaifong.agents.flows.firehose import Supervisor
from kaifong.agents.flows.incidents import Incidents
from kaifong.agents.flows.intake import Pipeline
from kaifong.agents.flows.notify import Notifier
from kaifong.agents.flows.seatbook import SeatsFile
from kaifong.agents.flows.timers import TimerLoop
from kaifong.agents.flows.units import UnitsIntake
from kaifong.agents.store.notify import NotifyStore
from kaifong.agents.store.timers import RingClock
from kaifong.agents.store.units import UnitStore
from kaifong.agents.store.views import Views
from kaifong.agents.web import server as web
from kaifong.agents.web.services import WebServices
from kaifong.streams import metrics
from kaifong.streams.app import KaifongApp, create_app
from kaifong.streams.codec import Headers
from kaifong.streams.redisio import connect
from kaifong.streams.settings import Settings
from kaifong.streams.topics import DRILLS_RESPONSES, INCIDENTS_REPORTED, INCIDENTS_UPDATES, TopicSpec

log = logging.getLogger(__name__)


class Worker:
    """Everything one worker process runs."""

    def __init__(self, settings: Settings, *, process_start: float | None = None) -> None:
        self.settings = settings
        _now = self.clock = settings.clock()
        self.started_monotonic = time.monotonic()
        # Start-to-ready is measured from the process start when the CLI passes it in.
        self.process_start = process_start if process_start is not None else time.time()
        self.ready_after_s: float | None = None
        self.app: KaifongApp = create_app(settings, web_router_enabled=False, web_tables_enabled=False,
                                          web_graph_enabled=False, web_stats_enabled=False)
        self.redis = connect(settings)
        self.pipeline = Pipeline(settings, self.redis, self.send, _now)
        self.store = UnitStore(self.redis, settings.unit_stale_after_s)
        self.dispatcher = Dispatcher.from_settings(settings, self.store, _now)
        self.timers = RingClock(self.redis, settings.topic_prefix)
        self.incidents = Incidents(settings, self.redis, self.send_all, _now, self.store, self.dispatcher,
                                   self.timers)
        # Ring timers: a partition's claimed timers fire at once (each incident holds its own lock);
        # one that meets Redis down goes back on its due time; a tick that fails otherwise ends it.
        self.ring_clock = TimerLoop("ring clock", self.timers, self.owned_partitions, _now, self.incidents.fire,
                                    settings.clock_tick_s, redis_label="clock", error_label="ring_clock",
                                    concurrent=True, reschedule=True)
        self.drills = Drills(settings, self.redis, self.send_all, _now, self.owned_partitions, self.is_ready)
        self.incidents.on_dispatched = self.drills.abort_for_units
        self.incidents.on_no_show = self.drills.count_no_shows
        self.units = UnitsIntake(settings, self.redis, self.store, _now)
        # Duty seats (an invalid file stops the start, every reason named) and notifications.
        self.seats = SeatsFile.load(settings.seats_file, settings.seats_reload_s) if settings.seats_file else None
        self.views = Views(self.redis, settings.topic_prefix)
        self.notifier = Notifier(settings, self.views, NotifyStore(self.redis, settings.topic_prefix, self.store.run),
                                 _now)
        if self.seats is not None:
            seats = self.seats
            self.incidents.seats = lambda: seats.book
        self.incidents.on_escalations = self.notifier.wake
        # The firehose in its own process (default) or inline: see kaifong.agents.flows.firehose.
        self.firehose = Supervisor(settings, self.units.joined) if settings.firehose == "process" else None
        self.gauges = gauges.Gauges(settings, self.incidents.incidents, self.timers, self.store, self.owned_partitions,
                                    (self.units.lag, self.faust_lag))
        self._faust_assigned = asyncio.Event()
        metrics.init_labels(settings)
        metrics.WORKER_STARTED.set(self.process_start)
        metrics.WORKER_READY.set(0)
        self._register()

    # -- wiring ---------------------------------------------------------------------------
    def _raw_topic(self, spec: TopicSpec) -> Any:
        return self.app.topic(spec.name(self.settings), key_serializer="raw", value_serializer="raw",
                              partitions=spec.partitions(self.settings))

    def _register(self) -> None:
        app = self.app
        pipeline = self.pipeline

        def intake_agent(spec: TopicSpec, handler: Any, name: str, concurrency: int = 1,
                         self_dedupe: bool = False) -> None:
            async def agent(stream: Any) -> None:
                async for event in stream.events():
                    await pipeline.process(spec, event.message, handler, name, self_dedupe=self_dedupe)

            agent.__name__ = name
            agent.__qualname__ = name
            app.agent(self._raw_topic(spec), name=name, concurrency=concurrency)(agent)

        # Reports are independent of each other (one per incident, serialised per incident by
        # a lock): several run at once so a burst does not queue behind Redis round trips.
        # Updates keep their order (concurrency 1): "resolved" must not overtake "on_scene".
        intake_agent(INCIDENTS_REPORTED, self.incidents.on_reported, "incidents_reported",
                     concurrency=self.settings.report_concurrency, self_dedupe=True)
        intake_agent(INCIDENTS_UPDATES, self.incidents.on_update, "incidents_updates")
        intake_agent(DRILLS_RESPONSES, self.drills.on_response, "drills_responses")

        # The firehose (its process, or inline) starts with the app, so its consumer group joins
        # while Faust's does rather than after it (~3 s less from start to ready).
        app.early_tasks.append(self.firehose.run if self.firehose is not None else self.units.run)

        @app.task
        async def notifier() -> None:
            await self.notifier.run()

        if self.seats is not None:
            seats = self.seats

            @app.task
            async def seats_reload() -> None:
                await seats.watch()

        @app.task
        async def registry_cache() -> None:
            await gauges.registry_cache_loop(self.store, self.pipeline.retrying)

        @app.task
        async def ring_clock() -> None:
            await self.clock_loop()

        @app.task
        async def drill_clock() -> None:
            # Drill decision timers (every worker, owned partitions) and the scheduler (lease holder).
            await self.drills.run()

        @app.crontab(report.report_cron(self.settings), timezone=report.CITY_TZ)
        async def daily_after_action_report() -> None:
            # The drill scheduler's lease holder writes yesterday's report; a Redis claim per day
            # makes it once a day even across a change of leader.
            if self.drills.leader:
                await report.daily_report_once(self.settings, report.yesterday(self.settings))

        @app.timer(interval=5.0)
        async def sample_gauges() -> None:
            await self.pipeline.retrying("gauges", self.gauges.sample)

        @app.timer(interval=max(1.0, self.settings.unit_stale_after_s / 10))
        async def sweep_stale_units() -> None:
            # Idempotent on every worker: a unit silent for longer than the limit leaves the
            # geo index until it speaks again.
            swept = await self.pipeline.retrying(
                "sweep", lambda: self.store.sweep_stale(int(self.clock().timestamp() * 1000)))
            if swept:
                metrics.UNITS_STALE.inc(swept)
                log.info("%d units marked unavailable: heartbeats stopped", swept)

        @app.task
        async def readiness() -> None:
            # Ready = Faust has its partitions and the units batch consumer has joined.
            await self.units.joined.wait()
            await self._faust_assigned.wait()
            self.ready_after_s = round(time.time() - self.process_start, 3)
            if self.firehose is None:
                metrics.FIREHOSE_UP.set(1)
            metrics.WORKER_READY.set(1)
            metrics.WORKER_READY_SECONDS.set(self.ready_after_s)
            log.info("worker ready %.3fs after process start", self.ready_after_s)

        async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
            self._faust_assigned.set()

        app.on_rebalance_complete.connect(on_assigned)  # type: ignore[arg-type]

        # Broker data loss: detect, report, recreate topics; /ready then also needs the broker.
        ready = brokerwatch.register(app, self.settings, self.is_ready)
        web.register(app, WebServices(
            settings=self.settings, views=self.views, send_all=self.send_all,
            drills=self.drills, is_ready=ready, started_monotonic=self.started_monotonic,
            ready_after_s=lambda: self.ready_after_s,
            child_metrics=self.firehose.child_metrics if self.firehose is not None else None,
            seats=lambda: self.seats.book if self.seats else None))
        if self.settings.watchdog_interval_s > 0:
            watchdog.register(app, self.settings)

    def owned_partitions(self) -> set[int]:
        """Partitions of the incident topics this worker owns right now (co-partitioned)."""
        topic = INCIDENTS_REPORTED.name(self.settings)
        try:
            assigned = self.app.consumer.assignment()
        except Exception:  # noqa: BLE001 - not started / rebalancing: own nothing this tick
            return set()
        return {tp.partition for tp in assigned if tp.topic == topic}

    async def clock_loop(self) -> None:
        """Fire due timers of owned partitions every tick; adopt in-flight timers on takeover."""
        await self.ring_clock.run()

    async def faust_lag(self) -> dict[tuple[str, int], int]:
        """Consumer lag of the Faust consumer's partitions."""
        lag: dict[tuple[str, int], int] = {}
        try:
            consumer = self.app.consumer
            for tp in consumer.assignment():
                high = consumer.highwater(tp)
                pos = await consumer.position(tp)
                if high is not None and pos is not None:
                    lag[(tp.topic, tp.partition)] = max(0, high - pos)
        except Exception as exc:  # noqa: BLE001 - not started or rebalancing: report what we have
            log.debug("consumer lag unavailable this round (%s)", type(exc).__name__)
        return lag

    def is_ready(self) -> bool:
        """True once the worker consumes all its inputs (and while its firehose process runs)."""
        return self.ready_after_s is not None and (self.firehose is None or self.firehose.up)

    async def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        """Produce one record and wait until the broker has it (acks per settings)."""
        await self.send_all([(topic, key, value, headers)])

    async def send_all(self, records: list[tuple[str, bytes | None, bytes, Headers]]) -> None:
        """Produce records in order, then wait for all acknowledgements at once."""
        futures = [await self.app.producer.send(t, k, v, partition=None, timestamp=None, headers=h)
                   for t, k, v, h in records]
        await asyncio.gather(*futures)
        for t, _, _, _ in records:
            metrics.EVENTS_OUT.labels(t).inc()

    # -- running --------------------------------------------------------------------------
    def run(self) -> None:
        """Run until SIGINT/SIGTERM (Faust's worker owns the loop and the signals)."""
        os.makedirs(self.settings.data_dir, exist_ok=True)
        worker = faust.Worker(self.app, loglevel=self.settings.log_level.upper(), quiet=True,
                              redirect_stdouts=False)
        worker.execute_from_commandline()
