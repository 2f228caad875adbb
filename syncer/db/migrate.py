"""Running Alembic from inside syncer (`syncer migrate`, `syncer run`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

if TYPE_CHECKING:
    import sqlalchemy as sa

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


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
    """Migrate the database to the newest schema (a no-op when it is there already)."""
    config = alembic_config()
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def pending_revision(engine: sa.Engine) -> str | None:
    """None when the schema is at head; otherwise a description of where it is."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current == head:
        return None
    return f"schema at revision {current or 'none'}, expected {head}: run `syncer migrate`"
