"""Running Alembic from inside syncer (`syncer migrate`, `syncer run`), and checking
that the database's schema is the one this release was written for."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from syncer.db.schema import metadata
from syncer.errors import DatabaseUnavailableError

if TYPE_CHECKING:
    import sqlalchemy as sa

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


class SchemaMismatchError(DatabaseUnavailableError):
    """The database's schema is not one this syncer can use; the message says why."""


def _script_location() -> Path:
    # A wheel carries the migrations inside the package; a source checkout (and the
    # docker image built from it) has them at the repo root, next to alembic.ini.
    packaged = _PACKAGE_DIR / "_migrations"
    return packaged if packaged.is_dir() else _PACKAGE_DIR.parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    config.attributes["configure_logging"] = False
    return config


def upgrade_to_head(engine: sa.Engine) -> None:
    """Migrate the database to the newest schema (a no-op when it is there already).

    Raises SchemaMismatchError, before touching anything, for a database that a newer
    release has migrated: this one cannot downgrade it, nor knows its schema.
    """
    check_revision(engine)
    config = alembic_config()
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def revisions(engine: sa.Engine) -> tuple[str | None, str, bool]:
    """The database's revision (None: never migrated), this release's head, and
    whether this release knows the database's revision."""
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    assert head is not None, "the migrations have a head"
    with engine.connect() as connection:
        current = _context(connection).get_current_revision()
    known = current is None or current in {rev.revision for rev in script.walk_revisions()}
    return current, head, known


def check_revision(engine: sa.Engine, *, require_head: bool = False) -> None:
    """Raise SchemaMismatchError for a revision this release does not know, and with
    `require_head` for any revision but the newest."""
    current, head, known = revisions(engine)
    if not known:
        raise SchemaMismatchError(
            f"the database schema is at revision {current}, which this syncer (newest "
            f"revision {head}) does not know: a newer release migrated it; run that release"
        )
    if require_head and current != head:
        raise SchemaMismatchError(
            f"the database schema is at revision {current or 'none'}, expected {head}: "
            "run `syncer migrate` (or drop --no-migrate)"
        )


def pending_revision(engine: sa.Engine) -> str | None:
    """None when the schema is at head; otherwise a description of where it is."""
    current, head, known = revisions(engine)
    if current == head:
        return None
    if not known:
        return (
            f"schema at revision {current}, unknown to this syncer (newest revision {head}): "
            "a newer release migrated it; run that release"
        )
    return f"schema at revision {current or 'none'}, expected {head}: run `syncer migrate`"


def schema_differences(engine: sa.Engine) -> list[str]:
    """How the live schema differs from the models, as `alembic check` sees it.

    Tables the models do not have are left out: users may keep their own next to
    syncer's.
    """
    with engine.connect() as connection:
        context = _context(connection, compare_type=True, compare_server_default=True)
        diffs = compare_metadata(context, metadata)
    return [text for diff in diffs if (text := _describe(diff)) is not None]


def _context(connection: sa.Connection, **opts: bool) -> MigrationContext:
    # Alembic logs "Context impl PostgresqlImpl." at INFO for every context: noise in
    # front of a command's one line, for a look that changes nothing.
    migration_log = logging.getLogger("alembic.runtime.migration")
    level = migration_log.level
    migration_log.setLevel(logging.WARNING)
    try:
        return MigrationContext.configure(connection, opts=opts)
    finally:
        migration_log.setLevel(level)


_STATES = {"add": "missing", "remove": "not in the models"}


def _describe(diff: object) -> str | None:
    """One alembic autogenerate difference, in words (None: not worth naming)."""
    if isinstance(diff, list):  # modify_* operations come as a list of one or more
        return "; ".join(filter(None, (_describe(item) for item in diff))) or None
    kind, *args = diff if isinstance(diff, tuple) else (str(diff),)
    action, _, what = str(kind).partition("_")
    text: str | None
    if kind == "remove_table":
        text = None  # users may keep tables of their own next to syncer's
    elif what == "table":
        text = f"table {args[0].name} is {_STATES[action]}"
    elif what == "column":
        text = f"column {args[1]}.{args[2].name} is {_STATES[action]}"
    elif what == "index":
        text = f"index {args[0].name} is {_STATES[action]}"
    elif action == "modify":
        text = f"column {args[1]}.{args[2]} differs ({what})"
    else:
        text = f"{kind}: {', '.join(str(getattr(arg, 'name', arg)) for arg in args)}"
    return text
