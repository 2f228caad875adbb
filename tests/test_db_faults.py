"""Database faults with real processes: the server going away, a sync killed halfway
through its transaction, and locks that are never released (issue 7, item 2).

The outage test stops and restarts a PostgreSQL of its own (tests/pgserver.py), never
the shared test server; the others work on a database of their own on the shared one,
since they lock its tables.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg
import pytest
import sqlalchemy as sa
from history import (
    alert_ids,
    as_events,
    events_after,
    in_sync_with,
    last_event_id,
    net_of_tick,
)
from pgserver import PrivateServer
from processes import LoggedService
from receiver import Receiver
from test_alerting_e2e import free_port, get, scrape
from test_cli import count_runs, present_ids, query, syncer, wait_for

from syncer.db.engine import create_db_engine
from syncer.db.migrate import upgrade_to_head
from syncer.redaction import Secret

if TYPE_CHECKING:
    from collections.abc import Iterator

INTERVAL = 1.0  # LoggedService syncs every second
# The next tick comes within one interval (plus its jitter); the rest is room for a
# loaded machine to start the sync and write it.
RESUME_WITHIN = INTERVAL + 4.0


def migrated_engine(url: str) -> sa.Engine:
    engine = create_db_engine(Secret(url), lock_timeout=5)
    upgrade_to_head(engine)
    return engine


@pytest.fixture
def private_server():
    with PrivateServer() as server:
        yield server


@pytest.fixture
def private_engine(private_server):
    """The database `syncer` on the private server, migrated."""
    engine = migrated_engine(private_server.create_database("syncer"))
    yield engine
    engine.dispose()


@pytest.fixture
def own_database(databases) -> str:
    """A migrated database of this test's own on the shared server: tests here lock tables."""
    url = databases.create()
    migrated_engine(url).dispose()
    return url


@pytest.fixture
def own_engine(own_database):
    engine = create_db_engine(Secret(own_database), lock_timeout=5)
    yield engine
    engine.dispose()


def snapshot(engine) -> dict[str, list[dict]]:
    """Every row of every table, files with their physical version (xmin)."""
    return {
        "files": query(engine, "SELECT xmin::text AS version, * FROM files ORDER BY file_id"),
        "file_events": query(engine, "SELECT * FROM file_events ORDER BY id"),
        "sync_runs": query(engine, "SELECT * FROM sync_runs ORDER BY id"),
        "alerts": query(engine, "SELECT * FROM alerts ORDER BY id"),
    }


def syncer_backends(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "SELECT pid, state, wait_event_type, wait_event FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'syncer'"
    ).fetchall()


