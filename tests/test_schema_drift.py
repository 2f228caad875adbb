"""Operator mistakes at the command line and in the database: one line, the right code.

A database migrated by a newer release, one left behind, a column dropped by hand,
and report options that overflow: every real `syncer` command says what is wrong in
one line and exits with the documented code, never with a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from syncer.db.engine import create_db_engine
from syncer.db.migrate import alembic_config, upgrade_to_head
from syncer.redaction import Secret

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def syncer(*args: str, env, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncer", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def fresh_database(databases):
    """A database of its own, migrated to head, with an engine to alter it."""
    url = databases.create()
    engine = create_db_engine(Secret(url), lock_timeout=5)
    upgrade_to_head(engine)
    yield url, engine
    engine.dispose()


def test_a_database_migrated_by_a_newer_release_stops_every_command_with_one_line(
    env, tmp_path, fresh_database
):
    """Before: sync, run and migrate died with a raw traceback, check advised
    `syncer migrate`, and `run --no-migrate` ran silently on the unknown schema."""
    url, engine = fresh_database
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0999'"))
    env = {**env, "SYNCER_DATABASE_URL": url, "SYNCER_HTTP_PORT": "0"}
    commands = [
        ("sync",),
        ("run",),
        ("run", "--no-migrate"),
        ("migrate",),
        ("files",),
        ("alerts", "list"),
    ]

    with ThreadPoolExecutor(len(commands) + 1) as pool:
        results = list(pool.map(lambda args: syncer(*args, env=env, cwd=tmp_path), commands))
        checked = pool.submit(syncer, "check", env=env, cwd=tmp_path).result()

    for args, result in zip(commands, results, strict=True):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, (args, result.stderr)
        assert len(lines) == 1, (args, result.stderr)
        assert "revision 0999" in lines[0], (args, lines)
        assert f"newest revision {HEAD}" in lines[0], (args, lines)
    assert checked.returncode == 1
    assert (
        f"database: schema at revision 0999, unknown to this syncer (newest revision {HEAD})"
        in (checked.stdout)
    )
    with engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        runs = conn.execute(sa.text("SELECT count(*) FROM sync_runs")).scalar()
    assert (version, runs) == ("0999", 0)  # nothing touched the unknown schema


def test_run_no_migrate_refuses_a_schema_behind_head(env, tmp_path, databases):
    url = databases.create()
    engine = create_db_engine(Secret(url), lock_timeout=5)
    try:
        config = alembic_config()
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0001")
    finally:
        engine.dispose()

    result = syncer("run", "--no-migrate", env={**env, "SYNCER_DATABASE_URL": url}, cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"syncer: the database schema is at revision 0001, expected {HEAD}: "
        "run `syncer migrate` (or drop --no-migrate)"
    )


def test_check_names_a_column_dropped_by_hand(env, tmp_path, fresh_database):
    """Before: every run failed while `syncer check` said "database: ok"."""
    url, engine = fresh_database
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE files DROP COLUMN listed_digest"))

    result = syncer("check", env={**env, "SYNCER_DATABASE_URL": url}, cwd=tmp_path)

    assert result.returncode == 1
    assert (
        "database: schema differs from this release's models: column files.listed_digest is missing"
    ) in result.stdout


def test_check_says_ok_for_the_schema_the_migrations_build(env, tmp_path, fresh_database):
    url, _ = fresh_database

    result = syncer("check", env={**env, "SYNCER_DATABASE_URL": url}, cwd=tmp_path)

    assert "database: ok" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("runs", "--since", "9999999d"), "--since"),
        (("events", "--since", "99999999999999999999w"), "--since"),
        (("files", "--limit", "99999999999999999999"), "--limit"),
        (("runs", "--limit", "9223372036854775808"), "--limit"),
        (("alerts", "list", "--limit", "99999999999999999999"), "--limit"),
    ],
)
def test_report_options_that_overflow_are_usage_errors(env, tmp_path, args, option):
    """Before: `--since 9999999d` was an OverflowError traceback (exit 1) and
    `--limit 99999999999999999999` "database unavailable" (exit 1)."""
    result = syncer(*args, env=env, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert f"Invalid value for '{option}'" in errors[0]
