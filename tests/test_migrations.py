"""The schema exists only through Alembic, and the migrations match the code's metadata."""

from __future__ import annotations

import os
import subprocess
import sys

import sqlalchemy as sa
from conftest import REPO_ROOT


def alembic(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYNCER_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def relations(url: str) -> set[str]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        inspector = sa.inspect(engine)
        return set(inspector.get_table_names()) | set(inspector.get_view_names())
    finally:
        engine.dispose()


def test_alembic_from_the_repo_root_builds_checks_and_removes_the_schema(databases):
    url = databases.create()

    upgraded = alembic("upgrade", "head", url=url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert relations(url) >= {
        "files",
        "file_events",
        "sync_runs",
        "alerts",
        "current_files",
        "failed_files",
        "inventory_summary",
        "source_health",
    }

    checked = alembic("check", url=url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr

    downgraded = alembic("downgrade", "base", url=url)
    assert downgraded.returncode == 0, downgraded.stderr
    assert relations(url) == {"alembic_version"}

    again = alembic("upgrade", "head", url=url)
    assert again.returncode == 0, again.stderr


def test_upgrade_twice_is_a_no_op(databases):
    url = databases.create()
    assert alembic("upgrade", "head", url=url).returncode == 0

    second = alembic("upgrade", "head", url=url)
    assert second.returncode == 0
    assert "Running upgrade" not in second.stderr


def test_0005_gives_old_events_their_class_and_its_downgrade_keeps_expirations(databases):
    url = databases.create()
    assert alembic("upgrade", "0004", url=url).returncode == 0
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            run = conn.execute(
                sa.text(
                    "INSERT INTO sync_runs (source, provider, started_at, outcome)"
                    " VALUES ('s', 'siliconflow', now(), 'ok') RETURNING id"
                )
            ).scalar_one()
            for provider, file_id, kind, status in [
                ("siliconflow", "f1", "appeared", None),
                ("moonshot", "m1", "appeared", "processing"),
                ("moonshot", "m1", "status_changed", "error"),
                ("moonshot", "m1", "disappeared", None),
            ]:
                changes = '{"status": [null, "%s"]}' % status if status else "{}"  # noqa: UP031
                conn.execute(
                    sa.text(
                        "INSERT INTO file_events (sync_run_id, occurred_at, source, provider,"
                        " file_id, kind, new_status, changes)"
                        " VALUES (:run, now(), :provider, :provider, :id, :kind, :status,"
                        " CAST(:changes AS jsonb))"
                    ),
                    {
                        "run": run,
                        "provider": provider,
                        "id": file_id,
                        "kind": kind,
                        "status": status,
                        "changes": changes,
                    },
                )
        assert alembic("upgrade", "0005", url=url).returncode == 0
        with engine.begin() as conn:
            classes = conn.execute(
                sa.text("SELECT file_id, kind, new_status_class FROM file_events ORDER BY id")
            ).all()
            conn.execute(
                sa.text("UPDATE file_events SET kind = 'expired' WHERE kind = 'disappeared'")
            )
        downgraded = alembic("downgrade", "0004", url=url)
        with engine.connect() as conn:
            kinds = (
                conn.execute(sa.text("SELECT kind FROM file_events ORDER BY id")).scalars().all()
            )
    finally:
        engine.dispose()

    assert [tuple(row) for row in classes] == [
        ("f1", "appeared", "ready"),  # SiliconFlow has no status: ready
        ("m1", "appeared", "pending"),
        ("m1", "status_changed", "failed"),
        ("m1", "disappeared", None),
    ]
    assert downgraded.returncode == 0, downgraded.stderr
    assert kinds == ["appeared", "appeared", "status_changed", "disappeared"]


def test_0008_counts_the_files_already_there_and_its_downgrade_adds_them_up_again(databases):
    url = databases.create()
    assert alembic("upgrade", "0007", url=url).returncode == 0
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    summary = "SELECT * FROM inventory_summary ORDER BY source, status_class"
    try:
        with engine.begin() as conn:
            for source, file_id, status_class, size, gone in [
                ("a", "1", "ready", 10, False),
                ("a", "2", "ready", 5, False),
                ("a", "3", "failed", 7, False),
                ("a", "4", "failed", 9, True),
                ("b", "1", "pending", 1, True),
            ]:
                conn.execute(
                    sa.text(
                        "INSERT INTO files (source, file_id, provider, filename, purpose, bytes,"
                        " status_class, created_at, first_seen_at, changed_at, deleted_at, raw)"
                        " VALUES (:s, :f, 'moonshot', :f, 'p', :b, :c, now(), now(), now(),"
                        " CASE WHEN :gone THEN now() END, '{}')"
                    ),
                    {"s": source, "f": file_id, "c": status_class, "b": size, "gone": gone},
                )
            before = conn.execute(sa.text(summary)).all()
        assert alembic("upgrade", "0008", url=url).returncode == 0
        with engine.begin() as conn:
            counted = conn.execute(sa.text(summary)).all()
            conn.execute(sa.text("UPDATE files SET deleted_at = now() WHERE file_id = '3'"))
        downgraded = alembic("downgrade", "0007", url=url)
        with engine.connect() as conn:
            after_downgrade = conn.execute(sa.text(summary)).all()
    finally:
        engine.dispose()

    assert before == [("a", "moonshot", "failed", 1, 7), ("a", "moonshot", "ready", 2, 15)]
    assert counted == before
    assert downgraded.returncode == 0, downgraded.stderr
    assert after_downgrade == [("a", "moonshot", "ready", 2, 15)]
