"""The scheduler with real processes (issue 12): bounded workers fed from the `sources`
table, leases instead of held connections, replicas that share the sources.

Each test runs `syncer run` (or `syncer sync`) against a simulator with several
accounts, configured through SYNCER_CONFIG, with short intervals and lease times.
What is asserted is order and overlap in `sync_runs` and the simulator's request
counts, never how fast the machine is.
"""

from __future__ import annotations

import re
import signal
import time
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from history import as_events, assert_history_consistent, events_after, last_event_id, net_of_tick
from processes import LoggedService, stop_all
from test_alerting_e2e import free_port, scrape
from test_cli import query, syncer
from test_concurrency import wait

from syncer.simulator import Account, Fault, Simulator

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def accounts(prefix: str, count: int) -> list[Account]:
    return [Account(f"{prefix}{n}", "moonshot", f"sk-sim-{prefix}{n}") for n in range(count)]


@pytest.fixture
def farm() -> Iterator[Simulator]:
    """Eight Moonshot accounts: ok0..ok3 answer, down0..down3 can be put in an outage."""
    with Simulator([*accounts("ok", 4), *accounts("down", 4)], seed=5) as sim:
        for account in sim.accounts:
            sim.add_files(account.name, 3)
        yield sim


def farm_env(env: dict[str, str], sim: Simulator, tmp_path: Path, interval: str) -> dict[str, str]:
    """`env` with every simulator account as a source of SYNCER_CONFIG, and none other."""
    base = {k: v for k, v in env.items() if not k.startswith(("MOONSHOT_", "SILICONFLOW_"))}
    tables = []
    for account in sim.accounts:
        variable = f"KEY_{account.name.upper()}"
        base[variable] = account.api_key
        tables.append(
            f'[[sources]]\nname = "{account.name}"\nprovider = "moonshot"\n'
            f'api_key_env = "{variable}"\nbase_url = "{sim.base_url(account.name)}"\n'
            f'interval = "{interval}"\n'
        )
    config = tmp_path / "sources.toml"
    config.write_text("\n".join(tables))
    return {**base, "SYNCER_CONFIG": str(config), "SYNCER_LEASE_TIMEOUT": "3s"}


def execute(engine, sql: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(sql))


def runs(engine, outcome: str | None = None) -> list[dict]:
    sql = "SELECT source, outcome, started_at, finished_at FROM sync_runs"
    if outcome:
        sql += " WHERE outcome = :outcome"
    return query(engine, sql + " ORDER BY id", outcome=outcome)


def most_at_once(spans: list[dict]) -> int:
    """The most runs of `spans` that were in progress at one moment."""
    edges = sorted(
        [(r["started_at"], 1) for r in spans] + [(r["finished_at"], -1) for r in spans],
        key=lambda edge: (edge[0], edge[1]),
    )
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


def test_a_provider_outage_never_starves_healthy_sources(engine, env, farm, tmp_path):
    """Half the sources answer 503 and retry for 4 s each: they get at most half of the
    four workers, and the healthy half keeps syncing meanwhile (the old scheduler let
    six failing sources hold every pooled connection)."""
    for n in range(4):
        farm.set_persistent_fault(f"down{n}", Fault.status(503))
    service_env = {
        **farm_env(env, farm, tmp_path, "1s"),
        "SYNCER_WORKERS": "4",
        "SYNCER_RETRY_TIMEOUT": "4",
    }
    service = LoggedService(service_env, tmp_path, tmp_path / "service.log")
    try:
        wait(lambda: len(runs(engine, "failed")) >= 6, [service], timeout=90, what="failed runs")
    finally:
        output = service.stop()

    failed, ok = runs(engine, "failed"), runs(engine, "ok")
    assert {r["source"] for r in failed} <= {f"down{n}" for n in range(4)}
    # A source's first failure found it healthy; after that it counts as failing, and
    # failing sources get half the workers.
    first = {}
    for run in failed:
        first.setdefault(run["source"], run)
    assert most_at_once([r for r in failed if r is not first[r["source"]]]) <= 2
    # While failing syncs retried, every healthy source synced, again and again.
    first_failure_end = min(r["finished_at"] for r in failed)
    last_failure_end = max(r["finished_at"] for r in failed)
    during = [r for r in ok if first_failure_end <= r["started_at"] <= last_failure_end]
    counts = {f"ok{n}": sum(1 for r in during if r["source"] == f"ok{n}") for n in range(4)}
    assert min(counts.values()) >= 3, counts
    assert "QueuePool limit" not in output


