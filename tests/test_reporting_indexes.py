"""The hot reporting queries use their indexes on a realistically sized database.

100,000 files (a third of them gone, a few hundred failed), 20,000 runs and 200,000
events over a year across ten sources, with kinds as skewed as in life (a file comes
back rarely): the planner picks an index only when it pays off, so a plan that uses
one here uses it in production too.

The rows are loaded at revision 0002 with the secondary indexes dropped and rebuilt
afterwards, then migration 0003 builds its indexes on the full tables, as it would on
an existing installation: several times faster than inserting into indexed tables.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from test_reporting_docs import QUERIES

from syncer.db.engine import create_db_engine
from syncer.db.migrate import alembic_config, upgrade_to_head
from syncer.model import EventKind, StatusClass
from syncer.redaction import Secret
from syncer.reports import Filters, events_report, files_report, runs_report

FILL = """
INSERT INTO sync_runs (source, provider, started_at, finished_at, outcome)
SELECT 'src' || (n % 10), 'moonshot', now() - n * interval '26 minutes',
       now() - n * interval '26 minutes' + interval '2 seconds',
       CASE WHEN n % 40 = 0 THEN 'failed' ELSE 'ok' END
FROM generate_series(1, 20000) AS n;

INSERT INTO files (source, file_id, provider, filename, purpose, bytes, status,
                   status_class, created_at, first_seen_at, changed_at, deleted_at, raw)
SELECT 'src' || (n % 10), 'f' || n, 'moonshot', 'file-' || n || '.pdf', 'file-extract',
       n * 100,
       CASE WHEN n % 300 = 0 THEN 'error' WHEN n % 50 = 0 THEN 'processing' ELSE 'ok' END,
       CASE WHEN n % 300 = 0 THEN 'failed' WHEN n % 50 = 0 THEN 'pending' ELSE 'ready' END,
       now() - n * interval '5 minutes', now() - n * interval '5 minutes',
       now() - n * interval '5 minutes',
       CASE WHEN n % 3 = 0 THEN now() - n * interval '1 minute' END,
       '{}'
FROM generate_series(1, 100000) AS n;

INSERT INTO file_events (sync_run_id, occurred_at, source, provider, file_id, kind,
                         old_status, new_status)
SELECT n % 20000 + 1, now() - n * interval '157 seconds', 'src' || (n % 10), 'moonshot',
       'f' || (n % 100000 + 1),
       CASE WHEN n % 200 = 0 THEN 'reappeared'
            WHEN n % 200 < 40 THEN 'disappeared'
            WHEN n % 200 < 50 THEN 'changed'
            WHEN n % 200 < 120 THEN 'status_changed'
            ELSE 'appeared' END,
       'processing', 'ok'
FROM generate_series(1, 200000) AS n;
"""


SECONDARY_INDEXES = sa.text(
    "SELECT indexname, indexdef FROM pg_indexes"
    " WHERE schemaname = 'public' AND indexname LIKE 'ix\\_%'"
)


@pytest.fixture(scope="module")
def big(databases):
    engine = create_db_engine(Secret(databases.create()), lock_timeout=5)
    config = alembic_config()
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0002")
    with engine.begin() as conn:
        indexes = conn.execute(SECONDARY_INDEXES).all()
        for name, _ in indexes:
            conn.execute(sa.text(f'DROP INDEX "{name}"'))
        for statement in FILL.split(";"):
            if statement.strip():
                conn.execute(sa.text(statement))
        for _, definition in indexes:
            conn.execute(sa.text(definition))
    upgrade_to_head(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE"))
    yield engine
    engine.dispose()


def used_indexes(engine: sa.Engine, statement: sa.Select[Any] | str) -> set[str]:
    """The indexes in the plan PostgreSQL chooses for `statement`."""
    with engine.connect() as conn:
        if isinstance(statement, str):
            sql, params = statement, {}
        else:
            compiled = statement.compile(conn, compile_kwargs={"render_postcompile": True})
            sql, params = str(compiled), compiled.params
        (plan,) = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}", params).scalar_one()
    found: set[str] = set()
    pending = [plan["Plan"]]
    while pending:
        node = pending.pop()
        if "Index Name" in node:
            found.add(node["Index Name"])
        pending.extend(node.get("Plans", []))
    return found


def documented(heading: str) -> str:
    (sql,) = [sql for title, sql in QUERIES if title == heading]
    return sql


DAY_AGO = datetime.now(UTC) - timedelta(hours=24)
MONTHS = timedelta(days=89)


@pytest.mark.parametrize(
    ("query", "index"),
    [
        pytest.param(
            events_report(Filters(since=DAY_AGO)).statement,
            "ix_file_events_occurred_at",
            id="syncer events --since 24h",
        ),
        pytest.param(
            runs_report(Filters(since=DAY_AGO)).statement,
            "ix_sync_runs_started_at",
            id="syncer runs --since 24h",
        ),
        pytest.param(
            files_report(Filters(status_classes=(StatusClass.FAILED,))).statement,
            "ix_files_present_status_class",
            id="syncer files --status-class failed",
        ),
        pytest.param(
            documented("Failed files per source, right now"),
            "ix_files_present_status_class",
            id="failed_files",
        ),
        pytest.param(
            events_report(Filters(kinds=(EventKind.REAPPEARED,))).statement,
            "ix_file_events_kind_occurred_at",
            id="syncer events --kind reappeared",
        ),
        pytest.param(
            events_report(Filters(kinds=(EventKind.REAPPEARED,), since=DAY_AGO - MONTHS)).statement,
            "ix_file_events_kind_occurred_at",
            id="syncer events --kind reappeared --since 90d",
        ),
        pytest.param(
            "SELECT * FROM file_history WHERE source = 'src3' AND file_id = 'f1234'",
            "ix_file_events_source_file_id_id",
            id="file_history of one file",
        ),
    ],
)
def test_hot_query_uses_its_index(big, query, index):
    assert index in used_indexes(big, query)


def test_files_gone_lately_are_found_by_event_time(big):
    # A week of events is few rows, stored together in time order: the time index
    # beats the kind index there, and either is far better than reading them all.
    used = used_indexes(big, documented("Files gone in the last 7 days"))

    assert used & {"ix_file_events_occurred_at", "ix_file_events_kind_occurred_at"}
