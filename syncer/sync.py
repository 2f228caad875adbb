"""One sync of one source, top to bottom:

    lease the source (the scheduler's claim, or `sync_source`)
    -> gather: read the digests of its stored items (a short transaction)
    -> fetch the listing with no database connection held, parsing only the items
       whose digest is new
    -> plan and apply: one transaction that checks the lease is still this sync's,
       reads the stored rows the listing may change, plans, writes rows + events +
       run record + alerts, and releases the lease

Failures are recorded in one place (`_record_failure`): a failed listing, or a
failure while reading or writing, becomes a `failed` run in a transaction of its own
(which releases the lease too), where the database still lets us; nothing about
files changes. A listing fetched under a lease that passed to another process is
never applied (LeaseLostError): that process syncs the source instead.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy.exc import OperationalError, SQLAlchemyError

from syncer.alerts import alerts_for_failed_run, alerts_for_run
from syncer.db import outbox, sources, store
from syncer.db.engine import describe_db_error
from syncer.db.sources import Lease, process_owner
from syncer.diff import plan_sync
from syncer.errors import (
    DatabaseUnavailableError,
    LeaseLostError,
    ProviderError,
    SourceBusyError,
)
from syncer.model import EventKind, Outcome
from syncer.providers import fetch_listing
from syncer.redaction import redact
from syncer.retention import analyze_after_bulk_load

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import httpx
    import sqlalchemy as sa

    from syncer.config import HttpPolicy, SourceConfig, SyncRules
    from syncer.diff import Plan
    from syncer.model import Listing

log = logging.getLogger(__name__)

# So many new files at once (an initial load) that the planner's statistics must be
# refreshed now, not whenever autovacuum gets to it.
BULK_LOAD_FILES = 10_000


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one sync did, as reported on the terminal and in logs.

    `counts` has the `sync_runs` counters of the run: files_listed, items_skipped, the
    six event kinds and disappearances_held (empty for a failed run).
    """

    source: str
    outcome: Outcome
    run_id: int | None
    seconds: float
    counts: Mapping[str, int] = field(default_factory=dict)
    error: str | None = None

    def summary(self) -> str:
        count = self.counts.get
        line = f"{self.source}: {self.outcome.value} in {self.seconds:.2f}s"
        if self.counts:
            line += (
                f", {count('files_listed', 0)} listed, {count('appeared', 0)} appeared, "
                f"{count('status_changed', 0)} status changed, {count('changed', 0)} changed, "
                f"{count('disappeared', 0)} disappeared, {count('reappeared', 0)} reappeared"
            )
        if count("expired"):
            line += f", {count('expired')} expired"
        if count("items_skipped"):
            line += f", {count('items_skipped')} unusable items skipped"
        if count("disappearances_held"):
            line += (
                f", {count('disappearances_held')} disappearances held back "
                "(rerun with --allow-mass-disappear if they are real)"
            )
        if self.error:
            line += f": {self.error}"
        return line


# A lease that nobody renews must outlast the sync that holds it: the retry budget,
# the last request, one backoff step beyond the budget and the reads and writes.
_LEASE_MARGIN_SECONDS = 60.0
_BUSY_POLL_INITIAL, _BUSY_POLL_MAX = 0.1, 1.0
_LOCK_NOT_AVAILABLE = "55P03"


def unrenewed_lease_seconds(policy: HttpPolicy) -> float:
    """How long a lease must last when nobody renews it: one sync's worst case."""
    return policy.retry_budget + policy.request_deadline + _LEASE_MARGIN_SECONDS


def sync_source(
    engine: sa.Engine,
    source: SourceConfig,
    *,
    rules: SyncRules,
    policy: HttpPolicy,
    allow_mass_disappear: bool = False,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    wait: float = 30.0,
) -> RunResult:
    """Lease one source, sync it now and release it; its schedule stays as it is.

    A lease held by another process is waited for, up to `wait` seconds, polling
    with no connection held. The lease is not renewed, so it is taken for one sync's
    worst case (`unrenewed_lease_seconds`). Raises SourceBusyError (naming the
    holder) or DatabaseUnavailableError only.
    """
    lease = take_lease(
        engine,
        source,
        process_owner("sync"),
        lease_seconds=unrenewed_lease_seconds(policy),
        wait=wait,
    )
    return sync_leased(
        engine,
        source,
        lease,
        rules=rules,
        policy=policy,
        reschedule=False,
        allow_mass_disappear=allow_mass_disappear,
        transport=transport,
        clock=clock,
    )