def test_two_replicas_list_each_source_once_per_interval(engine, env, farm, tmp_path):
    """Each due source is claimed by one replica: requests per source per interval stay
    at one with two replicas (the old advisory lock made them take turns, listing
    every source twice), every change is recorded once, and both replicas work."""
    service_env = farm_env(env, farm, tmp_path, "2s")
    replicas = [LoggedService(service_env, tmp_path, tmp_path / f"replica-{n}.log") for n in (1, 2)]
    names = [account.name for account in farm.accounts]
    try:
        wait(
            lambda: {r["source"] for r in runs(engine, "ok")} == set(names),
            replicas,
            timeout=60,
            what="every source synced once",
        )
        before = {name: farm.request_count(name) for name in names}
        start, started = last_event_id(engine), time.monotonic()
        changes = net_of_tick(farm.step())
        time.sleep(10)  # five intervals
        elapsed = time.monotonic() - started
        after = {name: farm.request_count(name) for name in names}
        wait(lambda: events_after(engine, start) == as_events(changes), replicas, timeout=30)
    finally:
        outputs = stop_all(replicas)

    intervals = elapsed / 2
    for name in names:
        requests = after[name] - before[name]
        assert 1 <= requests <= intervals + 1, (name, requests, intervals)
    for name in names:
        assert_history_consistent(engine, name)
    # Both replicas took part, each a fair share (it was 48 syncs to 1 when their claim
    # ticks were not jittered: one replica's tick came first every time).
    shares = [output.count('"outcome": "ok"') for output in outputs]
    assert min(shares) >= sum(shares) / 5, shares
    for output in outputs:
        assert "Traceback" not in output


def lease_holder(engine, source: str) -> tuple[str | None, int]:
    (row,) = query(engine, "SELECT lease_owner, lease_token FROM sources WHERE name = :s", s=source)
    return row["lease_owner"], row["lease_token"]


def test_a_replica_killed_mid_sync_is_taken_over_within_the_lease_time(engine, env, farm, tmp_path):
    """SIGKILL a replica while it waits on a slow provider: the source's lease expires
    (3 s), the other replica syncs the source, and the changes are recorded once."""
    service_env = farm_env(env, farm, tmp_path, "1s")
    replicas = [LoggedService(service_env, tmp_path, tmp_path / f"replica-{n}.log") for n in (1, 2)]
    try:
        wait(lambda: len(runs(engine, "ok")) >= 16, replicas, timeout=60, what="syncing")
        start = last_event_id(engine)
        changes = net_of_tick(farm.step("ok0"))
        asked = farm.request_count("ok0")
        farm.inject("ok0", Fault.slow(30))  # the next listing of ok0 hangs
        wait(lambda: farm.request_count("ok0") > asked, replicas, what="the slow request")
        owner, token = lease_holder(engine, "ok0")
        assert owner is not None
        pid = int(owner.split(":")[2])
        (victim,) = [r for r in replicas if r.pid == pid]
        (survivor,) = [r for r in replicas if r is not victim]
        victim.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert victim.process.wait(timeout=30) == -signal.SIGKILL
        wait(
            lambda: events_after(engine, start) == as_events(changes),
            [survivor],
            timeout=30,
            what="the survivor records the changes",
        )
        taken_over_after = time.monotonic() - killed_at
        new_owner, new_token = lease_holder(engine, "ok0")
    finally:
        outputs = stop_all([replica for replica in replicas if replica.alive()])

    assert new_token > token  # another lease, not the dead replica's
    assert new_owner is None or new_owner != owner
    # The lease time (3 s) plus an interval and room for a loaded machine.
    assert taken_over_after < 3 + 1 + 15, taken_over_after
    assert events_after(engine, start) == as_events(changes)  # once, nothing lost
    assert_history_consistent(engine, "ok0")
    assert outputs
    assert "Traceback" not in outputs[0]


