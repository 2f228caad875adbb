"""`syncer run`: scheduled syncs, alert delivery and HTTP, until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.exc import SQLAlchemyError

from syncer.db.engine import describe_db_error
from syncer.delivery import dispatch_due
from syncer.errors import ConfigError, DatabaseUnavailableError, SourceBusyError
from syncer.metrics import Metrics
from syncer.retention import prune
from syncer.sync import sync_source
from syncer.web import HttpServer, make_app

if TYPE_CHECKING:
    from collections.abc import Sequence

    from apscheduler.schedulers.base import BaseScheduler

    from syncer.config import AlertPolicy, Settings, SourceConfig
    from syncer.delivery import Target

log = logging.getLogger(__name__)

_MAX_JITTER_SECONDS = 30.0
HEARTBEAT_SECONDS = 5.0
PRUNE_SECONDS = 3600.0


def run_service(
    settings: Settings,
    engine: sa.Engine,
    *,
    targets: Sequence[Target] = (),
    stop: threading.Event | None = None,
) -> int:
    """Sync every source at once and then every interval until stopped; returns 0.

    Alongside: the alert dispatcher (when targets are configured), a heartbeat that
    /healthz checks, and the HTTP server (unless SYNCER_HTTP_PORT is 0). A sync in
    progress when the stop signal arrives is allowed to finish (it is bounded by the
    retry budget), so no listing is ever half-applied.
    """
    stop = stop or threading.Event()
    metrics = Metrics(engine, settings.sources)
    heartbeat = Heartbeat()
    # One thread per source, one for the dispatcher, one for the heartbeat: a slow
    # sync never starves the heartbeat and so never makes /healthz lie.
    scheduler = BackgroundScheduler(
        timezone=UTC,
        executors={"default": ThreadPoolExecutor(len(settings.sources) + 2)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
    )
    now = datetime.now(UTC)
    for source in settings.sources:
        scheduler.add_job(
            _sync_job,
            IntervalTrigger(
                seconds=source.interval, jitter=min(source.interval / 10, _MAX_JITTER_SECONDS)
            ),
            args=(engine, settings, source, metrics),
            id=f"sync:{source.name}",
            name=f"sync {source.name}",
            next_run_time=now,
        )
    scheduler.add_job(
        heartbeat.beat,
        IntervalTrigger(seconds=HEARTBEAT_SECONDS),
        id="heartbeat",
        next_run_time=now,
    )
    if targets:
        scheduler.add_job(
            _dispatch_job,
            IntervalTrigger(seconds=settings.alerts.dispatch_interval),
            args=(engine, targets, settings.alerts),
            id="alerts:dispatch",
            name="deliver alerts",
            next_run_time=now,
        )
    else:
        log.warning(
            "SYNCER_ALERT_URLS is not set: alerts are recorded in the alerts table "
            "but delivered to no one"
        )
    # Retention, hourly, on a thread of its own so that it never delays a sync.
    scheduler.add_executor(ThreadPoolExecutor(1), "maintenance")
    scheduler.add_job(
        _prune_job,
        IntervalTrigger(seconds=PRUNE_SECONDS, jitter=_MAX_JITTER_SECONDS),
        args=(engine, settings),
        id="prune",
        name="prune history",
        executor="maintenance",
    )
    server = _serve_http(settings, engine, metrics, heartbeat, scheduler)
    _stop_on_signals(stop)
    scheduler.start()
    log.info("syncer is running: %s", ", ".join(s.name for s in settings.sources))
    try:
        while not stop.wait(1.0):
            pass
        log.info("stopping: waiting for running syncs to finish")
        scheduler.shutdown(wait=True)
    finally:
        if server is not None:
            server.close()
    log.info("stopped")
    return 0


class Heartbeat:
    """Proof that the scheduler still runs jobs, for /healthz."""

    def __init__(self) -> None:
        self._last = time.monotonic()

    def beat(self) -> None:
        self._last = time.monotonic()

    def problem(self, scheduler: BaseScheduler) -> str | None:
        if not scheduler.running:
            return "the scheduler is not running"
        silent = time.monotonic() - self._last
        if silent > HEARTBEAT_SECONDS * 6:
            return f"the scheduler has run no job for {silent:.0f}s"
        return None


def database_problem(engine: sa.Engine) -> str | None:
    """None when the database answers, else why not (for /readyz)."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.select(1))
    except SQLAlchemyError as error:
        return f"database unavailable: {describe_db_error(error)}"
    return None


def _serve_http(
    settings: Settings,
    engine: sa.Engine,
    metrics: Metrics,
    heartbeat: Heartbeat,
    scheduler: BaseScheduler,
) -> HttpServer | None:
    if not settings.http_port:
        return None
    app = make_app(
        alive=lambda: heartbeat.problem(scheduler),
        ready=lambda: database_problem(engine),
        registry=metrics.registry,
    )
    try:
        server = HttpServer(settings.http_host, settings.http_port, app)
    except OSError as error:
        raise ConfigError(
            f"SYNCER_HTTP_HOST/SYNCER_HTTP_PORT: cannot listen on "
            f"{settings.http_host}:{settings.http_port}: {error.strerror or error}"
        ) from None
    log.info("serving /healthz, /readyz and /metrics on %s:%d", settings.http_host, server.port)
    return server


def _sync_job(
    engine: sa.Engine, settings: Settings, source: SourceConfig, metrics: Metrics
) -> None:
    """One scheduled sync. Never raises: a failing source must not stop the others."""
    try:
        result = sync_source(engine, source, rules=settings.rules, policy=settings.http)
    except SourceBusyError as error:
        log.info("%s; skipping this tick", error)
    except DatabaseUnavailableError as error:
        metrics.record_unfinished_run(source.name)
        log.error("%s; will try again next interval", error)  # noqa: TRY400 - the cause is in the message
    except Exception:  # the scheduler must survive even a bug in one sync
        metrics.record_unfinished_run(source.name)
        log.exception("source %s: unexpected error; will try again next interval", source.name)
    else:
        metrics.record_run(result)


def _dispatch_job(engine: sa.Engine, targets: Sequence[Target], policy: AlertPolicy) -> None:
    """One scheduled delivery pass. Never raises, like a sync."""
    try:
        dispatch_due(engine, targets, policy)
    except SQLAlchemyError as error:
        log.warning("alerts: database unavailable: %s; will try again", describe_db_error(error))
    except Exception:  # the scheduler must survive even a bug in delivery
        log.exception("alerts: unexpected error while delivering; will try again")


def _prune_job(engine: sa.Engine, settings: Settings) -> None:
    """One scheduled retention pass. Never raises, like a sync."""
    try:
        prune(engine, settings.retention)
    except SQLAlchemyError as error:
        log.warning("prune: database unavailable: %s; will try again", describe_db_error(error))
    except Exception:  # the scheduler must survive even a bug in retention
        log.exception("prune: unexpected error; will try again")


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be installed from the main thread (tests)

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
