"""The `sources` table: the schedule and the lease of every configured source.

Replicas claim due sources from it with `FOR UPDATE SKIP LOCKED` (syncer.db.sources),
so each source is listed once per interval however many replicas run, and a sync
holds a lease (owner, expiry, fencing token) instead of a database connection while
it asks the provider. Rows are written by `syncer run` at start from the
configuration; a source no longer configured keeps its row, marked retired.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("interval_seconds", sa.Float(), nullable=False),
        sa.Column("next_due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_token", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("interval_seconds > 0", name=op.f("ck_sources_interval")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_sources")),
    )
    op.create_index(
        "ix_sources_due",
        "sources",
        ["next_due_at"],
        postgresql_where=sa.text("retired_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_sources_due", table_name="sources")
    op.drop_table("sources")
