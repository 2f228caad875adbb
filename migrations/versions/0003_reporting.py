"""Reporting: a file's history, the inventory at any past time, and the indexes reports need.

`file_history` and `files_as_of()` rebuild past states from `file_events` alone: an
`appeared` event carries every tracked field's first value and every later event the
fields it changed as `{"field": [old, new]}`, so folding the new values in event order
gives each version of a file. Events carry the raw `status`, not `status_class`;
`syncer_status_class()` derives the class with the same rules as syncer's own
classification (`syncer.model.classify_status`; a test keeps the two in agreement).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SiliconFlow has no status field: a file it lists is ready. A provider that has one
# but sent none, or a value never seen, is `unknown`.
# SiliconFlow has no status field: a file it lists is ready. A provider that has one
# but sent none, or a value never seen, is `unknown`. The trimmed characters are
# exactly those Python's str.strip() removes.
STATUS_CLASS = r"""
CREATE FUNCTION syncer_status_class(provider text, status text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
SELECT CASE
    WHEN status IS NULL THEN
        CASE WHEN provider = 'siliconflow' THEN 'ready' ELSE 'unknown' END
    ELSE CASE lower(btrim(status, E'\u0009\u000a\u000b\u000c\u000d\u001c\u001d\u001e\u001f'
                                  '\u0020\u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004'
                                  '\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f'
                                  '\u205f\u3000'))
        WHEN 'ok' THEN 'ready'
        WHEN 'ready' THEN 'ready'
        WHEN 'processed' THEN 'ready'
        WHEN 'success' THEN 'ready'
        WHEN 'error' THEN 'failed'
        WHEN 'failed' THEN 'failed'
        WHEN 'uploaded' THEN 'pending'
        WHEN 'processing' THEN 'pending'
        WHEN 'validating' THEN 'pending'
        WHEN 'in_progress' THEN 'pending'
        ELSE 'unknown'
    END
END
$$
"""

# Running `||` over a file's events: later values of a field replace earlier ones.
JSONB_MERGE = """
CREATE AGGREGATE syncer_jsonb_merge(jsonb) (
    SFUNC = jsonb_concat,
    STYPE = jsonb,
    INITCOND = '{}'
)
"""

# One row per version of a file while it was present. A version starts with an event
# that set the file's fields (appeared, status_changed, changed, reappeared) and ends
# with the file's next event, whatever its kind; `disappeared` starts no version.
FILE_HISTORY = """
CREATE VIEW file_history AS
WITH folded AS (
    SELECT e.id, e.source, e.file_id, e.provider, e.kind, e.occurred_at,
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
       syncer_status_class(provider, state ->> 'status') AS status_class,
       (state ->> 'created_at')::timestamptz AS created_at,
       first_seen_at
FROM folded
WHERE kind <> 'disappeared'
"""

# The columns of `files` that events can rebuild (not `raw`), for files present at `as_of`.
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


def upgrade() -> None:
    op.create_index(op.f("ix_file_events_occurred_at"), "file_events", ["occurred_at"])
    op.create_index(op.f("ix_file_events_kind_occurred_at"), "file_events", ["kind", "occurred_at"])
    op.create_index(op.f("ix_sync_runs_started_at"), "sync_runs", ["started_at"])
    op.create_index(
        "ix_files_present_status_class",
        "files",
        ["status_class", "source"],
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.execute(STATUS_CLASS)
    op.execute(JSONB_MERGE)
    op.execute(FILE_HISTORY)
    op.execute(FILES_AS_OF)


def downgrade() -> None:
    op.execute("DROP FUNCTION files_as_of(timestamptz)")
    op.execute("DROP VIEW file_history")
    op.execute("DROP AGGREGATE syncer_jsonb_merge(jsonb)")
    op.execute("DROP FUNCTION syncer_status_class(text, text)")
    op.drop_index("ix_files_present_status_class", table_name="files")
    op.drop_index(op.f("ix_sync_runs_started_at"), table_name="sync_runs")
    op.drop_index(op.f("ix_file_events_kind_occurred_at"), table_name="file_events")
    op.drop_index(op.f("ix_file_events_occurred_at"), table_name="file_events")
