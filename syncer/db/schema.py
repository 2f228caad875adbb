"""The tables users query. Column names and values are public contract (DESIGN.md 4).

The schema is created only by the Alembic migrations in `migrations/`; this metadata
is what `alembic check` compares the migrated database against, and what the store
builds its statements from.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Double,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from syncer.model import EventKind, Outcome, StatusClass

# Stable constraint names, so later migrations can refer to them.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _one_of(column: str, values: list[str]) -> str:
    listed = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({listed})"


def _timestamp(name: str, *, nullable: bool = False) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


def _counter(name: str) -> Column[int]:
    return Column(name, Integer, nullable=False, server_default=text("0"))


sync_runs = Table(
    "sync_runs",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("source", Text, nullable=False),
    Column("provider", Text, nullable=False),
    _timestamp("started_at"),
    _timestamp("finished_at", nullable=True),
    Column("outcome", Text, nullable=False),
    _counter("files_listed"),
    _counter("appeared"),
    _counter("status_changed"),
    _counter("changed"),
    _counter("disappeared"),
    _counter("expired"),
    _counter("reappeared"),
    # Not in the original contract: how many listed items were unusable, and how
    # many disappearances the mass-disappearance breaker held back.
    _counter("items_skipped"),
    _counter("disappearances_held"),
    Column("error", Text, nullable=True),
    CheckConstraint(_one_of("outcome", [o.value for o in Outcome]), name="outcome"),
    # A source's newest runs, newest ok run and last complete runs, read from the top
    # of an index without visiting the table (source_health, current_files, metrics,
    # the failure streak): never a walk through all runs or a long failure streak.
    Index(None, "source", "id", postgresql_include=["outcome", "finished_at"]),
    Index(
        "ix_sync_runs_ok_source_id",
        "source",
        "id",
        postgresql_include=["finished_at"],
        postgresql_where=text("outcome = 'ok'"),
    ),
    Index(
        "ix_sync_runs_complete_source_id",
        "source",
        "id",
        postgresql_include=["outcome", "finished_at"],
        postgresql_where=text("outcome IN ('ok', 'held')"),
    ),
    Index(None, "started_at"),
)

files = Table(
    "files",
    metadata,
    Column("source", Text, nullable=False),
    Column("file_id", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("filename", Text, nullable=False),
    Column("purpose", Text, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("line_count", Integer, nullable=True),
    Column("status", Text, nullable=True),
    Column("status_details", Text, nullable=True),
    Column("status_class", Text, nullable=False),
    _timestamp("created_at"),
    _timestamp("first_seen_at"),
    _timestamp("changed_at"),
    _timestamp("deleted_at", nullable=True),
    Column("raw", JSONB, nullable=False),
    # Internal: consecutive complete listings this present file was missing from
    # (SYNCER_MISSING_GRACE). Zero while the file is listed.
    _counter("missing_count"),
    # Internal: digest of the item's JSON text when the row was last written
    # (providers.items.item_digest); an item listed with the same one is unchanged.
    Column("listed_digest", LargeBinary, nullable=True),
    # When the provider deletes the file by itself (OpenAI's expires_at, Gemini's
    # expirationTime); a file gone at or after it has `expired`, not `disappeared`.
    _timestamp("expires_at", nullable=True),
    PrimaryKeyConstraint("source", "file_id"),
    CheckConstraint(_one_of("status_class", [c.value for c in StatusClass]), name="status_class"),
    # Reports ask about present files by class (failed_files); gone files never match.
    # It carries what inventory_summary (every /metrics scrape) adds up, too.
    Index(
        "ix_files_present_status_class",
        "status_class",
        "source",
        postgresql_include=["provider", "bytes"],
        postgresql_where=text("deleted_at IS NULL"),
    ),
    # Event retention: the files gone since before a time.
    Index(
        "ix_files_gone_deleted_at", "deleted_at", postgresql_where=text("deleted_at IS NOT NULL")
    ),
)

file_events = Table(
    "file_events",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("sync_run_id", BigInteger, ForeignKey("sync_runs.id"), nullable=False, index=True),
    _timestamp("occurred_at"),
    Column("source", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("file_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("old_status", Text, nullable=True),
    Column("new_status", Text, nullable=True),
    Column("changes", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    # The file's status class after the event, as its provider classifies the status
    # (null for an event that ends the file's presence): file_history reads it, so no
    # SQL needs to know any provider's rules.
    Column("new_status_class", Text, nullable=True),
    CheckConstraint(_one_of("kind", [k.value for k in EventKind]), name="kind"),
    Index(None, "source", "file_id", "id"),
    # A file's events by its id alone (`syncer events --file ID`).
    Index(None, "file_id"),
    Index(None, "occurred_at"),
    Index(None, "kind", "occurred_at"),
)

# The notification outbox: written in the same transaction as the change that
# raised the alert, delivered afterwards by the dispatcher.
alerts = Table(
    "alerts",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("alert_key", Text, nullable=False, unique=True),
    _timestamp("created_at"),
    Column("kind", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("file_id", Text, nullable=True),
    Column("sync_run_id", BigInteger, ForeignKey("sync_runs.id"), nullable=True),
    Column("payload", JSONB, nullable=False),
    Column("state", Text, nullable=False, server_default=text("'pending'")),
    _counter("attempts"),
    _timestamp("next_attempt_at"),
    _timestamp("sent_at", nullable=True),
    Column("last_error", Text, nullable=True),
    # Apprise URL ids (hashes) of the targets that accepted it: a retry skips them.
    Column("delivered_to", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    CheckConstraint(_one_of("state", ["pending", "sent", "dead"]), name="state"),
    Index(None, "state", "next_attempt_at"),
    # Run retention keeps every run an alert refers to.
    Index(None, "sync_run_id"),
)

# Present files and their bytes per source, provider and class: what inventory_summary
# (and every /metrics scrape) reads. Kept by statement triggers on `files` (migration
# 0008), never written by syncer itself; a group whose files are all gone stays at 0.
inventory_counts = Table(
    "inventory_counts",
    metadata,
    Column("source", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("status_class", Text, nullable=False),
    Column("files", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    PrimaryKeyConstraint("source", "provider", "status_class"),
)

# What run retention pruned, per source and UTC day of `started_at` (syncer/retention.py).
# Durations are seconds from started_at to finished_at.
sync_run_daily = Table(
    "sync_run_daily",
    metadata,
    Column("source", Text, nullable=False),
    Column("day", Date, nullable=False),
    Column("provider", Text, nullable=False),
    Column("runs", Integer, nullable=False),
    Column("ok", Integer, nullable=False),
    Column("incomplete", Integer, nullable=False),
    Column("held", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("files_listed_min", Integer, nullable=False),
    Column("files_listed_max", Integer, nullable=False),
    Column("duration_p50", Double, nullable=True),
    Column("duration_p95", Double, nullable=True),
    Column("duration_max", Double, nullable=True),
    PrimaryKeyConstraint("source", "day"),
)

# How far back a history was pruned: `file_events` before `pruned_before` (event
# retention) are gone, and files_as_of() refuses to rebuild a time before it.
pruned_history = Table(
    "pruned_history",
    metadata,
    Column("relation", Text, primary_key=True),
    _timestamp("pruned_before"),
    _timestamp("pruned_at"),
)

# The schedule and the lease of each source (syncer.db.sources). A sync is serialized
# by its lease, not by a database connection held through the fetch: `lease_token`
# grows with every lease taken and is checked again in the write transaction.
sources = Table(
    "sources",
    metadata,
    Column("name", Text, primary_key=True),
    Column("provider", Text, nullable=False),
    Column("interval_seconds", Float, nullable=False),
    _timestamp("next_due_at"),
    Column("lease_owner", Text, nullable=True),
    _timestamp("lease_expires_at", nullable=True),
    Column("lease_token", BigInteger, nullable=False, server_default=text("0")),
    # Internal: consecutive failed runs; failing sources get a bounded share of workers.
    _counter("failures"),
    _timestamp("retired_at", nullable=True),
    CheckConstraint("interval_seconds > 0", name="interval"),
    Index("ix_sources_due", "next_due_at", postgresql_where=text("retired_at IS NULL")),
)
