"""Alembic environment: syncer's settings give the URL, an advisory lock serializes runs.

`syncer migrate` and `syncer run` hand in an open connection; a bare
`alembic upgrade head` from the repo root builds one from SYNCER_DATABASE_URL.
"""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, text

from syncer.config import load_settings
from syncer.db.engine import create_db_engine, database_url
from syncer.db.schema import metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# Replicas starting together all try to migrate; the lock makes them take turns, and
# the later ones find nothing left to do.
MIGRATION_LOCK = text("SELECT pg_advisory_lock(hashtextextended('syncer.migrations', 0))")
MIGRATION_UNLOCK = text("SELECT pg_advisory_unlock(hashtextextended('syncer.migrations', 0))")


def run_migrations(connection: Connection) -> None:
    connection.execute(MIGRATION_LOCK)
    # End the implicit transaction: the session lock stays, and each migration gets
    # a transaction of its own.
    connection.commit()
    try:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            transaction_per_migration=True,
            compare_type=True,
            compare_server_default=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.execute(MIGRATION_UNLOCK)
        connection.commit()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    settings = load_settings()
    engine = create_db_engine(database_url(settings), lock_timeout=settings.lock_timeout)
    try:
        with engine.connect() as connection:
            run_migrations(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("syncer's migrations run online only: set SYNCER_DATABASE_URL")
run_migrations_online()
