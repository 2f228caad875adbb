"""Initial schema: files, file_events, sync_runs, alerts and the reporting views.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A present file was last seen by the complete listing `missing_count` complete runs
# ago (0: the latest one). Only complete listings (ok, held) prove presence.
CURRENT_FILES = """
CREATE VIEW current_files AS
SELECT f.source, f.file_id, f.provider, f.filename, f.purpose, f.bytes, f.line_count,
       f.status, f.status_details, f.status_class, f.created_at, f.first_seen_at,
       f.changed_at, seen.finished_at AS last_seen_at, f.raw
FROM files AS f
LEFT JOIN LATERAL (
    SELECT r.finished_at
    FROM sync_runs AS r
    WHERE r.source = f.source AND r.outcome IN ('ok', 'held')
    ORDER BY r.id DESC
    OFFSET f.missing_count
    LIMIT 1
) AS seen ON true
WHERE f.deleted_at IS NULL
"""

FAILED_FILES = """
CREATE VIEW failed_files AS
SELECT * FROM current_files WHERE status_class = 'failed'
"""

INVENTORY_SUMMARY = """
CREATE VIEW inventory_summary AS
SELECT source, provider, status_class,
       count(*) AS files,
       coalesce(sum(bytes), 0)::bigint AS bytes
FROM files
WHERE deleted_at IS NULL
GROUP BY source, provider, status_class
"""

SOURCE_HEALTH = """
CREATE VIEW source_health AS
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

VIEWS = ("source_health", "inventory_summary", "failed_files", "current_files")


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _counter(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), server_default=sa.text("0"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "sync_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        _timestamp("started_at"),
        _timestamp("finished_at", nullable=True),
        sa.Column("outcome", sa.Text(), nullable=False),
        _counter("files_listed"),
        _counter("appeared"),
        _counter("status_changed"),
        _counter("changed"),
        _counter("disappeared"),
        _counter("reappeared"),
        _counter("items_skipped"),
        _counter("disappearances_held"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('ok', 'incomplete', 'held', 'failed')", name=op.f("ck_sync_runs_outcome")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_runs")),
    )
    op.create_index(op.f("ix_sync_runs_source_id"), "sync_runs", ["source", "id"])

    op.create_table(
        "files",
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("file_id", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("line_count", sa.Integer(), nullable=True),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("status_details", sa.Text(), nullable=True),
        sa.Column("status_class", sa.Text(), nullable=False),
        _timestamp("created_at"),
        _timestamp("first_seen_at"),
        _timestamp("changed_at"),
        _timestamp("deleted_at", nullable=True),
        sa.Column("raw", postgresql.JSONB(), nullable=False),
        _counter("missing_count"),
        sa.CheckConstraint(
            "status_class IN ('ready', 'pending', 'failed', 'unknown')",
            name=op.f("ck_files_status_class"),
        ),
        sa.PrimaryKeyConstraint("source", "file_id", name=op.f("pk_files")),
    )

    op.create_table(
        "file_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("sync_run_id", sa.BigInteger(), nullable=False),
        _timestamp("occurred_at"),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("file_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("old_status", sa.Text(), nullable=True),
        sa.Column("new_status", sa.Text(), nullable=True),
        sa.Column(
            "changes",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "kind IN ('appeared', 'status_changed', 'changed', 'disappeared', 'reappeared')",
            name=op.f("ck_file_events_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["sync_run_id"],
            ["sync_runs.id"],
            name=op.f("fk_file_events_sync_run_id_sync_runs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_file_events")),
    )
    op.create_index(op.f("ix_file_events_sync_run_id"), "file_events", ["sync_run_id"])
    op.create_index(
        op.f("ix_file_events_source_file_id_id"), "file_events", ["source", "file_id", "id"]
    )

    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("alert_key", sa.Text(), nullable=False),
        _timestamp("created_at"),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("file_id", sa.Text(), nullable=True),
        sa.Column("sync_run_id", sa.BigInteger(), nullable=True),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("state", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        _counter("attempts"),
        _timestamp("next_attempt_at"),
        _timestamp("sent_at", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint("state IN ('pending', 'sent', 'dead')", name=op.f("ck_alerts_state")),
        sa.ForeignKeyConstraint(
            ["sync_run_id"], ["sync_runs.id"], name=op.f("fk_alerts_sync_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
        sa.UniqueConstraint("alert_key", name=op.f("uq_alerts_alert_key")),
    )
    op.create_index(op.f("ix_alerts_state_next_attempt_at"), "alerts", ["state", "next_attempt_at"])

    for view in (CURRENT_FILES, FAILED_FILES, INVENTORY_SUMMARY, SOURCE_HEALTH):
        op.execute(view)


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW {view}")
    op.drop_table("alerts")
    op.drop_table("file_events")
    op.drop_table("files")
    op.drop_table("sync_runs")
