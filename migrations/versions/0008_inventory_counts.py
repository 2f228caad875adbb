"""`inventory_counts`: present files and bytes per source, provider and class, kept current.

`inventory_summary` added up every present file at every read, and every /metrics
scrape reads it: 0.3 s at 500,000 files, growing with the inventory. Now statement
triggers on `files` apply each statement's net change to one row per (source,
provider, status_class), in the writer's transaction, and the view reads those
rows. Any writer counts (syncer's COPY and upserts, retention, a hand-written fix);
TRUNCATE empties the counts. Rows are locked per source, and a source has one writer
at a time (its lease), so syncs of different sources never wait on each other here.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A statement's net change per group: the present rows it left minus those it found.
# Transition tables name the rows; a trigger has only those of its own event, so
# each event has its own function.
_APPLY = """
INSERT INTO inventory_counts AS c (source, provider, status_class, files, bytes)
SELECT source, provider, status_class, sum(files), sum(bytes)
FROM ({changes}) AS change
GROUP BY source, provider, status_class
HAVING sum(files) <> 0 OR sum(bytes) <> 0
ORDER BY source, provider, status_class
ON CONFLICT (source, provider, status_class) DO UPDATE
SET files = c.files + excluded.files, bytes = c.bytes + excluded.bytes
"""
_ADDED = (
    "SELECT source, provider, status_class, 1 AS files, bytes FROM added WHERE deleted_at IS NULL"
)
_REMOVED = (
    "SELECT source, provider, status_class, -1 AS files, -bytes AS bytes FROM removed"
    " WHERE deleted_at IS NULL"
)
_FUNCTIONS = {
    "insert": _APPLY.format(changes=_ADDED),
    "update": _APPLY.format(changes=f"{_ADDED} UNION ALL {_REMOVED}"),
    "delete": _APPLY.format(changes=_REMOVED),
}
_TRANSITIONS = {
    "insert": "NEW TABLE AS added",
    "update": "OLD TABLE AS removed NEW TABLE AS added",
    "delete": "OLD TABLE AS removed",
}


def upgrade() -> None:
    op.create_table(
        "inventory_counts",
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("status_class", sa.Text(), nullable=False),
        sa.Column("files", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "source", "provider", "status_class", name=op.f("pk_inventory_counts")
        ),
    )
    for event, body in _FUNCTIONS.items():
        op.execute(
            f"CREATE FUNCTION inventory_counts_{event}() RETURNS trigger LANGUAGE plpgsql"
            f" AS $$ BEGIN {body}; RETURN NULL; END $$"
        )
        op.execute(
            f"CREATE TRIGGER inventory_counts_{event} AFTER {event.upper()} ON files"
            f" REFERENCING {_TRANSITIONS[event]} FOR EACH STATEMENT"
            f" EXECUTE FUNCTION inventory_counts_{event}()"
        )
    op.execute(
        "CREATE FUNCTION inventory_counts_truncate() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN DELETE FROM inventory_counts; RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER inventory_counts_truncate AFTER TRUNCATE ON files"
        " FOR EACH STATEMENT EXECUTE FUNCTION inventory_counts_truncate()"
    )
    # The counts start from the rows as they are: no writer may slip in between
    # (a replica still running syncs while this migrates).
    op.execute("LOCK TABLE files IN SHARE MODE")
    op.execute(
        "INSERT INTO inventory_counts (source, provider, status_class, files, bytes)"
        " SELECT source, provider, status_class, count(*), coalesce(sum(bytes), 0)"
        " FROM files WHERE deleted_at IS NULL GROUP BY source, provider, status_class"
    )
    op.execute(
        "CREATE OR REPLACE VIEW inventory_summary AS"
        " SELECT source, provider, status_class, files, bytes FROM inventory_counts"
        " WHERE files <> 0"
    )


def downgrade() -> None:
    op.execute(
        "CREATE OR REPLACE VIEW inventory_summary AS"
        " SELECT source, provider, status_class, count(*) AS files,"
        " coalesce(sum(bytes), 0)::bigint AS bytes"
        " FROM files WHERE deleted_at IS NULL GROUP BY source, provider, status_class"
    )
    for event in (*_FUNCTIONS, "truncate"):
        op.execute(f"DROP TRIGGER inventory_counts_{event} ON files")
        op.execute(f"DROP FUNCTION inventory_counts_{event}()")
    op.drop_table("inventory_counts")
