"""Reading the stored state of a source and applying a plan to it.

Every function takes an open connection and runs inside the caller's transaction; the
caller decides what commits together. The bulk work (reading a source's files, writing
rows and events) goes through psycopg directly, on the same connection and so in the
same transaction: COPY, and one set-based statement per kind of change, whatever the
number of files (docs/performance.md).
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Final

import orjson
import psycopg
import sqlalchemy as sa
from psycopg import sql
from psycopg.types.string import BytesBinaryDumper
from sqlalchemy.dialects.postgresql import JSONB

from syncer.bulk import gc_paused
from syncer.db.schema import file_events, files, sync_runs
from syncer.diff import StoredFile, StoredState
from syncer.model import EventKind, Outcome

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from datetime import datetime

    from syncer.diff import Plan
    from syncer.model import ListedFile, Listing

# Columns an upsert never overwrites: the key, and when the file was first seen.
_SET_ONCE_COLUMNS = frozenset({"source", "file_id", "provider", "first_seen_at"})


def _names(columns: Iterable[sa.Column[Any]], table: str | None = None) -> sql.Composed:
    """`a, b` or `table.a, table.b`, quoted."""
    if table is None:
        return sql.SQL(", ").join(sql.Identifier(column.name) for column in columns)
    return sql.SQL(", ").join(sql.Identifier(table, column.name) for column in columns)


# The columns the diff compares (StoredFile), in its field order.
_STORED_COLUMNS: Final = _names(files.c[field.name] for field in fields(StoredFile))
_LOAD_STATE: Final = sql.SQL("SELECT {columns} FROM files WHERE source = %s").format(
    columns=_STORED_COLUMNS
)
# One primary-key lookup per id, whatever the planner thinks of the table (right after
# a bulk load it has no statistics and would read the whole source): LIMIT keeps the
# lateral subquery from being flattened into a join it could plan otherwise.
_LOAD_STATE_OF: Final = sql.SQL(
    "SELECT stored.* FROM unnest(%s::text[]) AS wanted (id) CROSS JOIN LATERAL"
    " (SELECT {columns} FROM files WHERE source = %s AND file_id = wanted.id LIMIT 1) AS stored"
).format(columns=_STORED_COLUMNS)
# Among many ids, most of them new: a join, which the planner can make a hash join
# over the source's gone rows (none at all in an initial load), not one lookup per id.
_LOAD_GONE_AMONG: Final = sql.SQL(
    "SELECT {columns} FROM unnest(%s::text[]) AS listed (id)"
    " JOIN files ON files.file_id = listed.id"
    " WHERE files.source = %s AND files.deleted_at IS NOT NULL"
).format(columns=_STORED_COLUMNS)
# The order of the rows that _file_rows and apply_plan build for COPY.
_FILE_COLUMNS: Final = tuple(
    files.c[name]
    for name in (
        "source",
        "file_id",
        "provider",
        "filename",
        "purpose",
        "bytes",
        "line_count",
        "status",
        "status_details",
        "status_class",
        "created_at",
        "first_seen_at",
        "changed_at",
        "deleted_at",
        "raw",
        "missing_count",
        "listed_digest",
        "expires_at",
    )
)
_EVENT_COLUMNS: Final = tuple(
    file_events.c[name]
    for name in (
        "sync_run_id",
        "occurred_at",
        "source",
        "provider",
        "file_id",
        "kind",
        "old_status",
        "new_status",
        "changes",
        "new_status_class",
    )
)
# The binary COPY format carries no type names: each column's must be given.
# jsonb goes as bytea: the binary COPY format carries no type, only each field's
# bytes, and those of a jsonb field are a version byte and the JSON text (_jsonb).
# Dumped as bytes by psycopg's C code rather than by its Python JSON dumper.
_COPY_TYPES: Final[dict[type[sa.types.TypeEngine[Any]], str]] = {
    sa.Text: "text",
    sa.BigInteger: "int8",
    sa.Integer: "int4",
    sa.DateTime: "timestamptz",
    sa.LargeBinary: "bytea",
    JSONB: "bytea",
}
_JSONB_VERSION: Final = b"\x01"
_LISTED_FILES = "syncer_listed_files"


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


@dataclass(frozen=True, slots=True)
class KnownFiles:
    """The present files of a source, in brief: enough to tell which items are unchanged.

    digests: digest of the listed item (items.item_digest) -> file id
    present: file id -> missing count
    """

    digests: dict[bytes, str]
    present: dict[str, int]


def load_known(conn: sa.Connection, source: str) -> KnownFiles:
    """Read KnownFiles of `source`: two small columns of its present rows."""
    with _driver_cursor(conn, binary=True) as cursor, gc_paused():
        digests = dict(
            cursor.execute(
                "SELECT listed_digest, file_id FROM files"
                " WHERE source = %s AND deleted_at IS NULL AND listed_digest IS NOT NULL",
                (source,),
            ).fetchall()
        )
        present = dict.fromkeys(digests.values(), 0)
        # The few others: rows written before digests, and files missed lately.
        present.update(
            cursor.execute(
                "SELECT file_id, missing_count FROM files WHERE source = %s"
                " AND deleted_at IS NULL AND (listed_digest IS NULL OR missing_count > 0)",
                (source,),
            ).fetchall()
        )
        return KnownFiles(digests, present)


def load_stored_state(
    conn: sa.Connection, source: str, listing: Listing, known: KnownFiles
) -> StoredState:
    """What plan_sync needs to compare `listing` with: whole rows only where it may matter.

    That is the rows of the present files the listing did not list unchanged (changed,
    or left out), and of the gone files it lists again; never those of the unchanged
    ones, a re-sync's usual bulk.
    """
    unchanged = set(listing.unchanged)
    present = known.present
    wanted = [file_id for file_id in present if file_id not in unchanged]
    others = [file.file_id for file in listing.files if file.file_id not in present]
    files = load_state(conn, source, wanted) if wanted else {}
    # New, or back: back only if the source has gone files at all (an initial load
    # lists 100,000 new ones, and looking for each would take a good part of it).
    if others and _has_gone_files(conn, source):
        files.update(_load(conn, _LOAD_GONE_AMONG, (others, source)))
    return StoredState(present, files)


def _has_gone_files(conn: sa.Connection, source: str) -> bool:
    with _driver_cursor(conn) as cursor:
        [(found,)] = cursor.execute(
            "SELECT EXISTS (SELECT FROM files WHERE source = %s AND deleted_at IS NOT NULL)",
            (source,),
        ).fetchall()
        return bool(found)


def load_state(
    conn: sa.Connection, source: str, file_ids: Iterable[str] | None = None
) -> dict[str, StoredFile]:
    """The compared columns of every file of `source`, present or gone, or of `file_ids`."""
    if file_ids is None:
        return _load(conn, _LOAD_STATE, (source,))
    return _load(conn, _LOAD_STATE_OF, (list(file_ids), source))


def _load(
    conn: sa.Connection, statement: sql.Composed, params: Sequence[object]
) -> dict[str, StoredFile]:
    # Straight from the driver: building SQLAlchemy rows and dicts for 100,000 files
    # took longer than reading them. In UTC, for this statement only: the driver gives
    # times the session's time zone, and both converting to a zone such as Etc/UTC and
    # comparing the result with the UTC times of a listing take several times longer.
    with _driver_cursor(conn) as cursor, gc_paused():
        [(zone,)] = cursor.execute("SHOW TimeZone").fetchall()
        cursor.execute("SELECT set_config('TimeZone', 'UTC', true)")
        # A new cursor: psycopg fixes the time zone of a cursor's results when it first
        # meets a timestamptz.
        with cursor.connection.cursor() as reader:
            rows = reader.execute(statement, params).fetchall()
        cursor.execute("SELECT set_config('TimeZone', %s, true)", (zone,))
        return {row[0]: StoredFile(*row) for row in rows}


def apply_plan(conn: sa.Connection, plan: Plan, run: RunRecord, *, observed_at: datetime) -> int:
    """Write the run record, the file rows and the events of a plan; returns the run id.

    Set-based, whatever the size of the plan: rows and events go in by COPY, and each
    other change is one statement. Only the rows the plan names are written.
    """
    run_id = insert_run(conn, run, plan)
    with _driver_cursor(conn) as cursor, gc_paused():
        if plan.upserts:
            appeared = {e.file_id for e in plan.events if e.kind is EventKind.APPEARED}
            new = [file for file in plan.upserts if file.file_id in appeared]
            known = [file for file in plan.upserts if file.file_id not in appeared]
            if new:
                # Not in the stored state read in this transaction, under the source's
                # lease: a plain insert. Should one exist after all, the COPY fails and
                # the whole sync rolls back.
                _copy(cursor, files.name, _FILE_COLUMNS, _file_rows(run, new, observed_at))
            if known:
                _upsert_known_files(cursor, _file_rows(run, known, observed_at))
        if plan.missing_counts:
            file_ids, counts = zip(*plan.missing_counts, strict=True)
            cursor.execute(
                """
                UPDATE files SET missing_count = seen.missing_count
                FROM unnest(%s::text[], %s::integer[]) AS seen (file_id, missing_count)
                WHERE files.source = %s AND files.file_id = seen.file_id
                """,
                (list(file_ids), list(counts), run.source),
            )
        if plan.disappearances:
            cursor.execute(
                """
                UPDATE files SET deleted_at = %s, changed_at = %s, missing_count = 0
                WHERE source = %s AND file_id = ANY(%s::text[])
                """,
                (observed_at, observed_at, run.source, list(plan.disappearances)),
            )
        if plan.events:
            _copy(
                cursor,
                file_events.name,
                _EVENT_COLUMNS,
                (
                    (
                        run_id,
                        observed_at,
                        run.source,
                        run.provider,
                        event.file_id,
                        event.kind,  # a StrEnum, like status_class
                        event.old_status,
                        event.new_status,
                        _jsonb(event.changes),
                        event.status_class,
                    )
                    for event in plan.events
                ),
            )
    return run_id


def finish_run(conn: sa.Connection, run_id: int, finished_at: datetime) -> None:
    """Stamp the end of a run whose row was written before its writes were done."""
    conn.execute(
        sa.update(sync_runs).where(sync_runs.c.id == run_id).values(finished_at=finished_at)
    )


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


def _file_rows(
    run: RunRecord, listed: Iterable[ListedFile], observed_at: datetime
) -> Iterator[tuple[object, ...]]:
    """`files` rows in _FILE_COLUMNS order, as listed, first seen and changed now.

    One at a time, straight into COPY: 100,000 rows at once would hold 40 MB.
    """
    source, provider = run.source, run.provider
    for file in listed:
        yield (
            source,
            file.file_id,
            provider,
            file.filename,
            file.purpose,
            file.bytes,
            file.line_count,
            file.status,
            file.status_details,
            file.status_class,  # a StrEnum: dumped as the str it is, without .value
            file.created_at,
            observed_at,  # first_seen_at, kept by an update
            observed_at,  # changed_at
            None,  # deleted_at
            _jsonb(file.raw),
            0,  # missing_count
            file.digest,
            file.expires_at,
        )


def _upsert_known_files(cursor: psycopg.Cursor[Any], rows: Iterable[tuple[object, ...]]) -> None:
    """Overwrite stored files with listed rows: COPY to a scratch table, one statement.

    INSERT ... ON CONFLICT rather than UPDATE, so that a row is written whatever
    happened to it meanwhile. The WHERE clause is a second line of defence behind the
    diff: a row equal to the stored one is not rewritten (no dead tuple, no WAL).
    """
    cursor.execute(
        sql.SQL("CREATE TEMPORARY TABLE {} (LIKE files) ON COMMIT DROP").format(
            sql.Identifier(_LISTED_FILES)
        )
    )
    _copy(cursor, _LISTED_FILES, _FILE_COLUMNS, rows)
    updated = [column for column in _FILE_COLUMNS if column.name not in _SET_ONCE_COLUMNS]
    compared = [column for column in updated if column is not files.c.changed_at]
    cursor.execute(
        sql.SQL(
            """
            INSERT INTO files ({columns}) SELECT {columns} FROM {listed_files}
            ON CONFLICT (source, file_id) DO UPDATE SET ({updated}) = ROW({excluded})
            WHERE ({stored}) IS DISTINCT FROM ({listed})
            """
        ).format(
            columns=_names(_FILE_COLUMNS),
            listed_files=sql.Identifier(_LISTED_FILES),
            updated=_names(updated),
            excluded=_names(updated, "excluded"),
            stored=_names(compared, "files"),
            listed=_names(compared, "excluded"),
        )
    )


def _copy(
    cursor: psycopg.Cursor[Any],
    table: str,
    columns: Sequence[sa.Column[Any]],
    rows: Iterable[tuple[object, ...]],
) -> None:
    """COPY `rows` into `table`, in the binary format: nothing for the server to parse."""
    statement = sql.SQL("COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)").format(
        table=sql.Identifier(table), columns=_names(columns)
    )
    # psycopg's DB-API module maps bytea to its Python dumper for `Binary`; the C one
    # for bytes is several times faster.
    cursor.adapters.register_dumper(bytes, BytesBinaryDumper)
    with cursor.copy(statement) as copy:
        copy.set_types([_COPY_TYPES[type(column.type)] for column in columns])
        for row in rows:
            copy.write_row(row)


def _jsonb(value: object) -> bytes:
    """A jsonb field of a binary COPY: orjson, or the standard library where it cannot."""
    try:
        return _JSONB_VERSION + orjson.dumps(value)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, in an untracked field
        # The standard library would write a number beyond a float (1e400, parsed as
        # inf) as `Infinity`, which jsonb refuses; orjson writes null, and so do we.
        return _JSONB_VERSION + json.dumps(_finite(value), ensure_ascii=False).encode()


def _finite(value: object) -> object:
    """`value` with every infinite or NaN float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


@contextmanager
def _driver_cursor(conn: sa.Connection, *, binary: bool = False) -> Iterator[psycopg.Cursor[Any]]:
    """A psycopg cursor on `conn`'s own connection: the same session and transaction.

    psycopg's errors come out as SQLAlchemy's, like those of every other statement of
    a sync, so that callers handle one kind of error.
    """
    driver = conn.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise TypeError(f"syncer needs the psycopg driver, not {type(driver).__name__}")
    try:
        with driver.cursor(binary=binary) as cursor:
            yield cursor
    except psycopg.Error as error:
        raise sa.exc.DBAPIError.instance(
            None, None, error, psycopg.Error, hide_parameters=True
        ) from error
