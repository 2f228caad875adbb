"""The `alerts` table as an outbox: written with its cause, claimed by one dispatcher.

A sync inserts its alerts inside its own transaction, so an alert exists exactly when
its cause committed. Dispatchers (one per replica) claim one due alert at a time with
`FOR UPDATE SKIP LOCKED` and record the delivery in the same transaction, so two
replicas never deliver the same alert and a crash before the commit only means the
alert is delivered again (at least once), never lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from syncer.alerts import SourceHistory
from syncer.db.schema import alerts, sync_runs
from syncer.model import Outcome

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime

    from syncer.alerts import NewAlert

STATES = ("pending", "sent", "dead")


@dataclass(frozen=True, slots=True)
class StoredAlert:
    """An alert as the dispatcher and `syncer alerts list` see it."""

    id: int
    alert_key: str
    created_at: datetime
    kind: str
    source: str
    provider: str
    file_id: str | None
    sync_run_id: int | None
    payload: dict[str, Any]
    state: str
    attempts: int
    next_attempt_at: datetime
    sent_at: datetime | None
    last_error: str | None
    delivered_to: list[str]


_COLUMNS = [alerts.c[name] for name in StoredAlert.__dataclass_fields__]


def source_history(conn: sa.Connection, source: str) -> SourceHistory:
    """The source's failure and incomplete streaks and last complete outcome, before the
    current run.

    Each is read from the top of the source's runs in an index that holds every column
    it asks for (ix_sync_runs_source_id, ix_sync_runs_complete_source_id): a streak
    costs as much as it is long, never as much as the source's history.
    """
    last_not_failed = (
        sa.select(sync_runs.c.id)
        .where(sync_runs.c.source == source, sync_runs.c.outcome != Outcome.FAILED.value)
        .order_by(sync_runs.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    failures = sa.select(sa.func.count()).where(
        sync_runs.c.source == source,
        sync_runs.c.outcome == Outcome.FAILED.value,
        sync_runs.c.id > sa.func.coalesce(last_not_failed, 0),
    )
    last_complete = (
        sa.select(sync_runs.c.outcome)
        .where(
            sync_runs.c.source == source,
            sync_runs.c.outcome.in_([Outcome.OK.value, Outcome.HELD.value]),
        )
        .order_by(sync_runs.c.id.desc())
        .limit(1)
    )
    last_not_incomplete = (
        sa.select(sync_runs.c.id)
        .where(sync_runs.c.source == source, sync_runs.c.outcome != Outcome.INCOMPLETE.value)
        .order_by(sync_runs.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    incomplete = sa.select(sa.func.count()).where(
        sync_runs.c.source == source,
        sync_runs.c.outcome == Outcome.INCOMPLETE.value,
        sync_runs.c.id > sa.func.coalesce(last_not_incomplete, 0),
    )
    row = conn.execute(
        sa.select(
            failures.scalar_subquery(),
            last_complete.scalar_subquery(),
            incomplete.scalar_subquery(),
        )
    ).one()
    return SourceHistory(
        consecutive_failures=row[0],
        last_complete_outcome=Outcome(row[1]) if row[1] else None,
        consecutive_incomplete=row[2],
    )


def insert_alerts(
    conn: sa.Connection, new: Iterable[NewAlert], *, sync_run_id: int, now: datetime
) -> None:
    """Add alerts to the outbox; an alert whose key is already there is not repeated."""
    rows = [
        {
            "alert_key": alert.key,
            "created_at": now,
            "kind": alert.kind.value,
            "source": alert.source,
            "provider": alert.provider,
            "file_id": alert.file_id,
            "sync_run_id": sync_run_id,
            "payload": alert.payload,
            "next_attempt_at": now,
        }
        for alert in new
    ]
    if rows:
        conn.execute(insert(alerts).on_conflict_do_nothing(index_elements=["alert_key"]), rows)


def claim_next_due(conn: sa.Connection, now: datetime) -> StoredAlert | None:
    """Lock the oldest pending alert that is due and no other dispatcher holds."""
    row = conn.execute(
        sa.select(*_COLUMNS)
        .where(alerts.c.state == "pending", alerts.c.next_attempt_at <= now)
        .order_by(alerts.c.next_attempt_at, alerts.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).one_or_none()
    return StoredAlert(**row._asdict()) if row else None


def record_delivery(
    conn: sa.Connection,
    alert_id: int,
    *,
    state: str,
    attempts: int,
    delivered_to: list[str],
    next_attempt_at: datetime,
    sent_at: datetime | None,
    last_error: str | None,
) -> None:
    conn.execute(
        sa.update(alerts)
        .where(alerts.c.id == alert_id)
        .values(
            state=state,
            attempts=attempts,
            delivered_to=delivered_to,
            next_attempt_at=next_attempt_at,
            sent_at=sent_at,
            last_error=last_error,
        )
    )


def recent(conn: sa.Connection, *, limit: int, state: str | None = None) -> list[StoredAlert]:
    """The newest alerts first."""
    query = sa.select(*_COLUMNS).order_by(alerts.c.id.desc()).limit(limit)
    if state is not None:
        query = query.where(alerts.c.state == state)
    return [StoredAlert(**row._asdict()) for row in conn.execute(query)]


def count_by_state(conn: sa.Connection) -> dict[str, int]:
    """Alerts per state, every state present (zero when there are none)."""
    counts = dict.fromkeys(STATES, 0)
    rows = conn.execute(sa.select(alerts.c.state, sa.func.count()).group_by(alerts.c.state))
    counts.update(rows.all())
    return counts


def oldest_pending_created_at(conn: sa.Connection) -> datetime | None:
    oldest: datetime | None = conn.execute(
        sa.select(sa.func.min(alerts.c.created_at)).where(alerts.c.state == "pending")
    ).scalar_one()
    return oldest
