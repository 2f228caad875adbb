"""`syncer run`: scheduled syncs, alert delivery and HTTP, until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.exc import SQLAlchemyError

from syncer.db import sources
from syncer.db.engine import describe_db_error
from syncer.delivery import dispatch_due
from syncer.errors import ConfigError
from syncer.metrics import Metrics
from syncer.retention import prune
from syncer.web import HttpServer, make_app
from syncer.workers import Feeder, WorkerPool

if TYPE_CHECKING:
    from collections.abc import Sequence

    from apscheduler.schedulers.base import BaseScheduler

    from syncer.config import AlertPolicy, Settings, SourceConfig
    from syncer.delivery import Target

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0
# Retention runs hourly, at a time of each replica's own (the advisory lock makes the
# others' passes no-ops anyway). The first pass comes a few minutes after start, not
# an hour: a service restarted more often than hourly (deploys, a crash loop) would
# otherwise never prune; not at once, so that a start's first syncs go first.
PRUNE_SECONDS, PRUNE_JITTER_SECONDS = 3600.0, 300.0
PRUNE_FIRST_DELAY_SECONDS = 300.0
# The claim job, the heartbeat, the alert dispatcher, and one spare.
_SCHEDULER_THREADS = 4
# Besides these ticks, every finished sync looks for more due work at once.
_FEED_MIN_SECONDS, _FEED_MAX_SECONDS = 0.1, 1.0


def run_service(
    settings: Settings,
    engine: sa.Engine,
    *,
    control_engine: sa.Engine | None = None,
    targets: Sequence[Target] = (),
    stop: threading.Event | None = None,
) -> int:
    """Sync every source when it is due until stopped; returns 0.

    The configured sources are registered in the `sources` table (those no longer
    configured are retired); an APScheduler job claims due ones for at most
    SYNCER_WORKERS workers, sharing them with any other replica on the database.
    Alongside: the alert dispatcher (when targets are configured), a heartbeat that
    /healthz checks, and the HTTP server (unless SYNCER_HTTP_PORT is 0). `engine`
    serves the syncs; `control_engine` (default: `engine`) the claims, the endpoints
    and the dispatcher, which must never wait behind syncs (db.engine.service_engines).
    Syncs in progress when the stop signal arrives are allowed to finish (each within
    its bound) and release their leases, so no listing is ever half-applied.
    """
    stop = stop or threading.Event()
    control = control_engine or engine
    with control.begin() as conn:
        retired = sources.register(conn, settings.sources)
    if retired:
        log.info("retired sources no longer configured (rows and history stay): %s", retired)
    metrics = Metrics(control, settings.sources)
    heartbeat = Heartbeat()
    feeder: Feeder | None = None
    pool = WorkerPool(
        settings,
        engine=engine,
        lease_engine=control,
        owner=sources.process_owner("run"),
        metrics=metrics,
        on_idle=lambda: feeder.feed() if feeder else None,
    )
    feeder = Feeder(control, pool, settings.sources, lease_seconds=settings.lease_timeout)
    # The syncs run on the pool's threads; the scheduler's own only claim work, beat
    # and deliver alerts, so a slow sync never starves the heartbeat and never makes
    # /healthz lie.
    scheduler = BackgroundScheduler(
        timezone=UTC,
        executors={"default": ThreadPoolExecutor(_SCHEDULER_THREADS)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
    )
    now = datetime.now(UTC)
    tick = feed_seconds(settings.sources)
    scheduler.add_job(
        feeder.feed,
        # Jittered: replicas' ticks fall in a different order each time. Without it, one
        # replica's ticks kept landing just before the other's and it claimed nearly
        # every source (48 syncs to 1 in test_two_replicas_list_each_source_once...).
        IntervalTrigger(seconds=tick, jitter=tick / 2),
        id="sync:claim",
        name="claim due sources",
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
            args=(control, targets, settings.alerts),
            id="alerts:dispatch",
            name="deliver alerts",
            next_run_time=now,
        )
    else:
        log.warning(
            "SYNCER_ALERT_URLS is not set: alerts are recorded in the alerts table "
            "but delivered to no one"
        )
    # Retention, hourly, on a thread of its own so that it never delays a sync; on the
    # control engine, so that it never takes a sync's connection.
    scheduler.add_executor(ThreadPoolExecutor(1), "maintenance")
    first_prune_jitter = random.uniform(0, PRUNE_JITTER_SECONDS)  # noqa: S311 # not secret
    scheduler.add_job(
        _prune_job,
        IntervalTrigger(seconds=PRUNE_SECONDS, jitter=PRUNE_JITTER_SECONDS),
        args=(control, settings),
        id="prune",
        name="prune history",
        executor="maintenance",
        next_run_time=now + timedelta(seconds=PRUNE_FIRST_DELAY_SECONDS + first_prune_jitter),
    )
    server = _serve_http(settings, control, metrics, heartbeat, scheduler)
    _stop_on_signals(stop)
    scheduler.start()
    log.info(
        "syncer is running with %d workers as %s: %s",
        settings.workers,
        pool.owner,
        ", ".join(s.name for s in settings.sources),
    )
    try:
        while not stop.wait(1.0):
            pass
        log.info("stopping: waiting for running syncs to finish")
        feeder.stopped = True
        scheduler.shutdown(wait=True)
        pool.close()
    finally:
        if server is not None:
            server.close()
    log.info("stopped")
    return 0


def feed_seconds(configured: Sequence[SourceConfig]) -> float:
    """How often to look for due sources: often enough for the shortest interval."""
    shortest = min((source.interval for source in configured), default=_FEED_MAX_SECONDS)
    return min(_FEED_MAX_SECONDS, max(_FEED_MIN_SECONDS, shortest / 4))


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
        metrics=metrics.exposition,
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
