"""Years of history: lookups instead of aggregates, the rollup of pruned runs, retention marks.

- `source_health` reads the newest rows of each source through indexes (the sources
  found by walking `ix_sync_runs_source_id`, one probe per source) instead of sorting
  and aggregating all of `sync_runs`.
- `ix_sync_runs_source_id` now carries `outcome` and `finished_at`, and two partial
  indexes hold a source's `ok` and complete (`ok`, `held`) runs: "the latest run",
  "the latest ok run" and "the last complete runs" (`current_files.last_seen_at`) are
  index-only lookups that never walk through a long failure streak.
- `ix_file_events_file_id`: a file's events by id alone (`syncer events --file`).
- `ix_files_present_status_class` carries `provider` and `bytes`: `inventory_summary`
  (read at every /metrics scrape) counts present files from the index.
- `ix_alerts_sync_run_id` and `ix_files_gone_deleted_at`: what retention asks (is a
  run referenced by an alert; which files are gone since before a time).
- `sync_run_daily`: per source and UTC day, what pruned runs were (syncer/retention.py).
- `pruned_history`: how far back events were pruned (SYNCER_EVENT_RETENTION), so that
  `files_as_of()` refuses a time it can no longer rebuild instead of answering wrongly.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The sources are found by a loose index scan (each step: the next source after the
# last one, one index probe), then each source's newest run, newest ok run and newest
# run that did not fail are read from the top of an index. The runs after the last one
# that did not fail are the failure streak: counted along the same index, they are
# exactly as many as the streak is long. Every lookup selects only columns the index
# holds: asked for the whole newest row, the planner prefers walking the primary key
# back through every source's runs until it meets one of this source (20,000 rows at
# 1M runs); so the newest id comes from the index and its row by primary key.
SOURCE_HEALTH = """
CREATE OR REPLACE VIEW source_health AS
WITH RECURSIVE sources (source) AS (
    SELECT min(r.source) FROM sync_runs AS r
    UNION ALL
    SELECT (SELECT min(r.source) FROM sync_runs AS r WHERE r.source > s.source)
    FROM sources AS s
    WHERE s.source IS NOT NULL
)
SELECT s.source, last.provider, last.id AS last_run_id, last.started_at AS last_run_at,
       last.outcome AS last_outcome, last.error AS last_error,
       ok.finished_at AS last_ok_at,
       (SELECT count(*)
        FROM sync_runs AS r
        WHERE r.source = s.source AND r.id > coalesce(not_failed.id, 0)) AS consecutive_failures
FROM sources AS s
CROSS JOIN LATERAL (
    SELECT r.id
    FROM sync_runs AS r
    WHERE r.source = s.source
    ORDER BY r.id DESC
    LIMIT 1
) AS newest
JOIN sync_runs AS last ON last.id = newest.id
LEFT JOIN LATERAL (
    SELECT r.finished_at
    FROM sync_runs AS r
    WHERE r.source = s.source AND r.outcome = 'ok'
    ORDER BY r.id DESC
    LIMIT 1
) AS ok ON true
LEFT JOIN LATERAL (
    SELECT r.id
    FROM sync_runs AS r
    WHERE r.source = s.source AND r.outcome <> 'failed'
    ORDER BY r.id DESC
    LIMIT 1
) AS not_failed ON true
"""

OLD_SOURCE_HEALTH = """
CREATE OR REPLACE VIEW source_health AS
WITH latest AS (
    SELECT DISTINCT ON (source)
           source, provider, id AS last_run_id, started_at AS last_run_at,
           outcome AS last_outcome, error AS last_error
    FROM sync_runs
    ORDER BY source, id DESC
)
SELECT l.source, l.provider, l.last_run_id, l.last_run_at, l.last_outcome, l.last_error,
       history.last_ok_at,
       (SELECT count(*)
        FROM sync_runs AS r
        WHERE r.source = l.source AND r.outcome = 'failed'
          AND r.id > coalesce(history.last_not_failed_id, 0)) AS consecutive_failures
FROM latest AS l
CROSS JOIN LATERAL (
    SELECT max(r.finished_at) FILTER (WHERE r.outcome = 'ok') AS last_ok_at,
           max(r.id) FILTER (WHERE r.outcome <> 'failed') AS last_not_failed_id
    FROM sync_runs AS r
    WHERE r.source = l.source
) AS history
"""

_FILES_AS_OF_COLUMNS = """
RETURNS TABLE (
    source text, file_id text, provider text, filename text, purpose text,
    bytes bigint, line_count integer, status text, status_details text,
    status_class text, created_at timestamptz, first_seen_at timestamptz,
    changed_at timestamptz
)"""

_FILES_AS_OF_QUERY = """
    SELECT h.source, h.file_id, h.provider, h.filename, h.purpose, h.bytes, h.line_count,
           h.status, h.status_details, h.status_class, h.created_at, h.first_seen_at,
           h.valid_from
    FROM file_history AS h
    WHERE h.valid_from <= as_of AND (h.valid_to IS NULL OR h.valid_to > as_of)
    ORDER BY h.source, h.file_id"""

# As before, but a time before the events were pruned is refused: files gone before
# then have no events left, and the inventory then would be missing them.
FILES_AS_OF = f"""
CREATE OR REPLACE FUNCTION files_as_of(as_of timestamptz)
{_FILES_AS_OF_COLUMNS}
LANGUAGE plpgsql STABLE
AS $$
#variable_conflict use_column
DECLARE
    pruned timestamptz;
