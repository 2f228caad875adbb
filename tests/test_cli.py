"""End to end: the real `syncer` command against the simulator and real PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click
import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from syncer.cli import cli
from syncer.providers import provider_names
from syncer.simulator import Fault, Simulator

SECRET_KEYS = ("sk-sim-siliconflow", "sk-sim-moonshot")


def syncer(
    *args: str, env: dict[str, str], cwd, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "syncer", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert_no_secret(result.stdout + result.stderr)
    return result


def assert_no_secret(text: str) -> None:
    for key in SECRET_KEYS:
        assert key not in text


def query(engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


def present_ids(engine, source: str) -> set[str]:
    rows = query(engine, "SELECT file_id FROM current_files WHERE source = :s", s=source)
    return {r["file_id"] for r in rows}


def listed_ids(simulator, account: str) -> set[str]:
    return {f["id"] for f in simulator.files(account)}


def test_sync_mirrors_both_providers_and_their_changes(engine, env, simulator, tmp_path):
    simulator.add_files("siliconflow", 4)
    simulator.add_files("moonshot", 5, status="processing")

    first = syncer("sync", env=env, cwd=tmp_path)

    assert first.returncode == 0, first.stdout + first.stderr
    assert "siliconflow: ok" in first.stdout
    assert "moonshot: ok" in first.stdout
    assert present_ids(engine, "siliconflow") == listed_ids(simulator, "siliconflow")
    assert present_ids(engine, "moonshot") == listed_ids(simulator, "moonshot")

    changes = simulator.step() + simulator.step() + simulator.step()
    second = syncer("sync", env=env, cwd=tmp_path)

    assert second.returncode == 0, second.stderr
    assert changes
    # Three ticks between two syncs: a file that appeared and then changed is one
    # `appeared` event with its latest state, so compare the net effect.
    recorded = query(engine, "SELECT source, file_id FROM file_events WHERE sync_run_id > 2")
    assert {(r["source"], r["file_id"]) for r in recorded} <= {
        (c.account, c.file_id) for c in changes
    }
    for account in ("moonshot", "siliconflow"):
        assert present_ids(engine, account) == listed_ids(simulator, account)
    statuses = query(engine, "SELECT file_id, status FROM current_files WHERE source = 'moonshot'")
    assert {r["file_id"]: r["status"] for r in statuses} == {
        f["id"]: f["status"] for f in simulator.files("moonshot")
    }
    runs = query(engine, "SELECT source, outcome FROM sync_runs ORDER BY id")
    assert [r["outcome"] for r in runs] == ["ok"] * 4


def test_each_tick_is_recorded_as_exactly_its_events(engine, env, simulator, tmp_path):
    simulator.add_files("moonshot", 3, status="processing")
    assert syncer("sync", "--source", "moonshot", env=env, cwd=tmp_path).returncode == 0
    for _ in range(4):
        changes = simulator.step("moonshot")
        last = query(engine, "SELECT coalesce(max(id), 0) AS id FROM file_events")[0]["id"]

        assert syncer("sync", "--source", "moonshot", env=env, cwd=tmp_path).returncode == 0

        recorded = query(
            engine,
            "SELECT file_id, kind, old_status, new_status FROM file_events"
            " WHERE id > :id ORDER BY id",
            id=last,
        )
        assert [
            (r["file_id"], r["kind"], r["old_status"], r["new_status"]) for r in recorded
        ] == sorted((c.file_id, c.kind.value, c.old_status, c.new_status) for c in changes)


def test_provider_outage_fails_the_run_and_changes_nothing(engine, env, simulator, tmp_path):
    simulator.add_files("moonshot", 3, status="ok")
    assert syncer("sync", env=env, cwd=tmp_path).returncode == 0
    before = query(engine, "SELECT xmin::text AS v, file_id FROM files ORDER BY file_id")
    simulator.set_persistent_fault("moonshot", Fault.status(503))

    result = syncer("sync", env=env, cwd=tmp_path)

    assert result.returncode == 1
    assert "moonshot: failed" in result.stdout
    assert "HTTP 503" in result.stdout
    assert "siliconflow: ok" in result.stdout  # one failing source does not stop the other
    assert query(engine, "SELECT xmin::text AS v, file_id FROM files ORDER BY file_id") == before
    (failed,) = query(engine, "SELECT * FROM sync_runs WHERE outcome = 'failed'")
    assert failed["source"] == "moonshot"
    assert "gave up after" in failed["error"]


def test_bad_key_fails_at_once_naming_the_source_never_the_key(engine, env, simulator, tmp_path):
    env["MOONSHOT_API_KEY"] = "sk-sim-moonshot-wrong"  # contains a registered secret's text
    started = time.monotonic()

    result = syncer("sync", "--source", "moonshot", env=env, cwd=tmp_path)

    assert result.returncode == 1
    assert time.monotonic() - started < 30  # not retried for the budget
    assert "source 'moonshot'" in result.stdout
    assert "HTTP 401" in result.stdout
    assert simulator.request_count("moonshot") == 1
    assert "wrong" not in result.stdout + result.stderr
    (run,) = query(engine, "SELECT outcome, error FROM sync_runs")
    assert run["outcome"] == "failed"
    assert "wrong" not in run["error"]


def test_truncated_listing_is_incomplete_and_deletes_nothing(engine, env, simulator, tmp_path):
    simulator.add_files("siliconflow", 5)
    assert syncer("sync", "--source", "siliconflow", env=env, cwd=tmp_path).returncode == 0
    simulator.add_files("siliconflow", 5)
    env["SILICONFLOW_LIST_LIMIT"] = "5"  # the provider now returns only the oldest 5

    result = syncer("sync", "--source", "siliconflow", env=env, cwd=tmp_path)

    assert result.returncode == 1
    assert "siliconflow: incomplete" in result.stdout
    assert len(present_ids(engine, "siliconflow")) == 5
    assert query(engine, "SELECT count(*) AS n FROM file_events WHERE kind = 'disappeared'") == [
        {"n": 0}
    ]


def test_malformed_items_are_skipped_and_counted(engine, env, simulator, tmp_path):
    good = simulator.add_file("moonshot", status="ok")
    items = [*simulator.files("moonshot"), {"id": 42}, {"id": "x", "bytes": "big"}, "junk"]
    simulator.set_raw_items("moonshot", items)

    result = syncer("sync", "--source", "moonshot", env=env, cwd=tmp_path)

    assert result.returncode == 1
    assert "moonshot: incomplete" in result.stdout
    assert "3 unusable items skipped" in result.stdout
    assert present_ids(engine, "moonshot") == {good}
    assert "skipped an unusable item" in result.stderr


@pytest.mark.parametrize(
    "fault",
    [Fault.truncated(), Fault.html(), Fault.reset(), Fault.rate_limited(retry_after=1)],
    ids=["truncated-json", "html", "connection-reset", "429-retry-after"],
)
def test_a_passing_fault_is_retried_and_the_sync_succeeds(engine, env, simulator, tmp_path, fault):
    simulator.add_files("moonshot", 2, status="ok")
    simulator.inject("moonshot", fault)

    result = syncer("sync", "--source", "moonshot", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert simulator.request_count("moonshot") == 2
    assert "source 'moonshot'" in result.stderr
    assert "; retry 1 in" in result.stderr
    assert present_ids(engine, "moonshot") == listed_ids(simulator, "moonshot")


def test_three_concurrent_syncs_record_each_event_once(engine, env, simulator, tmp_path):
    simulator.add_files("moonshot", 30, status="processing")
    simulator.add_files("siliconflow", 30)

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: syncer("sync", env=env, cwd=tmp_path), range(3)))

    assert [r.returncode for r in results] == [0, 0, 0], [r.stdout + r.stderr for r in results]
    assert query(engine, "SELECT count(*) AS n FROM file_events") == [{"n": 60}]
    duplicates = query(
        engine,
        "SELECT source, file_id FROM file_events GROUP BY source, file_id HAVING count(*) > 1",
    )
    assert duplicates == []
    assert query(engine, "SELECT count(*) AS n FROM sync_runs WHERE outcome = 'ok'") == [{"n": 6}]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"SYNCER_INTERVAL": "often"}, "SYNCER_INTERVAL"),
        ({"MOONSHOT_BASE_URL": "http://api.moonshot.cn/v1"}, "SYNCER_ALLOW_INSECURE_HTTP"),
        ({"SYNCER_DATABASE_URL": "mysql://root@localhost/x"}, "SYNCER_DATABASE_URL"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(env, tmp_path, extra, named):
    result = syncer("sync", env={**env, **extra}, cwd=tmp_path)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert named in lines[0]


def test_unreachable_database_is_one_line_without_the_password(env, tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env["SYNCER_DATABASE_URL"] = f"postgresql://syncer:hunter2-Pa55@127.0.0.1:{port}/syncer"
    env["SYNCER_DB_WAIT"] = "0"  # fail at once; tests/test_deploy.py covers the wait

    result = syncer("migrate", env=env, cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith("syncer: database unavailable: OperationalError")
    assert "Traceback" not in result.stderr
    assert "hunter2-Pa55" not in result.stdout + result.stderr

    checked = syncer("check", env=env, cwd=tmp_path)
    assert checked.returncode == 1
    assert "database: database unavailable: OperationalError" in checked.stdout
    assert "source moonshot: ok" in checked.stdout  # the other checks still run
    assert "hunter2-Pa55" not in checked.stdout + checked.stderr


def test_unknown_source_is_bad_usage(env, tmp_path):
    result = syncer("sync", "--source", "nope", env=env, cwd=tmp_path)

    assert result.returncode == 2
    assert "nope" in result.stderr


def test_no_sources_is_bad_usage(env, tmp_path):
    env = {k: v for k, v in env.items() if not k.startswith(("MOONSHOT_", "SILICONFLOW_"))}
    result = syncer("sync", env=env, cwd=tmp_path)

    assert result.returncode == 2
    assert "no sources configured" in result.stderr


def test_check_reports_each_part(engine, env, simulator, tmp_path):
    good = syncer("check", env=env, cwd=tmp_path)
    assert good.returncode == 0, good.stdout
    assert "database: ok" in good.stdout
    assert "source moonshot: ok" in good.stdout

    simulator.set_persistent_fault("siliconflow", Fault.status(403))
    bad = syncer("check", env=env, cwd=tmp_path)
    assert bad.returncode == 1
    assert "source siliconflow:" in bad.stdout
    assert "HTTP 403" in bad.stdout
    assert "source moonshot: ok" in bad.stdout


def test_every_command_has_help():
    # In-process: each `syncer ... --help` in a subprocess of its own cost seconds of
    # imports; the real entry point is exercised by every other test in this file.
    runner = CliRunner()
    groups = [((), cli)]
    while groups:
        path, group = groups.pop()
        for name, command in group.commands.items():
            result = runner.invoke(cli, [*path, name, "--help"], prog_name="syncer")
            assert result.exit_code == 0, (path, name, result.output)
            assert f"Usage: syncer {' '.join((*path, name))}" in result.output
            if isinstance(command, click.Group):
                groups.append(((*path, name), command))


def test_run_syncs_every_interval_and_stops_cleanly_on_sigterm(engine, env, simulator, tmp_path):
    simulator.add_files("moonshot", 2, status="processing")
    simulator.set_persistent_fault("siliconflow", Fault.status(401))
    service = start_service(env, tmp_path)
    try:
        wait_for(lambda: count_runs(engine, "moonshot") >= 2, service)
        simulator.step("moonshot")
        wait_for(
            lambda: present_ids(engine, "moonshot") == listed_ids(simulator, "moonshot"), service
        )
        assert count_runs(engine, "siliconflow", outcome="failed") >= 1  # failing, not fatal
    finally:
        service.send_signal(signal.SIGTERM)
        stdout, stderr = service.communicate(timeout=30)
    assert service.returncode == 0, stderr
    assert "stopped" in stderr
    assert_no_secret(stdout + stderr)


def test_run_survives_a_database_outage(engine, env, database_url, simulator, tmp_path):
    simulator.add_files("moonshot", 1, status="ok")
    env = {k: v for k, v in env.items() if not k.startswith("SILICONFLOW_")}
    service = start_service(env, tmp_path)
    name = sa.make_url(database_url).database
    try:
        wait_for(lambda: count_runs(engine, "moonshot") >= 1, service)
        engine.dispose()
        with admin(database_url) as conn:  # refuse new connections and cut the live ones
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        time.sleep(3)  # a few ticks fail while the database is away
        assert service.poll() is None
        with admin(database_url) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        simulator.add_file("moonshot", status="error")
        wait_for(
            lambda: present_ids(engine, "moonshot") == listed_ids(simulator, "moonshot"), service
        )
    finally:
        with admin(database_url) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        service.send_signal(signal.SIGTERM)
        _, stderr = service.communicate(timeout=30)
    assert service.returncode == 0
    assert "will try again next interval" in stderr


def test_demo_runs_the_whole_loop_on_an_embedded_database(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCER_", "DATABASE_URL"))}
    env["SYNCER_DATA_DIR"] = str(tmp_path / "data")

    result = syncer("demo", "--steps", "4", "--pause", "0.1", env=env, cwd=tmp_path, timeout=120)

    assert result.returncode == 0, result.stderr
    for shown in (
        "appeared",
        "status_changed processing -> ok",
        "processing -> error",
        "disappeared",
        "inventory",
        "failed",
        *(f"{name}-demo" for name in provider_names()),  # every provider takes part
    ):
        assert shown in result.stdout


def test_check_shows_every_provider(engine, env, tmp_path):
    with Simulator(seed=3) as every:  # one account per provider
        for account in every.accounts:
            prefix = account.provider.upper()
            env[f"{prefix}_API_KEY"] = account.api_key
            env[f"{prefix}_BASE_URL"] = every.base_url(account.name)
            every.add_files(account.name, 2)

        checked = syncer("check", env=env, cwd=tmp_path)

    assert checked.returncode == 0, checked.stdout
    assert f"settings: ok ({len(provider_names())} sources" in checked.stdout
    for name in provider_names():
        assert f"source {name}: ok (2 files listed)" in checked.stdout


def test_without_a_database_url_syncer_uses_the_embedded_server(env, tmp_path):
    env = {k: v for k, v in env.items() if k != "SYNCER_DATABASE_URL"}
    env["SYNCER_LOG_FORMAT"] = "console"

    migrated = syncer("migrate", env=env, cwd=tmp_path, timeout=120)
    synced = syncer("sync", env=env, cwd=tmp_path, timeout=120)

    assert migrated.returncode == 0, migrated.stderr
    assert "embedded PostgreSQL" in migrated.stderr
    assert str(tmp_path / "data") in migrated.stderr
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert (tmp_path / "data" / "pgdata" / "PG_VERSION").is_file()


def start_service(env: dict[str, str], cwd) -> subprocess.Popen[str]:
    """`syncer run` syncing every second."""
    return subprocess.Popen(
        [sys.executable, "-m", "syncer", "run"],
        env={**env, "SYNCER_INTERVAL": "1s"},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def count_runs(engine, source: str, outcome: str | None = None) -> int:
    sql = "SELECT count(*) AS n FROM sync_runs WHERE source = :s"
    if outcome:
        sql += " AND outcome = :o"
    return query(engine, sql, s=source, o=outcome)[0]["n"]


def wait_for(condition, service: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            pytest.fail(f"syncer run exited early: {service.communicate()[1]}")
        try:
            if condition():
                return
        except sa.exc.OperationalError:
            pass
        time.sleep(0.2)
    pytest.fail("condition not met in time")


def admin(database_url: str) -> psycopg.Connection[Any]:
    url = sa.make_url(database_url).set(database="postgres").render_as_string(hide_password=False)
    return psycopg.connect(url, autocommit=True)