def take_lease(
    engine: sa.Engine, source: SourceConfig, owner: str, *, lease_seconds: float, wait: float
) -> Lease:
    """Lease `source` for `owner`, waiting up to `wait` s while another process holds it."""
    deadline = time.monotonic() + wait
    pause = _BUSY_POLL_INITIAL
    while True:
        try:
            with engine.begin() as conn:
                taken = sources.acquire(conn, source, owner, lease_seconds=lease_seconds)
        except OperationalError as error:
            if getattr(error.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise _unavailable(source, error) from error
            taken = None  # a sync of the source is writing right now
        except SQLAlchemyError as error:
            raise _unavailable(source, error) from error
        if isinstance(taken, Lease):
            return taken
        held_by = f" ({taken})" if taken else ""
        if time.monotonic() + pause > deadline:
            raise SourceBusyError(
                f"source {source.name!r}: another sync of this source is still running"
                f"{held_by}; try again later"
            )
        if pause == _BUSY_POLL_INITIAL:
            log.info("source %s is being synced elsewhere%s; waiting", source.name, held_by)
        time.sleep(pause)
        pause = min(pause * 2, _BUSY_POLL_MAX)


def _unavailable(source: SourceConfig, error: SQLAlchemyError) -> DatabaseUnavailableError:
    return DatabaseUnavailableError(
        f"source {source.name!r}: database unavailable: {describe_db_error(error)}"
    )


@dataclass(frozen=True, slots=True)
class _Attempt:
    """What every step of one sync under a lease needs to know."""

    engine: sa.Engine
    source: SourceConfig
    lease: Lease
    started_at: datetime
    clock: Callable[[], datetime]
    reschedule: bool


class _Failed(Exception):  # noqa: N818 - private: a failure on its way to _record_failure
    """A step of the sync failed; the message (redacted) goes into the failed run."""


def sync_leased(  # noqa: PLR0913 - one sync's I/O and knobs, passed in (STYLE.md)
    engine: sa.Engine,
    source: SourceConfig,
    lease: Lease,
    *,
    rules: SyncRules,
    policy: HttpPolicy,
    reschedule: bool,
    allow_mass_disappear: bool = False,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RunResult:
    """Sync `source` under `lease`, then release the lease; never holds a connection
    while the provider is asked.

    `reschedule`: move the source's next due time one interval on (scheduled syncs).
    Raises LeaseLostError only. A result without a `run_id` is a failure that not
    even its `failed` run could record (the database was away).
    """
    started = time.monotonic()
    attempt = _Attempt(engine, source, lease, clock(), clock, reschedule)

    def finish(
        outcome: Outcome,
        run_id: int | None,
        counts: Mapping[str, int] | None = None,
        error: str | None = None,
    ) -> RunResult:
        seconds = time.monotonic() - started
        result = RunResult(source.name, outcome, run_id, seconds, counts or {}, error)
        _log_result(result)
        return result

    try:
        known = _gather(engine, source)
        listing = _fetch(source, policy, transport, known)
        plan, run_id = _apply(
            attempt, listing, known, rules=rules, allow_mass_disappear=allow_mass_disappear
        )
    except _Failed as failure:
        message = str(failure)
        return finish(Outcome.FAILED, _record_failure(attempt, message), error=message)
    for problem in listing.problems:
        log.warning("source %s: skipped an unusable item: %s", source.name, problem)
    if listing.early_end:
        log.warning("source %s: %s", source.name, listing.early_end)
    if plan.count(EventKind.APPEARED) >= BULK_LOAD_FILES:
        _refresh_statistics(engine, source)
    return finish(plan.outcome, run_id, _counts(plan, listing))


def _refresh_statistics(engine: sa.Engine, source: SourceConfig) -> None:
    """After an initial load, plans must not wait for autovacuum's statistics.

    Best effort: the load is committed, and autovacuum catches up in the end anyway.
    """
    try:
        with engine.connect() as conn:  # it commits the ANALYZE itself
            analyze_after_bulk_load(conn)
    except SQLAlchemyError as error:
        log.warning(
            "source %s: could not analyze after its initial load: %s",
            source.name,
            describe_db_error(error),
        )


def _gather(engine: sa.Engine, source: SourceConfig) -> store.KnownFiles:
    """The digests of the stored items. Read before the fetch and outside the write
    transaction: only a holder of the source's lease writes its files, and the write
    transaction checks that nobody else has held it since."""
    try:
        with engine.begin() as conn:
            return store.load_known(conn, source.name)
    except SQLAlchemyError as error:
        message = f"reading the stored files failed: {describe_db_error(error)}"
        log.error("source %s: %s", source.name, message)  # noqa: TRY400 - the cause is in the message
        raise _Failed(message) from None


def _fetch(
    source: SourceConfig,
    policy: HttpPolicy,
    transport: httpx.BaseTransport | None,
    known: store.KnownFiles,
) -> Listing:
    try:
        return fetch_listing(source, policy, transport=transport, known=known.digests)
    except ProviderError as error:
        raise _Failed(redact(str(error))) from None


def _apply(
    attempt: _Attempt,
    listing: Listing,
    known: store.KnownFiles,
    *,
    rules: SyncRules,
    allow_mass_disappear: bool,
) -> tuple[Plan, int]:
    """Plan and write the listing in one transaction, under the lease; releases it."""
    source, clock = attempt.source, attempt.clock
    observed_at = clock()
    try:
        with attempt.engine.begin() as conn:
            if not sources.hold_for_write(conn, attempt.lease):
                raise _lease_lost(source)
            history = outbox.source_history(conn, source.name)
            stored = store.load_stored_state(conn, source.name, listing, known)
            plan = plan_sync(
                listing, stored, rules, allow_mass_disappear=allow_mass_disappear, now=observed_at
            )
            record = _run_record(
                source,
                attempt.started_at,
                clock(),
                plan.outcome,
                None,
                files_listed=listing.items_listed,
                items_skipped=listing.skipped,
            )
            run_id = store.apply_plan(conn, plan, record, observed_at=observed_at)
            raised = alerts_for_run(
                source.name, source.provider, run_id, plan, history, observed_at=observed_at
            )
            outbox.insert_alerts(conn, raised, sync_run_id=run_id, now=observed_at)
            sources.release(conn, attempt.lease, failed=False, reschedule=attempt.reschedule)
            # The run row went in first (events refer to it); its end is now, so the
            # recorded duration includes the writes.
            store.finish_run(conn, run_id, clock())
    except SQLAlchemyError as error:
        # The transaction is rolled back: nothing of this listing was applied.
        message = f"writing the listing failed: {describe_db_error(error)}"
        log.error("source %s: %s", source.name, message)  # noqa: TRY400 - the cause is in the message
        raise _Failed(message) from None
    return plan, run_id


def _lease_lost(source: SourceConfig) -> LeaseLostError:
    return LeaseLostError(
        f"source {source.name!r}: its lease expired and passed to another process while "
        "the listing was fetched; this listing was not applied (the other process syncs it)"
    )


def _run_record(
    source: SourceConfig,
    started_at: datetime,
    finished_at: datetime,
    outcome: Outcome,
    error: str | None,
    *,
    files_listed: int = 0,
    items_skipped: int = 0,
) -> store.RunRecord:
    return store.RunRecord(
        source=source.name,
        provider=source.provider,
        started_at=started_at,
        finished_at=finished_at,
        outcome=outcome,
        files_listed=files_listed,
        items_skipped=items_skipped,
        error=error,
    )


def _record_failure(attempt: _Attempt, message: str) -> int | None:
    """Record a failed run and release the lease; None when the database is the problem.

    Its lease still held by this process, an unreleased source is claimed again at
    the next tick (syncer.db.sources._CLAIMABLE) or by others once the lease expires.
    """
    source = attempt.source
    try:
        with attempt.engine.begin() as conn:
            if not sources.hold_for_write(conn, attempt.lease):
                raise _lease_lost(source)
            run_id = _insert_failed_run(conn, source, attempt.started_at, attempt.clock(), message)
            sources.release(conn, attempt.lease, failed=True, reschedule=attempt.reschedule)
            return run_id
    except SQLAlchemyError as error:
        log.warning(
            "source %s: could not record the failed run either: %s",
            source.name,
            describe_db_error(error),
        )
        return None


def _insert_failed_run(
    conn: sa.Connection,
    source: SourceConfig,
    started_at: datetime,
    finished_at: datetime,
    message: str,
) -> int:
    """Record a failed run, and the alert when it makes the source's failure streak."""
    history = outbox.source_history(conn, source.name)
    record = _run_record(source, started_at, finished_at, Outcome.FAILED, message)
    run_id = store.insert_run(conn, record)
    raised = alerts_for_failed_run(
        source.name, source.provider, run_id, history, error=message, observed_at=finished_at
    )
    outbox.insert_alerts(conn, raised, sync_run_id=run_id, now=finished_at)
    return run_id


def _counts(plan: Plan, listing: Listing) -> dict[str, int]:
    return {
        "files_listed": listing.items_listed,
        "items_skipped": listing.skipped,
        "appeared": plan.count(EventKind.APPEARED),
        "status_changed": plan.count(EventKind.STATUS_CHANGED),
        "changed": plan.count(EventKind.CHANGED),
        "disappeared": plan.count(EventKind.DISAPPEARED),
        "expired": plan.count(EventKind.EXPIRED),
        "reappeared": plan.count(EventKind.REAPPEARED),
        "disappearances_held": plan.disappearances_held,
    }


def _log_result(result: RunResult) -> None:
    level = logging.INFO if result.outcome is Outcome.OK else logging.WARNING
    fields = {
        "source": result.source,
        "run_id": result.run_id,
        "outcome": result.outcome.value,
        "duration_seconds": round(result.seconds, 3),
        "counts": dict(result.counts),
    }
    log.log(level, "%s", result.summary(), extra=fields)
