"""Reading the stored state of a source and applying a plan to it.

Every function takes an open connection and runs inside the caller's transaction; the
caller decides what commits together.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import OperationalError

from syncer.db.schema import file_events, files, sync_runs
from syncer.diff import StoredFile
from syncer.errors import SourceBusyError
from syncer.model import EventKind, Outcome

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime

    from syncer.diff import Plan
    from syncer.model import ListedFile

_LOCK_KEY = sa.func.hashtextextended(sa.literal("syncer.source:") + sa.bindparam("source"), 0)
_LOCK_NOT_AVAILABLE = "55P03"
# Columns an upsert never overwrites: the key, and when the file was first seen.
_SET_ONCE_COLUMNS = frozenset({"source", "file_id", "provider", "first_seen_at"})


@dataclass(frozen=True, slots=True)
class RunRecord:
    """The `sync_runs` row of one sync, minus what the plan contributes."""

    source: str
    provider: str
    started_at: datetime
    finished_at: datetime
    outcome: Outcome
    files_listed: int = 0
    items_skipped: int = 0
    error: str | None = None


@contextmanager
def source_lock(conn: sa.Connection, source: str) -> Iterator[None]:
    """Hold the source's advisory lock: one sync of a source at a time, across replicas.

    A session lock rather than a transaction lock, because it must also cover the
    listing fetch that happens before the write transaction: two processes that
    fetched in parallel could otherwise apply an older listing over a newer one. The
    wait is bounded by the connection's `lock_timeout`.
    """
    try:
        conn.execute(sa.select(sa.func.pg_advisory_lock(_LOCK_KEY)), {"source": source})
    except OperationalError as error:
        if getattr(error.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            conn.rollback()
            raise SourceBusyError(
                f"source {source!r}: another sync of this source is still running"
            ) from None
        raise
    conn.commit()
    try:
        yield
    finally:
        if not conn.closed and not conn.invalidated:
            conn.rollback()
            conn.execute(sa.select(sa.func.pg_advisory_unlock(_LOCK_KEY)), {"source": source})
            conn.commit()


def load_state(conn: sa.Connection, source: str) -> dict[str, StoredFile]:
    """The compared columns of every file of `source`, present or gone."""
    columns = [files.c[field.name] for field in fields(StoredFile)]
    rows = conn.execute(sa.select(*columns).where(files.c.source == source))
    return {row.file_id: StoredFile(**row._asdict()) for row in rows}


def apply_plan(conn: sa.Connection, plan: Plan, run: RunRecord, *, observed_at: datetime) -> int:
    """Write the run record, the file rows and the events of a plan; returns the run id."""
    run_id = insert_run(conn, run, plan)
    if plan.upserts:
        _upsert_files(conn, run, plan.upserts, observed_at)
    if plan.missing_counts:
        conn.execute(
            sa.update(files)
            .where(files.c.source == run.source, files.c.file_id == sa.bindparam("id"))
            .values(missing_count=sa.bindparam("count")),
            [{"id": file_id, "count": count} for file_id, count in plan.missing_counts],
        )
    if plan.disappearances:
        conn.execute(
            sa.update(files)
            .where(files.c.source == run.source, files.c.file_id.in_(plan.disappearances))
            .values(deleted_at=observed_at, changed_at=observed_at, missing_count=0)
        )
    if plan.events:
        conn.execute(
            sa.insert(file_events),
            [
                {
                    "sync_run_id": run_id,
                    "occurred_at": observed_at,
                    "source": run.source,
                    "provider": run.provider,
                    "file_id": event.file_id,
                    "kind": event.kind.value,
                    "old_status": event.old_status,
                    "new_status": event.new_status,
                    "changes": event.changes,
                }
                for event in plan.events
            ],
        )
    return run_id


def insert_run(conn: sa.Connection, run: RunRecord, plan: Plan | None = None) -> int:
    """Insert the `sync_runs` row; a run without a plan (a failed one) counts nothing."""
    counts: dict[str, Any] = {}
    if plan is not None:
        counts = {kind.value: plan.count(kind) for kind in EventKind}
        counts["disappearances_held"] = plan.disappearances_held
    run_id: int = conn.execute(
        sa.insert(sync_runs)
        .values(
            source=run.source,
            provider=run.provider,
            started_at=run.started_at,
            finished_at=run.finished_at,
            outcome=run.outcome.value,
            files_listed=run.files_listed,
            items_skipped=run.items_skipped,
            error=run.error,
            **counts,
        )
        .returning(sync_runs.c.id)
    ).scalar_one()
    return run_id


def _upsert_files(
    conn: sa.Connection, run: RunRecord, listed: tuple[ListedFile, ...], observed_at: datetime
) -> None:
    statement = insert(files)
    updated = {
        column.name: statement.excluded[column.name]
        for column in files.columns
        if column.name not in _SET_ONCE_COLUMNS
    }
    conn.execute(
        statement.on_conflict_do_update(index_elements=["source", "file_id"], set_=updated),
        [
            {
                "source": run.source,
                "file_id": file.file_id,
                "provider": run.provider,
                "filename": file.filename,
                "purpose": file.purpose,
                "bytes": file.bytes,
                "line_count": file.line_count,
                "status": file.status,
                "status_details": file.status_details,
                "status_class": file.status_class.value,
                "created_at": file.created_at,
                "first_seen_at": observed_at,
                "changed_at": observed_at,
                "deleted_at": None,
                "raw": file.raw,
                "missing_count": 0,
            }
            for file in listed
        ],
    )
