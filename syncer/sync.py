"""One sync of one source, top to bottom:

    lock the source -> read the digests of its stored items -> fetch the listing,
    parsing only the items whose digest is new -> (one transaction: read the stored
    rows the listing may change, plan, write rows + events + run record + alerts)
    -> unlock

A failed listing is recorded as a `failed` run and changes nothing else. Any failure
while writing rolls the whole transaction back (the previous state stays) and is
recorded as a `failed` run where the database still lets us.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from syncer.alerts import alerts_for_failed_run, alerts_for_run
from syncer.db import outbox, store
from syncer.db.engine import describe_db_error
from syncer.diff import plan_sync
from syncer.errors import DatabaseUnavailableError, ProviderError
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


def sync_source(
    engine: sa.Engine,
    source: SourceConfig,
    *,
    rules: SyncRules,
    policy: HttpPolicy,
    allow_mass_disappear: bool = False,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RunResult:
    """Sync one source now. Raises SourceBusyError or DatabaseUnavailableError only."""
    started_at, started = clock(), time.monotonic()

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
        with engine.connect() as conn, store.source_lock(conn, source.name):
            # Read before the fetch, under the lock that keeps every other writer of
            # this source's files away until this sync is done.
            try:
                with conn.begin():
                    known = store.load_known(conn, source.name)
            except SQLAlchemyError as error:
                message = f"reading the stored files failed: {describe_db_error(error)}"
                log.exception("source %s: %s", source.name, message)
                failed_run = _record_failure(engine, source, started_at, clock(), message)
                return finish(Outcome.FAILED, failed_run, error=message)
            try:
                listing = fetch_listing(source, policy, transport=transport, known=known.digests)
            except ProviderError as error:
                message = redact(str(error))
                with conn.begin():
                    run_id = _insert_failed_run(conn, source, started_at, clock(), message)
                return finish(Outcome.FAILED, run_id, error=message)

            observed_at = clock()
            try:
                with conn.begin():
                    history = outbox.source_history(conn, source.name)
                    stored = store.load_stored_state(conn, source.name, listing, known)
                    plan = plan_sync(
                        listing,
                        stored,
                        rules,
                        allow_mass_disappear=allow_mass_disappear,
                        now=observed_at,
                    )
                    record = _run_record(
                        source,
                        started_at,
                        clock(),
                        plan.outcome,
                        None,
                        files_listed=listing.items_listed,
                        items_skipped=listing.skipped,
                    )
                    run_id = store.apply_plan(conn, plan, record, observed_at=observed_at)
                    raised = alerts_for_run(
                        source.name,
                        source.provider,
                        run_id,
                        plan,
                        history,
                        observed_at=observed_at,
                    )
                    outbox.insert_alerts(conn, raised, sync_run_id=run_id, now=observed_at)
                    # The run row went in first (events refer to it); its end is now,
                    # so the recorded duration includes the writes.
                    store.finish_run(conn, run_id, clock())
            except SQLAlchemyError as error:
                # The transaction is rolled back: nothing of this listing was applied.
                message = f"writing the listing failed: {describe_db_error(error)}"
                log.exception("source %s: %s", source.name, message)
                failed_run = _record_failure(engine, source, started_at, clock(), message)
                return finish(Outcome.FAILED, failed_run, error=message)
            for problem in listing.problems:
                log.warning("source %s: skipped an unusable item: %s", source.name, problem)
            if listing.early_end:
                log.warning("source %s: %s", source.name, listing.early_end)
            if plan.count(EventKind.APPEARED) >= BULK_LOAD_FILES:
                analyze_after_bulk_load(conn)
            return finish(plan.outcome, run_id, _counts(plan, listing))
    except SQLAlchemyError as error:
        raise DatabaseUnavailableError(
            f"source {source.name!r}: database unavailable: {describe_db_error(error)}"
        ) from error


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


def _record_failure(
    engine: sa.Engine,
    source: SourceConfig,
    started_at: datetime,
    finished_at: datetime,
    message: str,
) -> int | None:
    """Best effort: when the database itself is the problem, this fails too."""
    try:
        with engine.begin() as conn:
            return _insert_failed_run(conn, source, started_at, finished_at, message)
    except SQLAlchemyError:
        log.warning("source %s: could not record the failed run either", source.name)
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
