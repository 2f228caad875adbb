"""How long PostgreSQL itself takes to store what an initial load of N files writes.

    uv run python benchmarks/ingest_floor.py [--files 100000] [--repeat 3]
                                             [--database-url postgresql://...]

An initial load writes N `files` rows and N `appeared` events. This measures the
server's part alone: the rows of a real initial load (synced from the simulator into a
scratch database, as benchmarks/sync_bench.py does) are read back in COPY's binary
format, then written again with a COPY fed from memory in 1 MB chunks, so that next to
nothing is left for the client to do. Each COPY runs in a transaction that is rolled
back, against the schema as migrated and against variants without some of what each
row costs (a foreign key, a CHECK, secondary indexes), to show where the time goes.
The best of `--repeat` runs is printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

import psycopg
from sync_bench import ACCOUNT, API_KEY, bench_setup, run_sync

from syncer.config import SourceConfig
from syncer.redaction import Secret

if TYPE_CHECKING:
    from collections.abc import Sequence

CHUNK = 1 << 20
EVENT_COLUMNS = (
    "sync_run_id, occurred_at, source, provider, file_id, kind, old_status, new_status, changes"
)
FK = "ALTER TABLE file_events DROP CONSTRAINT fk_file_events_sync_run_id_sync_runs"
CHECK = "ALTER TABLE file_events DROP CONSTRAINT ck_file_events_kind"
REPORTING = (
    "DROP INDEX ix_file_events_occurred_at",
    "DROP INDEX ix_file_events_kind_occurred_at",
)
SECONDARY = (*REPORTING, "DROP INDEX ix_file_events_sync_run_id")
HISTORY = "DROP INDEX ix_file_events_source_file_id_id"
VARIANTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("files", "as migrated", ()),
    ("files", "without the partial status index", ("DROP INDEX ix_files_present_status_class",)),
    ("file_events", "as migrated", ()),
    ("file_events", "without the foreign key to sync_runs", (FK,)),
    ("file_events", "... and without the CHECK on kind", (FK, CHECK)),
    ("file_events", "... and without the two reporting indexes", (FK, CHECK, *REPORTING)),
    ("file_events", "... and without the sync_run_id index", (FK, CHECK, *SECONDARY)),
    (
        "file_events",
        "... and without the history index (PK only)",
        (FK, CHECK, *SECONDARY, HISTORY),
    ),
)


def export(conn: psycopg.Connection[Any], query: str) -> bytes:
    """The rows of `query` in COPY's binary format."""
    data = bytearray()
    with conn.cursor().copy(f"COPY ({query}) TO STDOUT (FORMAT BINARY)") as copy:
        for chunk in copy:
            data += chunk
    return bytes(data)


def timed_copy(
    conn: psycopg.Connection[Any], table: str, columns: str, data: bytes, ddl: Sequence[str]
) -> float:
    """Seconds to COPY `data` into `table` after `ddl`, all rolled back afterwards."""
    with conn.transaction(force_rollback=True):
        conn.execute("TRUNCATE file_events, files")
        for statement in ddl:
            conn.execute(statement)
        started = time.perf_counter()
        target = f"{table} ({columns})" if columns else table
        with conn.cursor().copy(f"COPY {target} FROM STDIN (FORMAT BINARY)") as copy:
            for offset in range(0, len(data), CHUNK):
                copy.write(data[offset : offset + CHUNK])
        return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", help="a server to create the scratch database on")
    args = parser.parse_args(argv)

    with bench_setup(args.database_url) as (engine, database_url, sim):
        source = SourceConfig(
            name=ACCOUNT,
            provider="moonshot",
            api_key=Secret(API_KEY),
            base_url=sim.load(args.files),
        )
        initial = run_sync(engine, source)
        with psycopg.connect(database_url, autocommit=True) as conn:
            files = export(conn, "SELECT * FROM files")
            events = export(conn, f"SELECT {EVENT_COLUMNS} FROM file_events ORDER BY id")
            print(
                f"{args.files} files: the initial load took {initial.seconds:.3f} s in all; "
                f"best of {args.repeat} server-side COPYs of what it wrote:"
            )
            totals: dict[str, float] = {}
            for table, variant, ddl in VARIANTS:
                data, columns = (files, "") if table == "files" else (events, EVENT_COLUMNS)
                best = min(timed_copy(conn, table, columns, data, ddl) for _ in range(args.repeat))
                totals.setdefault(table, best)
                print(f"  {table:<12} {variant:<50} {best:6.3f} s")
            print(f"  files + file_events as migrated: {sum(totals.values()):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
