"""Retention: the run ledger, the alert outbox and (opt-in) old events stay bounded.

One pass (`prune`), run by `syncer prune` and periodically by `syncer run`:

1. **Runs** (`SYNCER_RUN_RETENTION`, 30 days): `ok` runs that changed nothing and
   raised no alert, started before the retention (counted from the start of that UTC
   day), are deleted, except each source's newest 100 ok runs (more when a file has
   been missing for more complete listings than that: `current_files.last_seen_at`
   counts back through them). Never a run of another outcome (the failure streak,
   `held` breakers and incomplete listings are all told by those), nor one that an
   event or an alert refers to. Each batch is rolled up into `sync_run_daily` by the
   statement that deletes it, so a run is counted there exactly when it is gone,
   whoever deleted it.
2. **Alerts** (`SYNCER_ALERT_RETENTION`, 90 days): `sent` alerts older than that,
   `dead` ones older than twice that; `pending` ones never.
3. **Events** (`SYNCER_EVENT_RETENTION`, off): files gone before the cutoff are
   deleted with all their events (every one of them older than the cutoff), and
   `pruned_history` remembers the cutoff so that `files_as_of()` refuses earlier
   times. Events of files still present, or gone since the cutoff, stay whole: a file's
   history is the fold of all its events, each holding only what changed.

Work goes in small batches, each its own short transaction, under an advisory lock
that keeps two replicas from pruning at once (the second finds it taken and does
nothing). The tables a pass changed are vacuumed and analyzed at its end, so neither
the lookups nor the planner's statistics wait for autovacuum.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

_PRUNE_LOCK = sa.text("SELECT pg_try_advisory_lock(hashtextextended('syncer.prune', 0))")
_PRUNE_UNLOCK = sa.text("SELECT pg_advisory_unlock(hashtextextended('syncer.prune', 0))")
# A sync writes a source's files only while it holds the source's lease, and keeps its
# `sources` row locked while it writes: a source that is leased, or whose row is locked,
# is being synced. Locking the idle row here keeps a new claim off it until this batch
# commits (claims skip locked rows).
_IDLE_SOURCE = sa.text("""
    SELECT lease_owner IS NULL OR lease_expires_at < now() AS idle
    FROM sources WHERE name = :source
    FOR UPDATE SKIP LOCKED
""")
_REGISTERED_SOURCE = sa.text("SELECT EXISTS (SELECT FROM sources WHERE name = :source)")

# Every source with runs, by a loose index scan: one probe of the index per source.
_SOURCES = sa.text("""
    WITH RECURSIVE sources (source) AS (
        SELECT min(source) FROM sync_runs
        UNION ALL
        SELECT (SELECT min(r.source) FROM sync_runs AS r WHERE r.source > s.source)
        FROM sources AS s WHERE s.source IS NOT NULL
    )
    SELECT source FROM sources WHERE source IS NOT NULL
""")

# The oldest of the ok runs that stay: the newest `keep`, and at least one more than
# any present file's missing count (its last_seen_at is that many complete runs back).
_KEEP_FROM = sa.text("""
    SELECT r.id
    FROM sync_runs AS r
    WHERE r.source = :source AND r.outcome = 'ok'
    ORDER BY r.id DESC
    OFFSET greatest(:keep, (SELECT coalesce(max(f.missing_count), 0) + 1
                            FROM files AS f
                            WHERE f.source = :source AND f.deleted_at IS NULL)) - 1
    LIMIT 1
