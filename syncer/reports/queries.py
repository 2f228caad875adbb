"""One SELECT per report, built from the user's filters. Nothing here touches a database.

Every filter becomes a bound parameter of a Core statement; user input never becomes
SQL text. Rows come in a stable order: files by (source, file_id), events and runs
newest first, so `--limit 20` shows the latest twenty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from syncer.db.schema import file_events, files, sync_runs

if TYPE_CHECKING:
    from enum import StrEnum

    from syncer.model import EventKind, Outcome, StatusClass

_AGO = re.compile(r"(\d+)\s*([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}

# Every column of `files` but `raw` (the provider's whole object) and the internal
# `missing_count` and `listed_digest`: they stay in SQL, where `files` has them.
_FILE_COLUMNS = tuple(
    column.name
    for column in files.columns
    if column.name not in {"raw", "missing_count", "listed_digest"}
)
_EVENT_COLUMNS = (
    "id",
    "occurred_at",
    "source",
    "provider",
    "file_id",
    "kind",
    "old_status",
    "new_status",
    "changes",
    "sync_run_id",
)


@dataclass(frozen=True, slots=True)
class Filters:
    """What the user asked to see. An empty tuple does not restrict."""

    sources: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    status_classes: tuple[StatusClass, ...] = ()
    kinds: tuple[EventKind, ...] = ()
    outcomes: tuple[Outcome, ...] = ()
    file_ids: tuple[str, ...] = ()
    since: datetime | None = None
    include_deleted: bool = False
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """A statement, and which of its columns fit a table on a terminal.

    JSON and CSV carry every selected column, in the statement's order.
    """

    statement: sa.Select[Any]
    table_columns: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.statement.selected_columns.keys())


def files_report(filters: Filters) -> Report:
    """Present files (with `include_deleted`, gone ones too); `since` filters `changed_at`."""
    statement = sa.select(*(files.c[name] for name in _FILE_COLUMNS))
    statement = _where_source(statement, files, filters)
    if not filters.include_deleted:
        statement = statement.where(files.c.deleted_at.is_(None))
    if filters.status_classes:
        statement = statement.where(files.c.status_class.in_(_values(filters.status_classes)))
    if filters.since is not None:
        statement = statement.where(files.c.changed_at >= filters.since)
    shown: tuple[str, ...] = (
        "source",
        "file_id",
        "filename",
        "purpose",
        "bytes",
        "status",
        "status_class",
        "changed_at",
    )
    if filters.include_deleted:
        shown += ("deleted_at",)
    return _finish(statement.order_by(files.c.source, files.c.file_id), filters, shown)


def events_report(filters: Filters) -> Report:
    """File events, newest first; `since` filters `occurred_at`.

    `status_classes` keeps the events after which the file was in one of those classes
    (so never a `disappeared` event).
    """
    statement = sa.select(*(file_events.c[name] for name in _EVENT_COLUMNS))
    statement = _where_source(statement, file_events, filters)
    if filters.kinds:
        statement = statement.where(file_events.c.kind.in_(_values(filters.kinds)))
    if filters.file_ids:
        statement = statement.where(file_events.c.file_id.in_(filters.file_ids))
    if filters.status_classes:
        # Events that end a file's presence have no class after them (NULL).
        statement = statement.where(
            file_events.c.new_status_class.in_(_values(filters.status_classes))
        )
    if filters.since is not None:
        statement = statement.where(file_events.c.occurred_at >= filters.since)
    shown = ("id", "occurred_at", "source", "file_id", "kind", "old_status", "new_status")
    return _finish(statement.order_by(file_events.c.id.desc()), filters, shown)


def runs_report(filters: Filters) -> Report:
    """Sync runs, newest first; `since` filters `started_at`."""
    statement = _where_source(sa.select(sync_runs), sync_runs, filters)
    if filters.outcomes:
        statement = statement.where(sync_runs.c.outcome.in_(_values(filters.outcomes)))
    if filters.since is not None:
        statement = statement.where(sync_runs.c.started_at >= filters.since)
    shown = (
        "id",
        "started_at",
        "source",
        "outcome",
        "files_listed",
        "appeared",
        "status_changed",
        "changed",
        "disappeared",
        "expired",
        "reappeared",
        "error",
    )
    return _finish(statement.order_by(sync_runs.c.id.desc()), filters, shown)


def parse_since(text: str, *, now: datetime) -> datetime:
    """`--since`: a duration ago (`90s`, `30m`, `24h`, `7d`, `2w`) or an ISO 8601 time.

    An ISO time without a zone is UTC, like every time syncer shows.
    """
    text = text.strip()
    if match := _AGO.fullmatch(text):
        return now - timedelta(seconds=int(match.group(1)) * _SECONDS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"expected a duration like 30m, 24h, 7d or an ISO time like 2026-11-21T08:00Z,"
            f" got {text!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _where_source(statement: sa.Select[Any], table: sa.Table, filters: Filters) -> sa.Select[Any]:
    if filters.sources:
        statement = statement.where(table.c.source.in_(filters.sources))
    if filters.providers:
        statement = statement.where(table.c.provider.in_(filters.providers))
    return statement


def _values(members: tuple[StrEnum, ...]) -> list[str]:
    return [member.value for member in members]


def _finish(statement: sa.Select[Any], filters: Filters, shown: tuple[str, ...]) -> Report:
    if filters.limit is not None:
        statement = statement.limit(filters.limit)
    return Report(statement, shown)