def wait_until(condition, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not met within {timeout} s")
        time.sleep(0.1)


# --- The database goes away while `syncer run` runs -------------------------------------


@pytest.mark.parametrize("mode", ["immediate", "fast"], ids=["crash", "shutdown"])
def test_run_rides_out_a_database_restart(
    private_server, private_engine, env, simulator, tmp_path, mode
):
    """`immediate` kills every server process at once, like a crash; `fast` is an
    operator's restart: sessions are told the server is shutting down."""
    engine = private_engine
    url = private_server.url("syncer")
    simulator.add_files("moonshot", 3, status="processing")
    simulator.add_files("siliconflow", 3)
    with Receiver() as receiver:
        service_env = {
            **env,
            "SYNCER_DATABASE_URL": url,
            "SYNCER_ALERT_URLS": receiver.url,
            "SYNCER_ALERT_DISPATCH_INTERVAL": "0.5s",
            "SYNCER_HTTP_HOST": "127.0.0.1",
            "SYNCER_HTTP_PORT": str(free_port()),
        }
        service = LoggedService(service_env, tmp_path, tmp_path / "service.log")
        try:
            for account in ("moonshot", "siliconflow"):
                wait_for(lambda a=account: in_sync_with(engine, simulator, a), service.process)
            assert get(service_env, "/readyz").status_code == 200
            before_outage = last_event_id(engine)
            engine.dispose()

            private_server.stop(mode)
            changes = net_of_tick(simulator.step())  # files settle, one fails, new ones appear
            wait_for(lambda: get(service_env, "/readyz").status_code == 503, service.process)
            not_ready = get(service_env, "/readyz")
            time.sleep(3 * INTERVAL)  # a few ticks against no database at all
            alive = get(service_env, "/healthz")
            during = scrape(service_env)
            assert service.alive()

            private_server.start()
            back = datetime.now(UTC)
            for account in ("moonshot", "siliconflow"):
                wait_for(lambda a=account: in_sync_with(engine, simulator, a), service.process)
            ready_again = get(service_env, "/readyz")
            receiver.wait_for(1)
            runs_now = count_runs(engine, "moonshot")
            wait_for(lambda: count_runs(engine, "moonshot") >= runs_now + 2, service.process)
        finally:
            stderr = service.stop()
        failed_files = [c for c in changes if c.new_status == "error"]

        assert (not_ready.status_code, alive.status_code) == (503, 200)
        assert "database unavailable" in not_ready.text
        assert during["syncer_database_up", ()] == 0
        assert ready_again.status_code == 200
        # Every change made while the database was down, recorded once.
        assert events_after(engine, before_outage) == as_events(changes)
        first_after = query(
            engine,
            "SELECT source, min(finished_at) AS at FROM sync_runs"
            " WHERE outcome = 'ok' AND finished_at > :back GROUP BY source",
            back=back,
        )
        assert {r["source"] for r in first_after} == {"moonshot", "siliconflow"}
        for run in first_after:
            assert (run["at"] - back).total_seconds() < RESUME_WITHIN, run
        # Each failure raised once and delivered once.
        assert failed_files
        delivered = alert_ids(receiver.received)
        assert len(delivered) == len(set(delivered))
        assert sorted(key.rsplit("/", 1)[1] for key in delivered) == sorted(
            c.file_id for c in failed_files
        )
    assert "will try again next interval" in stderr
    assert "deadlock" not in stderr


def test_the_database_dying_inside_a_sync_transaction(
    private_server, private_engine, env, simulator, tmp_path
):
    """The server crashes while a sync waits inside its transaction: the sync reports a
    failure and exits, nothing of it is left, and the next sync applies the listing once."""
    url = private_server.url("syncer")
    # The dying sync cannot release its lease: the next one waits for it to expire.
    env = {
        **env,
        "SYNCER_DATABASE_URL": url,
        "SYNCER_LOCK_TIMEOUT": "120",
        "SYNCER_DB_WAIT": "0",
        "SYNCER_LEASE_TIMEOUT": "2",
    }
    simulator.add_files("moonshot", 4, status="processing")
    assert syncer("sync", "--source", "moonshot", env=env, cwd=tmp_path).returncode == 0
    before = snapshot(private_engine)
    last = last_event_id(private_engine)
    private_engine.dispose()
    changes = net_of_tick(simulator.step("moonshot"))

    # closing, not `with`: leaving a psycopg `with` block commits, and the server is gone.
    with (
        closing(psycopg.connect(url, autocommit=True)) as observer,
        closing(psycopg.connect(url)) as blocker,
    ):
        blocker.execute("LOCK TABLE file_events IN SHARE MODE")
        sync = subprocess.Popen(
            [sys.executable, "-m", "syncer", "sync", "--source", "moonshot"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(
                lambda: any(b[2] == "Lock" for b in syncer_backends(observer)),
                what="the sync waits for the lock inside its transaction",
            )
            private_server.stop("immediate")
            stdout, stderr = sync.communicate(timeout=60)
        finally:
            if sync.poll() is None:
                sync.kill()
    private_server.start()

    assert sync.returncode == 1, stdout + stderr
    assert "moonshot: failed" in stdout
    assert "writing the listing failed" in stdout
    assert snapshot(private_engine) == before
    again = syncer("sync", "--source", "moonshot", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert events_after(private_engine, last) == as_events(changes)


# --- A sync killed halfway through its transaction --------------------------------------


@pytest.mark.parametrize("blocked_at", ["file_events", "alerts"])
def test_a_sync_killed_mid_transaction_leaves_the_previous_state(
    own_database, own_engine, env, simulator, tmp_path, blocked_at
):
    """The test holds a lock that the sync's last writes wait for, so the sync is
    deterministically inside its transaction (run, file rows and, for `alerts`, the
    events written) when it is killed with SIGKILL.
    """
    # The killed sync's lease stays until it expires: the next sync waits that long.
    env = {
        **env,
        "SYNCER_DATABASE_URL": own_database,
        "SYNCER_LOCK_TIMEOUT": "120",
        "SYNCER_LEASE_TIMEOUT": "2",
    }
    simulator.add_files("moonshot", 4, status="processing")
    first = syncer("sync", "--source", "moonshot", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    before = snapshot(own_engine)
    changes = net_of_tick(simulator.step("moonshot"))  # 4 settle (one fails), new ones
    assert any(c.new_status == "error" for c in changes)

    with (
        psycopg.connect(own_database, autocommit=True) as observer,
        psycopg.connect(own_database) as blocker,
    ):
        blocker.execute(f"LOCK TABLE {blocked_at} IN SHARE MODE")
        sync = subprocess.Popen(
            [sys.executable, "-m", "syncer", "sync", "--source", "moonshot"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # The writer waits for the table; the connection that renews the sync's
            # lease may wait too, for the source's row, which the writer holds.
            wait_until(
                lambda: any(b[2:] == ("Lock", "relation") for b in syncer_backends(observer)),
                what="the sync waits for the lock inside its transaction",
            )
            (pid,) = [b[0] for b in syncer_backends(observer) if b[2:] == ("Lock", "relation")]
            written = {
                row[0]
                for row in observer.execute(
                    "SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                    " WHERE l.pid = %s AND l.granted AND l.mode = 'RowExclusiveLock'",
                    (pid,),
                )
            }
            assert {"sync_runs", "files"} <= written  # it has written, uncommitted
            sync.send_signal(signal.SIGKILL)
            assert sync.wait(timeout=30) == -signal.SIGKILL
        finally:
            if sync.poll() is None:
                sync.kill()
            blocker.rollback()  # the orphaned backend gets its lock, finds no client
        wait_until(
            lambda: (
                not observer.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone()
            ),
            what="the killed sync's backend ends",
        )

    assert snapshot(own_engine) == before
    last = last_event_id(own_engine)
    again = syncer("sync", "--source", "moonshot", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert events_after(own_engine, last) == as_events(changes)
    once_more = syncer("sync", "--source", "moonshot", env=env, cwd=tmp_path)
    assert once_more.returncode == 0
    assert events_after(own_engine, last) == as_events(changes)  # nothing twice
    alerts = query(own_engine, "SELECT kind, file_id FROM alerts")
    assert [a["file_id"] for a in alerts] == [c.file_id for c in changes if c.new_status == "error"]


# --- Locks that are never released --------------------------------------------------------


def test_every_connection_has_bounded_waits(own_database):
    engine = create_db_engine(Secret(own_database), lock_timeout=2.5)
    try:
        with engine.connect() as conn:
            shown = {
                name: conn.execute(sa.text(f"SHOW {name}")).scalar_one()
                for name in (
                    "lock_timeout",
                    "statement_timeout",
                    "idle_in_transaction_session_timeout",
                )
            }
    finally:
        engine.dispose()
    assert shown == {
        "lock_timeout": "2500ms",
        "statement_timeout": "5min",
        "idle_in_transaction_session_timeout": "10min",
    }


def take_lease(engine, source: str, owner: str = "run:stuck:1:abc") -> None:
    """What a stuck process would hold: the source's lease, for an hour."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO sources (name, provider, interval_seconds, next_due_at)"
                " VALUES (:s, 'moonshot', 1, now()) ON CONFLICT (name) DO NOTHING"
            ),
            {"s": source},
        )
        conn.execute(
            sa.text(
                "UPDATE sources SET lease_owner = :owner, lease_token = lease_token + 1,"
                " lease_expires_at = now() + interval '1 hour' WHERE name = :s"
            ),
            {"s": source, "owner": owner},
        )


def test_sync_gives_up_on_a_held_source_lease(own_database, own_engine, env, simulator, tmp_path):
    env = {**env, "SYNCER_DATABASE_URL": own_database, "SYNCER_LOCK_TIMEOUT": "2"}
    simulator.add_files("moonshot", 2)
    simulator.add_files("siliconflow", 2)
    take_lease(own_engine, "moonshot")  # a stuck sync
    started = time.monotonic()
    result = syncer("sync", env=env, cwd=tmp_path)
    took = time.monotonic() - started

    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "moonshot: busy: source 'moonshot': another sync of this source is still running"
        " (leased by run:stuck:1:abc until" in result.stdout
    )
    assert "siliconflow: ok" in result.stdout  # the other source is not held up
    assert took < 30  # the 2 s wait, plus starting Python on a loaded machine
    assert present_ids(own_engine, "moonshot") == set()
    assert count_runs(own_engine, "moonshot") == 0  # a busy source is not a failed run


def test_sync_gives_up_on_a_locked_table(own_database, own_engine, env, simulator, tmp_path):
    env = {**env, "SYNCER_DATABASE_URL": own_database, "SYNCER_LOCK_TIMEOUT": "2"}
    simulator.add_files("moonshot", 2)
    assert syncer("sync", "--source", "moonshot", env=env, cwd=tmp_path).returncode == 0
    simulator.add_files("moonshot", 1)
    before = query(own_engine, "SELECT xmin::text AS v, file_id FROM files ORDER BY file_id")
    with psycopg.connect(own_database) as blocker:  # say, a migration or a VACUUM FULL
        blocker.execute("LOCK TABLE files IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        result = syncer("sync", "--source", "moonshot", env=env, cwd=tmp_path)
        took = time.monotonic() - started

    assert result.returncode == 1, result.stdout + result.stderr
    assert "moonshot: failed" in result.stdout
    assert "canceling statement due to lock timeout" in result.stdout
    assert took < 30
    assert (
        query(own_engine, "SELECT xmin::text AS v, file_id FROM files ORDER BY file_id") == before
    )
    (failed,) = query(own_engine, "SELECT error FROM sync_runs WHERE outcome = 'failed'")
    assert "lock timeout" in failed["error"]


@contextmanager
def hold(engine: sa.Engine, what: str) -> Iterator[None]:
    """What a stuck process would hold: a sync's source lease, or a lock on `files`."""
    if what == "source lease":
        take_lease(engine, "moonshot")
        try:
            yield
        finally:  # as when the lease expires
            with engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "UPDATE sources SET lease_expires_at = now() - interval '1 second'"
                        " WHERE name = 'moonshot'"
                    )
                )
    else:
        with engine.connect() as conn, conn.begin():
            conn.execute(sa.text("LOCK TABLE files IN ACCESS EXCLUSIVE MODE"))
            yield


@pytest.mark.parametrize("held", ["source lease", "files table"])
def test_run_keeps_going_past_a_stuck_lock(
    own_database, own_engine, env, simulator, tmp_path, held
):
    service_env = {
        **env,
        "SYNCER_DATABASE_URL": own_database,
        "SYNCER_LOCK_TIMEOUT": "1",
        "SYNCER_HTTP_HOST": "127.0.0.1",
        "SYNCER_HTTP_PORT": str(free_port()),
    }
    simulator.add_files("moonshot", 2, status="ok")
    service = LoggedService(service_env, tmp_path, tmp_path / "service.log")
    try:
        wait_for(lambda: in_sync_with(own_engine, simulator, "moonshot"), service.process)
        with hold(own_engine, held):
            simulator.add_file("moonshot", status="error")
            time.sleep(4 * INTERVAL)  # several ticks run into the lock
            alive = get(service_env, "/healthz")
            ready = get(service_env, "/readyz")
            metrics = get(service_env, "/metrics")
            if held == "source lease":  # a scrape reads `files`, locked in the other case
                lag = scrape(service_env)["syncer_source_lag_seconds", (("source", "moonshot"),)]
            assert service.alive()
        wait_for(lambda: in_sync_with(own_engine, simulator, "moonshot"), service.process)
    finally:
        stderr = service.stop()

    assert (alive.status_code, ready.status_code, metrics.status_code) == (200, 200, 200)
    if held == "source lease":
        # The service never waits for a leased source: it is not claimed, and shows late.
        assert lag >= 2 * INTERVAL
        assert count_runs(own_engine, "moonshot", outcome="failed") == 0
    else:
        assert count_runs(own_engine, "moonshot", outcome="failed") >= 1
        errors = query(own_engine, "SELECT error FROM sync_runs WHERE outcome = 'failed'")
        assert all("lock timeout" in e["error"] for e in errors)
    assert "deadlock" not in stderr