""")

# One batch of one source: the oldest prunable runs, whole UTC days of them (the last
# day of a full batch waits for the next one, unless the batch is all one day), deleted
# and rolled up in one statement. Runs another pruner has locked are skipped, and one
# it deleted first is not returned by this DELETE: each run is rolled up once.
_PRUNE_RUNS = sa.text("""
    WITH candidates AS (
        SELECT r.id, (r.started_at AT TIME ZONE 'UTC')::date AS day
        FROM sync_runs AS r
        WHERE r.source = :source AND r.outcome = 'ok' AND r.id > :after AND r.id < :keep_from
          AND r.started_at < :cutoff
          AND r.appeared = 0 AND r.status_changed = 0 AND r.changed = 0
          AND r.disappeared = 0 AND r.expired = 0 AND r.reappeared = 0
          AND NOT EXISTS (SELECT FROM file_events AS e WHERE e.sync_run_id = r.id)
          AND NOT EXISTS (SELECT FROM alerts AS a WHERE a.sync_run_id = r.id)
        ORDER BY r.id
        LIMIT :batch
        FOR UPDATE OF r SKIP LOCKED
    ),
    bounds AS (
        SELECT min(day) AS first_day, max(day) AS last_day, count(*) AS n FROM candidates
    ),
    chosen AS (
        SELECT c.id
        FROM candidates AS c, bounds AS b
        WHERE b.n < :batch OR c.day < b.last_day OR b.first_day = b.last_day
    ),
    gone AS (
        DELETE FROM sync_runs AS r
        USING chosen
        WHERE r.id = chosen.id
        RETURNING r.source, r.provider, r.started_at, r.outcome, r.files_listed,
                  extract(epoch FROM r.finished_at - r.started_at)::float8 AS seconds
    ),
    rolled AS (
        INSERT INTO sync_run_daily AS d
            (source, day, provider, runs, ok, incomplete, held, failed,
             files_listed_min, files_listed_max, duration_p50, duration_p95, duration_max)
        SELECT source, (started_at AT TIME ZONE 'UTC')::date, min(provider), count(*),
               count(*) FILTER (WHERE outcome = 'ok'),
               count(*) FILTER (WHERE outcome = 'incomplete'),
               count(*) FILTER (WHERE outcome = 'held'),
               count(*) FILTER (WHERE outcome = 'failed'),
               min(files_listed), max(files_listed),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds),
               percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds),
               max(seconds)
        FROM gone
        GROUP BY 1, 2
        ON CONFLICT (source, day) DO UPDATE SET
            runs = d.runs + excluded.runs,
            ok = d.ok + excluded.ok,
            incomplete = d.incomplete + excluded.incomplete,
            held = d.held + excluded.held,
            failed = d.failed + excluded.failed,
            files_listed_min = least(d.files_listed_min, excluded.files_listed_min),
            files_listed_max = greatest(d.files_listed_max, excluded.files_listed_max),
            duration_p50 = (d.duration_p50 * d.runs + excluded.duration_p50 * excluded.runs)
                           / (d.runs + excluded.runs),
            duration_p95 = (d.duration_p95 * d.runs + excluded.duration_p95 * excluded.runs)
                           / (d.runs + excluded.runs),
            duration_max = greatest(d.duration_max, excluded.duration_max)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM candidates) AS candidates,
           (SELECT max(id) FROM chosen) AS last_id,
           (SELECT count(*) FROM gone) AS removed,
           (SELECT count(*) FROM rolled) AS days
""")

_PRUNE_ALERTS = sa.text("""
    DELETE FROM alerts
    WHERE id IN (
        SELECT id FROM alerts
        WHERE (state = 'sent' AND coalesce(sent_at, created_at) < :sent_cutoff)
           OR (state = 'dead' AND created_at < :dead_cutoff)
        ORDER BY id
        LIMIT :batch
    )
""")

_GONE_SOURCES = sa.text("""
    SELECT DISTINCT source FROM files WHERE deleted_at IS NOT NULL AND deleted_at < :cutoff
""")

# Files of one source gone before the cutoff, with their events: all of them older.
_PRUNE_EVENTS = sa.text("""
    WITH gone_files AS (
        SELECT f.source, f.file_id
        FROM files AS f
        WHERE f.deleted_at IS NOT NULL AND f.deleted_at < :cutoff AND f.source = :source
        LIMIT :batch
    ),
    events AS (
        DELETE FROM file_events AS e
        USING gone_files AS g
        WHERE e.source = g.source AND e.file_id = g.file_id
        RETURNING 1
    ),
    removed AS (
        DELETE FROM files AS f
        USING gone_files AS g
        WHERE f.source = g.source AND f.file_id = g.file_id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM removed) AS files, (SELECT count(*) FROM events) AS events
