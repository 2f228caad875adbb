"""Expiry is not deletion, and no SQL names a provider.

- `files.expires_at`: when the provider deletes the file by itself, where it says.
- `file_events.kind` gains `expired` (a file gone at or after its `expires_at`), and
  `sync_runs.expired` counts them.
- `file_events.new_status_class`: the file's status class after the event, written by
  syncer with its provider's own rules. `file_history` (and so `files_as_of`) reads it
  instead of `syncer_status_class(provider, status)`, the SQL copy of those rules that
  had to name the providers without a status field; that function is dropped. Existing
  events get their class from the old view once, here. `expired` ends a version like
  `disappeared`.
- `current_files` and `failed_files` show `expires_at`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KINDS_BEFORE = ("appeared", "status_changed", "changed", "disappeared", "reappeared")
_KINDS = ("appeared", "status_changed", "changed", "disappeared", "expired", "reappeared")


def _kinds(kinds: Sequence[str]) -> str:
    return "kind IN ({})".format(", ".join(f"'{kind}'" for kind in kinds))


# As in 0003, with the class read from the event and `expired` ending a version.
FILE_HISTORY = """
CREATE VIEW file_history AS
WITH folded AS (
    SELECT e.id, e.source, e.file_id, e.provider, e.kind, e.occurred_at, e.new_status_class,
           syncer_jsonb_merge(
               (SELECT jsonb_object_agg(c.key, c.value -> 1) FROM jsonb_each(e.changes) AS c)
           ) OVER by_file AS state,
           first_value(e.occurred_at) OVER by_file AS first_seen_at,
           lead(e.occurred_at) OVER by_file AS valid_to,
           lead(e.kind) OVER by_file AS ended_by
    FROM file_events AS e
    WINDOW by_file AS (PARTITION BY e.source, e.file_id ORDER BY e.id)
)
SELECT source, file_id, provider,
       row_number() OVER (PARTITION BY source, file_id ORDER BY id)::integer AS version,
       id AS event_id,
       kind AS started_by,
       occurred_at AS valid_from,
       valid_to,
       ended_by,
       state ->> 'filename' AS filename,
       state ->> 'purpose' AS purpose,
       (state ->> 'bytes')::bigint AS bytes,
       (state ->> 'line_count')::integer AS line_count,
       state ->> 'status' AS status,
       state ->> 'status_details' AS status_details,
       new_status_class AS status_class,
       (state ->> 'created_at')::timestamptz AS created_at,
       first_seen_at
FROM folded
WHERE kind NOT IN ('disappeared', 'expired')
"""

FILES_AS_OF = """
CREATE FUNCTION files_as_of(as_of timestamptz)
RETURNS TABLE (
    source text, file_id text, provider text, filename text, purpose text,
    bytes bigint, line_count integer, status text, status_details text,
    status_class text, created_at timestamptz, first_seen_at timestamptz,
    changed_at timestamptz
)
LANGUAGE sql STABLE
AS $$
    SELECT h.source, h.file_id, h.provider, h.filename, h.purpose, h.bytes, h.line_count,
           h.status, h.status_details, h.status_class, h.created_at, h.first_seen_at,
           h.valid_from
    FROM file_history AS h
    WHERE h.valid_from <= as_of AND (h.valid_to IS NULL OR h.valid_to > as_of)
    ORDER BY h.source, h.file_id
$$
"""

# 0001's views with `expires_at` added at the end (CREATE OR REPLACE may add columns).
CURRENT_FILES = """
CREATE OR REPLACE VIEW current_files AS
SELECT f.source, f.file_id, f.provider, f.filename, f.purpose, f.bytes, f.line_count,
       f.status, f.status_details, f.status_class, f.created_at, f.first_seen_at,
       f.changed_at, seen.finished_at AS last_seen_at, f.raw, f.expires_at
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
CREATE OR REPLACE VIEW failed_files AS
SELECT * FROM current_files WHERE status_class = 'failed'
"""


def upgrade() -> None:
    op.add_column("files", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "sync_runs",
        sa.Column("expired", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("file_events", sa.Column("new_status_class", sa.Text(), nullable=True))
    op.drop_constraint(op.f("ck_file_events_kind"), "file_events", type_="check")
    op.create_check_constraint(op.f("ck_file_events_kind"), "file_events", _kinds(_KINDS))
    # Every event that starts a version gets the class 0003's view gave it, once.
    op.execute(
        "UPDATE file_events AS e SET new_status_class = h.status_class"
        " FROM file_history AS h WHERE h.event_id = e.id"
    )
    op.execute("DROP FUNCTION files_as_of(timestamptz)")
    op.execute("DROP VIEW file_history")
    op.execute("DROP FUNCTION syncer_status_class(text, text)")
    op.execute(FILE_HISTORY)
    op.execute(FILES_AS_OF)
    op.execute(CURRENT_FILES)
    op.execute(FAILED_FILES)


def downgrade() -> None:
    initial, reporting = _revision("0001_initial_schema"), _revision("0003_reporting")
    op.execute("DROP VIEW failed_files")
    op.execute("DROP VIEW current_files")
    op.execute(initial.CURRENT_FILES)
    op.execute(initial.FAILED_FILES)
    op.execute("DROP FUNCTION files_as_of(timestamptz)")
    op.execute("DROP VIEW file_history")
    op.execute(reporting.STATUS_CLASS)
    op.execute(reporting.FILE_HISTORY)
    op.execute(reporting.FILES_AS_OF)
    # The old schema knows no expiry: an expired file was a disappeared one there.
    op.execute("UPDATE file_events SET kind = 'disappeared' WHERE kind = 'expired'")
    op.drop_constraint(op.f("ck_file_events_kind"), "file_events", type_="check")
    op.create_check_constraint(op.f("ck_file_events_kind"), "file_events", _kinds(_KINDS_BEFORE))
    op.drop_column("file_events", "new_status_class")
    op.drop_column("sync_runs", "expired")
    op.drop_column("files", "expires_at")


def _revision(name: str) -> Any:
    """An earlier revision's module, for the SQL it created (its views and functions)."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_syncer_migration_{name}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
