"""`syncer run`: one scheduled job per source, until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from syncer.errors import DatabaseUnavailableError, SourceBusyError
from syncer.sync import sync_source

if TYPE_CHECKING:
    import sqlalchemy as sa

    from syncer.config import Settings, SourceConfig

log = logging.getLogger(__name__)

_MAX_JITTER_SECONDS = 30.0


def run_service(
    settings: Settings, engine: sa.Engine, *, stop: threading.Event | None = None
) -> int:
    """Sync every source at once and then every interval until stopped; returns 0.

    A sync in progress when the stop signal arrives is allowed to finish (it is
    bounded by the retry budget), so no listing is ever half-applied.
    """
    stop = stop or threading.Event()
    scheduler = BackgroundScheduler(
        timezone=UTC,
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
    )
    for source in settings.sources:
        scheduler.add_job(
            _sync_job,
            IntervalTrigger(
                seconds=source.interval, jitter=min(source.interval / 10, _MAX_JITTER_SECONDS)
            ),
            args=(engine, settings, source),
            id=f"sync:{source.name}",
            name=f"sync {source.name}",
            next_run_time=datetime.now(UTC),
        )
    _stop_on_signals(stop)
    scheduler.start()
    log.info("syncer is running: %s", ", ".join(s.name for s in settings.sources))
    while not stop.wait(1.0):
        pass
    log.info("stopping: waiting for running syncs to finish")
    scheduler.shutdown(wait=True)
    log.info("stopped")
    return 0


def _sync_job(engine: sa.Engine, settings: Settings, source: SourceConfig) -> None:
    """One scheduled sync. Never raises: a failing source must not stop the others."""
    try:
        sync_source(engine, source, rules=settings.rules, policy=settings.http)
    except SourceBusyError as error:
        log.info("%s; skipping this tick", error)
    except DatabaseUnavailableError as error:
        log.error("%s; will try again next interval", error)  # noqa: TRY400 - the cause is in the message
    except Exception:  # the scheduler must survive even a bug in one sync
        log.exception("source %s: unexpected error; will try again next interval", source.name)


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be installed from the main thread (tests)

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