""")

_MARK_PRUNED = sa.text("""
    INSERT INTO pruned_history (relation, pruned_before, pruned_at)
    VALUES ('file_events', :cutoff, :now)
    ON CONFLICT (relation) DO UPDATE SET
        pruned_before = greatest(pruned_history.pruned_before, excluded.pruned_before),
        pruned_at = excluded.pruned_at
""")


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long history is kept; None keeps it forever.

    runs:   `ok` runs that changed nothing (SYNCER_RUN_RETENTION)
    alerts: `sent` alerts; `dead` ones twice as long (SYNCER_ALERT_RETENTION)
    events: events of files gone before then, with their rows (SYNCER_EVENT_RETENTION)
    """

    runs: timedelta | None = timedelta(days=30)
    alerts: timedelta | None = timedelta(days=90)
    events: timedelta | None = None
    keep_ok_runs: int = 100
    batch: int = 5000


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What one pass did. `ran` is False when another process was pruning already."""

    ran: bool = True
    runs_removed: int = 0
    days_rolled_up: int = 0
    alerts_removed: int = 0
    files_removed: int = 0
    events_removed: int = 0

    def summary(self) -> str:
        if not self.ran:
            return "another process is pruning right now; nothing done"
        return (
            f"rolled up {self.runs_removed} runs into {self.days_rolled_up} source-days of "
            f"sync_run_daily and removed them; removed {self.alerts_removed} alerts, "
            f"{self.files_removed} gone files and {self.events_removed} events"
        )


def prune(
    engine: sa.Engine,
    policy: RetentionPolicy,
    *,
    now: datetime | None = None,
    batch_done: Callable[[], None] = lambda: None,
) -> PruneReport:
    """One retention pass over every source; see the module docstring.

    `batch_done` is called after each committed batch (tests interleave with it).
    """
    now = now or datetime.now(UTC)
    with engine.connect() as conn:
        got_lock = conn.execute(_PRUNE_LOCK).scalar_one()
        conn.commit()
        if not got_lock:
            return PruneReport(ran=False)
        try:
            runs, days = (0, 0)
            if policy.runs is not None:
                runs, days = prune_runs(
                    conn, policy, cutoff=_day_start(now - policy.runs), batch_done=batch_done
                )
            alerts = 0
            if policy.alerts is not None:
                alerts = _prune_alerts(conn, policy, now=now, batch_done=batch_done)
            files, events = (0, 0)
            if policy.events is not None:
                files, events = _prune_events(
                    conn, policy, cutoff=now - policy.events, now=now, batch_done=batch_done
                )
            _vacuum(
                conn,
                [
                    *(["sync_runs", "sync_run_daily"] if runs else []),
                    *(["alerts"] if alerts else []),
                ],
            )
            _analyze(conn, ["files", "file_events"] if files else [])
        finally:
            conn.rollback()
            conn.execute(_PRUNE_UNLOCK)
            conn.commit()
    report = PruneReport(
        ran=True,
        runs_removed=runs,
        days_rolled_up=days,
        alerts_removed=alerts,
        files_removed=files,
        events_removed=events,
    )
    log.info("prune: %s", report.summary())
    return report


def prune_runs(
    conn: sa.Connection,
    policy: RetentionPolicy,
    *,
    cutoff: datetime,
    batch_done: Callable[[], None] = lambda: None,
) -> tuple[int, int]:
    """Prune the run ledger before `cutoff`; returns (runs removed, source-days touched).

    Safe without the pass's lock too: each run is deleted and rolled up by one
    statement, so two callers at once each roll up only the runs they deleted.
    """
    removed = days = 0
    with conn.begin():
        sources = list(conn.execute(_SOURCES).scalars())
    for source in sources:
        with conn.begin():
            keep_from = conn.execute(
                _KEEP_FROM, {"source": source, "keep": policy.keep_ok_runs}
            ).scalar_one_or_none()
        if keep_from is None:
            continue  # not even `keep` ok runs: all of them stay
        after = 0  # each batch starts after the last one's runs, not at their dead rows
        while True:
            with conn.begin():
                batch = conn.execute(
                    _PRUNE_RUNS,
                    {
                        "source": source,
                        "after": after,
                        "keep_from": keep_from,
                        "cutoff": cutoff,
                        "batch": policy.batch,
                    },
                ).one()
            removed += batch.removed
            days += batch.days
            batch_done()
            if batch.candidates < policy.batch or batch.last_id is None:
                break
            after = batch.last_id
    return removed, days


def _prune_alerts(
    conn: sa.Connection, policy: RetentionPolicy, *, now: datetime, batch_done: Callable[[], None]
) -> int:
    assert policy.alerts is not None
    removed = 0
    while True:
        with conn.begin():
            count = conn.execute(
                _PRUNE_ALERTS,
                {
                    "sent_cutoff": now - policy.alerts,
                    "dead_cutoff": now - 2 * policy.alerts,
                    "batch": policy.batch,
                },
            ).rowcount
        removed += count
        batch_done()
        if count < policy.batch:
            return removed


def _prune_events(
    conn: sa.Connection,
    policy: RetentionPolicy,
    *,
    cutoff: datetime,
    now: datetime,
    batch_done: Callable[[], None],
) -> tuple[int, int]:
    # Marked first: from now on files_as_of() refuses what is about to become partial.
    with conn.begin():
        conn.execute(_MARK_PRUNED, {"cutoff": cutoff, "now": now})
        sources = list(conn.execute(_GONE_SOURCES, {"cutoff": cutoff}).scalars())
    files = events = 0
    for source in sources:
        while True:
            with conn.begin():
                # A sync of this source could bring one of these files back while
                # they are deleted: skip the source (until the next pass) if it runs.
                if not _source_idle(conn, source):
                    log.info("prune: source %s is syncing; its events wait", source)
                    break
                batch = conn.execute(
                    _PRUNE_EVENTS, {"source": source, "cutoff": cutoff, "batch": policy.batch}
                ).one()
            files += batch.files
            events += batch.events
            batch_done()
            if batch.files < policy.batch:
                break
    return files, events


def _source_idle(conn: sa.Connection, source: str) -> bool:
    """No sync of `source` runs now, and none can start until this transaction ends."""
    row = conn.execute(_IDLE_SOURCE, {"source": source}).first()
    if row is not None:
        return bool(row.idle)
    # Its row is locked by a sync's write, or it has none: then nothing can sync it.
    return not conn.execute(_REGISTERED_SOURCE, {"source": source}).scalar_one()


def _analyze(conn: sa.Connection, tables: Iterable[str]) -> None:
    """Fresh planner statistics for what a pass changed (names are ours, never input)."""
    names = ", ".join(tables)
    if names:
        with conn.begin():
            conn.execute(sa.text(f"ANALYZE {names}"))


def _vacuum(conn: sa.Connection, tables: Iterable[str]) -> None:
    """VACUUM (ANALYZE) what a pass pruned (names are ours, never input).

    Right after a large prune the indexes still point at the deleted rows, and lookups
    read through them until they are vacuumed: do it now, not when autovacuum gets
    there. VACUUM runs outside a transaction and takes as long as it needs.
    """
    names = ", ".join(tables)
    if names:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            conn.execute(sa.text("SET statement_timeout = 0"))
            conn.execute(sa.text(f"VACUUM (ANALYZE) {names}"))
        finally:
            if not conn.invalidated:
                conn.execute(sa.text("RESET statement_timeout"))
            conn.rollback()  # ends SQLAlchemy's bookkeeping of the autocommit "transaction"
            conn.execution_options(isolation_level="READ COMMITTED")


def analyze_after_bulk_load(conn: sa.Connection) -> None:
    """After a source's initial load: plans must not wait for autovacuum's statistics."""
    _analyze(conn, ["files", "file_events"])


def _day_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)
