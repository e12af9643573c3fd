"""kaifong.agents.report.daily — the daily after-action report, made once by one of the workers.

Layer: agents/report. The daily report covers the previous local day (UTC+8), is scheduled by
the worker at :func:`report_cron` (after the day's last deadline), is made by one worker (a
claim in Redis), and is recorded in the reports ledger (:mod:`kaifong.agents.store.reports`:
local date → output directory) for the console to list.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from kaifong.agents.report.inputs import CITY_TZ, ReportError, day_window
from kaifong.agents.report.run import generate
from kaifong.agents.store.reports import ReportLedger
from kaifong.streams.settings import Settings

log = logging.getLogger(__name__)

#: How long a worker's claim on producing one day's report holds: a worker that dies while
#: making it hands the day to the others after this (a failure hands it back at once).
CLAIM_TTL_S = 6 * 3600
#: Default local hour of the daily report: after the last deadline of the day (≤ 20 min into
#: the next day with the default rings) plus the update margin.
DEFAULT_REPORT_HOUR = 1


def report_cron(settings: Settings) -> str:
    """Crontab line (city-local time) of the daily report: at ``KAIFONG_REPORT_HOUR`` if the
    settings define it, else :data:`DEFAULT_REPORT_HOUR`.

    >>> report_cron(Settings())
    '0 1 * * *'
    """
    hour = int(getattr(settings, "report_hour", DEFAULT_REPORT_HOUR))
    if not 0 <= hour <= 23:
        raise ValueError(f"KAIFONG_REPORT_HOUR={hour}: expected an hour 0-23")
    return f"0 {hour} * * *"


def reports_root(settings: Settings) -> Path:
    """Where daily reports go: ``KAIFONG_REPORT_DIR`` if the settings define it, else
    ``<KAIFONG_DATA_DIR>/reports`` (one directory per local date)."""
    configured = str(getattr(settings, "report_dir", "") or "")
    return Path(configured) if configured else Path(settings.data_dir) / "reports"


async def daily_report(settings: Settings, day: date, *, out_root: Path | None = None, pdf: bool = True) -> Path:
    """Produce the report of local day ``day`` and record it in the reports ledger (date → dir).

    Runs the blocking work in a thread so the worker's event loop keeps serving. Without
    chromium the PDF is skipped (logged) rather than losing the day's figures.
    """
    from kaifong.streams.redisio import connect

    out = (out_root or reports_root(settings)) / day.isoformat()
    window = day_window(day)
    try:
        await asyncio.to_thread(generate, settings, window, out, pdf=pdf)
    except ReportError as exc:
        if not pdf or "chromium" not in str(exc):
            raise
        log.warning("daily report %s without PDF: %s", day.isoformat(), exc)
        await asyncio.to_thread(generate, settings, window, out, pdf=False)
    redis = connect(settings)
    try:
        await ReportLedger(redis).record(day.isoformat(), str(out.resolve()))
    finally:
        await redis.aclose()
    log.info("daily report %s written to %s", day.isoformat(), out)
    return out


async def daily_report_once(settings: Settings, day: date, **kwargs: Any) -> Path | None:
    """:func:`daily_report`, made by exactly one of the workers that call it for ``day``.

    The workers have no Faust leader (``topic_disable_leader``), so the first to claim the day
    in Redis (``SET NX``) makes the report; the others return None at once.
    """
    from kaifong.streams.redisio import connect

    redis = connect(settings)
    ledger = ReportLedger(redis)
    try:
        if await ledger.has(day.isoformat()):
            return None
        if not await ledger.claim(day.isoformat(), CLAIM_TTL_S):
            return None
        try:
            return await daily_report(settings, day, **kwargs)
        except BaseException:
            # Give the day back: the next scheduled run (on any worker) tries again.
            await ledger.release(day.isoformat())
            raise
    finally:
        await redis.aclose()


def yesterday(settings: Settings) -> date:
    """The local date before today on the settings' clock (the day a daily run reports on)."""
    return (settings.clock()().astimezone(CITY_TZ) - timedelta(days=1)).date()
