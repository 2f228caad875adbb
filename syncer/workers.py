"""At most SYNCER_WORKERS syncs at a time, each under its source's lease.

    Feeder (an APScheduler job, and each finished sync)
      -> claims as many due sources as there are free workers (one short statement)
      -> WorkerPool: a thread per worker runs `sync_leased`, no connection held
         while a provider is asked; a renewer keeps the running syncs' leases alive

`syncer run` feeds the pool from the `sources` table; `syncer sync` hands it the
chosen sources, each leased as its worker starts. Threads and connections follow the
number of workers, never the number of sources (procrastinate's worker, in spirit).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from syncer.db import sources
from syncer.db.engine import describe_db_error
from syncer.errors import LeaseLostError
from syncer.sync import sync_leased, take_lease, unrenewed_lease_seconds

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import sqlalchemy as sa

    from syncer.config import Settings, SourceConfig
    from syncer.db.sources import Lease
    from syncer.metrics import Metrics
    from syncer.sync import RunResult

log = logging.getLogger(__name__)

# A scheduled sync of a source that was healthy gives up retrying after this long (or
# SYNCER_RETRY_TIMEOUT, if shorter): when a provider goes down, each of its sources
# frees its worker soon, and is retried with the whole budget in the failing sources'
# share of the workers from its next due time on. Without it, the first failure of
# each source of a provider in an outage held a worker for the whole budget, and
# 100 such sources starved every healthy one for minutes (docs/performance.md).
FIRST_FAILURE_RETRY_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class _Held:
    lease: Lease
    started: float  # time.monotonic()


class WorkerPool:
    """SYNCER_WORKERS threads that sync leased sources, and the renewer of their leases.

    Leases last SYNCER_LEASE_TIMEOUT and are renewed every third of that while their
    sync runs, up to one sync's worst case (retry budget + request timeout + a
    margin): a replica that dies loses its sources within the lease time, a sync
    that hangs past its bound loses its lease, and a sync that is merely slow keeps it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        engine: sa.Engine,
        lease_engine: sa.Engine,
        owner: str,
        metrics: Metrics | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.owner = owner
        self.workers = settings.workers
        self._settings = settings
        self._engine = engine
        self._lease_engine = lease_engine
        self._metrics = metrics
        self._on_idle = on_idle
        self._executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="syncer-worker")
        self._lock = threading.Lock()
        self._busy = 0
        self._held: dict[str, _Held] = {}
        self._overdue: set[Lease] = set()  # warned about once
        self._stopping = threading.Event()
        self._closed = threading.Event()
        self._renewer = threading.Thread(
            target=self._renew_until_closed, name="syncer-lease-renewer", daemon=True
        )
        self._renewer.start()

    # What the feeder asks.

    def free(self) -> int:
        """Workers with nothing to do."""
        with self._lock:
            return self.workers - self._busy

    def running(self) -> list[str]:
        """Sources this pool holds the lease of."""
        with self._lock:
            return list(self._held)

    def running_failing(self) -> int:
        """How many of the running syncs are of sources whose last run failed."""
        with self._lock:
            return sum(1 for held in self._held.values() if held.lease.failing)

    # Work.

    def submit(self, source: SourceConfig, lease: Lease) -> Future[RunResult]:
        """Sync a source claimed from the schedule; its next due time moves on after."""
        with self._lock:
            self._busy += 1
            self._held[source.name] = _Held(lease, time.monotonic())
        return self._executor.submit(self._sync, source, lease, reschedule=True)

    def submit_now(self, source: SourceConfig, *, allow_mass_disappear: bool) -> Future[RunResult]:
        """Lease and sync a source now (`syncer sync`); waits SYNCER_LOCK_TIMEOUT at most
        for another holder of its lease, then raises SourceBusyError."""
        with self._lock:
            self._busy += 1
        return self._executor.submit(self._sync_now, source, allow_mass_disappear)

    def close(self) -> None:
        """Let running syncs finish (each ends within its bound), then stop."""
        self._stopping.set()
        self._executor.shutdown(wait=True)
        self._closed.set()
        self._renewer.join()

    def _sync_now(self, source: SourceConfig, allow_mass_disappear: bool) -> RunResult:  # noqa: FBT001 - a private callee of submit
        try:
            lease = take_lease(
                self._engine,
                source,
                self.owner,
                lease_seconds=self._settings.lease_timeout,
                wait=self._settings.lock_timeout,
            )
        except BaseException:
            self._done(None)
            raise
        with self._lock:
            self._held[source.name] = _Held(lease, time.monotonic())
        return self._sync(
            source, lease, reschedule=False, allow_mass_disappear=allow_mass_disappear
        )

    def _sync(
        self,
        source: SourceConfig,
        lease: Lease,
        *,
        reschedule: bool,
        allow_mass_disappear: bool = False,
    ) -> RunResult:
        metrics = self._metrics
        policy = self._settings.http
        if reschedule and not lease.failing:
            budget = min(policy.retry_budget, FIRST_FAILURE_RETRY_SECONDS)
            policy = replace(policy, retry_budget=budget)
        try:
            result = sync_leased(
                self._engine,
                source,
                lease,
                rules=self._settings.rules,
                policy=policy,
                reschedule=reschedule,
                allow_mass_disappear=allow_mass_disappear,
            )
        except LeaseLostError as error:
            log.warning("%s", error, extra={"source": source.name, "skipped": "lease_lost"})
            if metrics:
                metrics.record_skipped(source.name, "lease_lost")
            raise
        except Exception:  # the pool must survive even a bug in one sync
            log.exception("source %s: unexpected error; will try again", source.name)
            if metrics:
                metrics.record_skipped(source.name, "error")
            raise
        finally:
            self._done(lease)
        if metrics:
            metrics.record_run(result)
            if result.run_id is None:
                metrics.record_skipped(source.name, "unrecorded")
        if result.run_id is None:
            log.warning(
                "source %s: this run could not be recorded (database unavailable); "
                "will try again next interval",
                source.name,
                extra={"source": source.name, "skipped": "unrecorded"},
            )
        return result

    def _done(self, lease: Lease | None) -> None:
        """A sync ended; `lease`, if it had taken one, is no longer held by it."""
        with self._lock:
            self._busy -= 1
            # Only its own entry: never one a later sync of the same source put there.
            if lease is not None and (held := self._held.get(lease.source)) and held.lease == lease:
                del self._held[lease.source]
        if self._on_idle is not None and not self._stopping.is_set():
            self._on_idle()

    # Leases.

    def renew(self) -> None:
        """Renew the leases of the running syncs that are still within their bound."""
        bound = unrenewed_lease_seconds(self._settings.http)
        now = time.monotonic()
        with self._lock:
            held = list(self._held.values())
        leases = [h.lease for h in held if now - h.started < bound]
        for overdue in (h.lease for h in held if now - h.started >= bound):
            if overdue in self._overdue:
                continue
            self._overdue.add(overdue)
            log.warning(
                "source %s: its sync has run past its bound (%.0fs); its lease is left to "
                "expire, and a listing it still fetches will not be applied",
                overdue.source,
                bound,
            )
        if not leases:
            return
        try:
            with self._lease_engine.begin() as conn:
                renewed = sources.renew(conn, leases, lease_seconds=self._settings.lease_timeout)
        except SQLAlchemyError as error:
            log.warning("renewing leases failed: %s; will try again", describe_db_error(error))
            return
        with self._lock:  # a sync that ended meanwhile released its lease: not lost
            still_held = {held.lease for held in self._held.values()}
        for lost in (lease for lease in leases if lease.source not in renewed):
            if lost not in still_held:
                continue
            log.warning(
                "source %s: its lease has passed to another process; this sync's listing "
                "will not be applied",
                lost.source,
            )

    def _renew_until_closed(self) -> None:
        every = self._settings.lease_timeout / 3
        while not self._closed.wait(every):
            self.renew()