def lease_lost(service_env: dict[str, str], source: str) -> float:
    key = ("syncer_sync_skipped_total", (("reason", "lease_lost"), ("source", source)))
    return scrape(service_env)[key]


def test_a_lost_lease_is_recorded_and_shown_on_metrics(engine, env, farm, tmp_path):
    """The lease passes to someone else while the sync waits on the provider: the late
    listing is dropped, with a WARNING line and syncer_sync_skipped_total on /metrics."""
    service_env = {
        **farm_env(env, farm, tmp_path, "1s"),
        "SYNCER_HTTP_HOST": "127.0.0.1",
        "SYNCER_HTTP_PORT": str(free_port()),
    }
    service = LoggedService(service_env, tmp_path, tmp_path / "service.log")
    try:
        wait(lambda: len(runs(engine, "ok")) >= 8, [service], timeout=60, what="syncing")
        start = last_event_id(engine)
        farm.add_file("ok1", status="ok")
        asked = farm.request_count("ok1")
        farm.inject("ok1", Fault.slow(3))
        wait(lambda: farm.request_count("ok1") > asked, [service], what="the slow request")
        # Another process takes the lease over, as after an expiry, then lets it go.
        execute(
            engine,
            "UPDATE sources SET lease_owner = 'run:intruder:1:abc',"
            " lease_token = lease_token + 1, lease_expires_at = now() + interval '1 second'"
            " WHERE name = 'ok1'",
        )
        wait(lambda: lease_lost(service_env, "ok1") > 0, [service], what="the sync notices")
        skipped = scrape(service_env)
        wait(lambda: events_after(engine, start) != [], [service], what="a later sync")
    finally:
        output = service.stop()

    assert skipped["syncer_sync_skipped_total", (("reason", "lease_lost"), ("source", "ok1"))] == 1
    assert skipped["syncer_sync_skipped_total", (("reason", "lease_lost"), ("source", "ok0"))] == 0
    assert ("syncer_source_lag_seconds", (("source", "ok1"),)) in skipped
    (line,) = [line for line in output.splitlines() if "this listing was not applied" in line]
    assert '"level": "warning"' in line
    assert "source 'ok1'" in line
    assert len(events_after(engine, start)) == 1  # applied once, by the later sync


def test_sync_runs_the_chosen_sources_at_once(engine, env, farm, tmp_path):
    """`syncer sync` over sources in an outage takes about one retry budget, not one
    per source: their failed runs overlap."""
    for n in range(3):
        farm.set_persistent_fault(f"down{n}", Fault.status(503))
    sync_env = {**farm_env(env, farm, tmp_path, "5m"), "SYNCER_RETRY_TIMEOUT": "3"}
    chosen = [arg for n in range(3) for arg in ("--source", f"down{n}")]

    result = syncer("sync", *chosen, "--source", "ok0", env=sync_env, cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sorted(line.split(":")[0] for line in lines) == ["down0", "down1", "down2", "ok0"]
    assert sum("failed" in line for line in lines) == 3
    failed = runs(engine, "failed")
    assert len(failed) == 3
    assert most_at_once(failed) == 3


def test_sync_reports_a_source_leased_by_a_running_service(engine, env, farm, tmp_path):
    """A source whose lease another process holds is reported as busy, naming the holder,
    after SYNCER_LOCK_TIMEOUT; the other sources sync."""
    sync_env = {**farm_env(env, farm, tmp_path, "5m"), "SYNCER_LOCK_TIMEOUT": "1"}
    assert syncer("sync", "--source", "ok0", env=sync_env, cwd=tmp_path).returncode == 0
    execute(
        engine,
        "UPDATE sources SET lease_owner = 'run:replica-a:7:abc', lease_token = lease_token + 1,"
        " lease_expires_at = now() + interval '1 hour' WHERE name = 'ok0'",
    )

    result = syncer("sync", "--source", "ok0", "--source", "ok1", env=sync_env, cwd=tmp_path)

    assert result.returncode == 1
    assert re.search(
        r"ok0: busy: source 'ok0': another sync of this source is still running"
        r" \(leased by run:replica-a:7:abc until [0-9:]+ \w+\)",
        result.stdout,
    ), result.stdout
    assert "ok1: ok" in result.stdout
