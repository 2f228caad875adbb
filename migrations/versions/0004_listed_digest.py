"""Remember a digest of each file's listed JSON, so an unchanged item is not parsed again.

A sync compares a listing with the stored files. For a large source, parsing every
item and comparing every row was most of a re-sync's time; with the digest of the
item's exact text stored, an item listed byte for byte as before is recognised by its
digest alone (docs/performance.md). Rows written before this revision have none:
their items are parsed and compared as before until the file next changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("files", sa.Column("listed_digest", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column("files", "listed_digest")