class Feeder:
    """Claims due sources for the pool's free workers: at each tick of its APScheduler
    job, and as soon as a sync ends. Never raises.

    Sources whose last run failed get at most half the workers (and at least one):
    a provider in an outage retries for minutes, and must not hold every worker while
    healthy sources fall due. (A source that was healthy retries for at most
    FIRST_FAILURE_RETRY_SECONDS before it counts as failing.)
    """

    def __init__(
        self,
        engine: sa.Engine,
        pool: WorkerPool,
        configured: Sequence[SourceConfig],
        *,
        lease_seconds: float,
    ) -> None:
        self._engine = engine
        self._pool = pool
        self._sources = {source.name: source for source in configured}
        self._names = list(self._sources)
        self._lease_seconds = lease_seconds
        self._failing_share = max(1, pool.workers // 2)
        self._feeding = threading.Lock()
        self._wanted = threading.Event()
        self._failing_since: float | None = None
        self.stopped = False

    def feed(self) -> None:
        """Claim and start due syncs; if a feed is already running, it goes round again."""
        self._wanted.set()
        while self._wanted.is_set() and not self.stopped:
            if not self._feeding.acquire(blocking=False):
                return  # the running feed sees _wanted and claims once more
            try:
                self._wanted.clear()
                self._claim_and_start()
            finally:
                self._feeding.release()

    def _claim_and_start(self) -> None:
        pool = self._pool
        free = pool.free()
        if free <= 0:
            return
        failing_free = min(free, self._failing_share - pool.running_failing())
        try:
            with self._engine.begin() as conn:
                leases = sources.claim_due(
                    conn,
                    self._names,
                    pool.owner,
                    limit=free,
                    failing_limit=failing_free,
                    lease_seconds=self._lease_seconds,
                    running=pool.running(),
                )
        except SQLAlchemyError as error:
            self._claim_failed(error)
            return
        if self._failing_since is not None:
            log.info(
                "claiming due sources works again after %.0fs",
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None
        for lease in leases:
            pool.submit(self._sources[lease.source], lease)

    def _claim_failed(self, error: SQLAlchemyError) -> None:
        # Once per outage, not once per tick: the lag gauge and /readyz tell the rest.
        level = logging.WARNING if self._failing_since is None else logging.DEBUG
        self._failing_since = self._failing_since or time.monotonic()
        log.log(
            level,
            "claiming due sources failed: database unavailable: %s; due syncs wait, "
            "will try again next interval",
            describe_db_error(error),
        )