BEGIN
    SELECT p.pruned_before INTO pruned
    FROM pruned_history AS p
    WHERE p.relation = 'file_events';
    IF as_of < pruned THEN
        RAISE EXCEPTION 'files_as_of(%): the events before % were pruned '
                        '(SYNCER_EVENT_RETENTION); the inventory then cannot be rebuilt',
                        as_of, pruned
            USING ERRCODE = 'data_exception',
                  HINT = 'Ask about a time on or after pruned_history.pruned_before.';
    END IF;
    RETURN QUERY {_FILES_AS_OF_QUERY};
END
$$
"""  # noqa: S608 - constant text: no input reaches it

OLD_FILES_AS_OF = f"""
CREATE OR REPLACE FUNCTION files_as_of(as_of timestamptz)
{_FILES_AS_OF_COLUMNS}
LANGUAGE sql STABLE
AS $${_FILES_AS_OF_QUERY}
$$
"""


def upgrade() -> None:
    op.drop_index("ix_sync_runs_source_id", table_name="sync_runs")
    op.create_index(
        "ix_sync_runs_source_id",
        "sync_runs",
        ["source", "id"],
        postgresql_include=["outcome", "finished_at"],
    )
    op.create_index(
        "ix_sync_runs_ok_source_id",
        "sync_runs",
        ["source", "id"],
        postgresql_include=["finished_at"],
        postgresql_where=sa.text("outcome = 'ok'"),
    )
    op.create_index(
        "ix_sync_runs_complete_source_id",
        "sync_runs",
        ["source", "id"],
        postgresql_include=["outcome", "finished_at"],
        postgresql_where=sa.text("outcome IN ('ok', 'held')"),
    )
    op.create_index("ix_file_events_file_id", "file_events", ["file_id"])
    op.drop_index("ix_files_present_status_class", table_name="files")
    op.create_index(
        "ix_files_present_status_class",
        "files",
        ["status_class", "source"],
        postgresql_include=["provider", "bytes"],
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_index("ix_alerts_sync_run_id", "alerts", ["sync_run_id"])
    op.create_index(
        "ix_files_gone_deleted_at",
        "files",
        ["deleted_at"],
        postgresql_where=sa.text("deleted_at IS NOT NULL"),
    )
    op.create_table(
        "sync_run_daily",
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Integer(), nullable=False),
        sa.Column("incomplete", sa.Integer(), nullable=False),
        sa.Column("held", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("files_listed_min", sa.Integer(), nullable=False),
        sa.Column("files_listed_max", sa.Integer(), nullable=False),
        sa.Column("duration_p50", sa.Double(), nullable=True),
        sa.Column("duration_p95", sa.Double(), nullable=True),
        sa.Column("duration_max", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("source", "day", name=op.f("pk_sync_run_daily")),
    )
    op.create_table(
        "pruned_history",
        sa.Column("relation", sa.Text(), nullable=False),
        sa.Column("pruned_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("relation", name=op.f("pk_pruned_history")),
    )
    op.execute(SOURCE_HEALTH)
    op.execute(FILES_AS_OF)


def downgrade() -> None:
    op.execute(OLD_FILES_AS_OF)
    op.execute(OLD_SOURCE_HEALTH)
    op.drop_table("pruned_history")
    op.drop_table("sync_run_daily")
    op.drop_index("ix_files_gone_deleted_at", table_name="files")
    op.drop_index("ix_alerts_sync_run_id", table_name="alerts")
    op.drop_index("ix_file_events_file_id", table_name="file_events")
    op.drop_index("ix_files_present_status_class", table_name="files")
    op.create_index(
        "ix_files_present_status_class",
        "files",
        ["status_class", "source"],
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.drop_index("ix_sync_runs_complete_source_id", table_name="sync_runs")
    op.drop_index("ix_sync_runs_ok_source_id", table_name="sync_runs")
    op.drop_index("ix_sync_runs_source_id", table_name="sync_runs")
    op.create_index("ix_sync_runs_source_id", "sync_runs", ["source", "id"])
