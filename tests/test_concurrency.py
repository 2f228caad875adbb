"""Concurrency with real processes (issue 7, item 3): five `syncer sync` at once, and
two `syncer run` replicas sharing one database while the provider keeps changing.

The simulator's `step()` returns the changes it made: the truth. Each change must be
recorded exactly once however many processes race for it (no duplicate, no lost
event), each alert raised once and delivered once, and no process may deadlock.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest
from history import (
    alert_ids,
    as_events,
    assert_history_consistent,
    events_after,
    in_sync_with,
    last_event_id,
    net_of_tick,
)
from processes import LoggedService, stop_all
from receiver import Receiver
from test_cli import query, syncer

if TYPE_CHECKING:
    from collections.abc import Sequence

PROCESSES = 5
ROUNDS = 3
CHURN_SECONDS = 10.0
SOURCES = ("moonshot", "siliconflow")


def no_deadlock(output: str) -> None:
    assert "deadlock" not in output.lower()
    assert "Traceback" not in output


@pytest.mark.parametrize("sources", [("moonshot",), SOURCES], ids=["one source", "both sources"])
def test_five_concurrent_syncs_record_each_change_once(engine, env, simulator, tmp_path, sources):
    simulator.add_files("moonshot", 20, status="processing")
    simulator.add_files("siliconflow", 20)
    args = [arg for source in sources for arg in ("--source", source)]

    def race() -> None:
        with ThreadPoolExecutor(PROCESSES) as pool:
            results = list(
                pool.map(
                    lambda _: syncer("sync", *args, env=env, cwd=tmp_path, timeout=120),
                    range(PROCESSES),
                )
            )
        for result in results:
            assert result.returncode == 0, result.stdout + result.stderr
            no_deadlock(result.stdout + result.stderr)

    race()
    truth = []
    appeared = query(engine, "SELECT source, count(*) AS n FROM file_events GROUP BY source")
    assert {r["source"]: r["n"] for r in appeared} == dict.fromkeys(sources, 20)
    for _ in range(ROUNDS):
        last = last_event_id(engine)
        changes = [c for c in net_of_tick(simulator.step()) if c.account in sources]
        truth.extend(changes)
        race()
        assert events_after(engine, last) == as_events(changes)  # once, however many raced
    for source in sources:
        assert in_sync_with(engine, simulator, source)
        assert_history_consistent(engine, source)
    runs = query(
        engine,
        "SELECT source, outcome, appeared + status_changed + changed + disappeared"
        " + reappeared AS events FROM sync_runs ORDER BY id",
    )
    assert Counter((r["source"], r["outcome"]) for r in runs) == {
        (s, "ok"): PROCESSES * (ROUNDS + 1) for s in sources
    }
    # In each race one process found the changes; the four after it found nothing.
    assert Counter(r["source"] for r in runs if r["events"]) == dict.fromkeys(sources, ROUNDS + 1)
    failed = sorted(c.file_id for c in truth if c.new_status == "error")
    alerts = query(engine, "SELECT file_id FROM alerts WHERE kind = 'file_failed' ORDER BY file_id")
    assert [a["file_id"] for a in alerts] == failed


def test_two_replicas_share_one_database(engine, env, simulator, tmp_path):
    simulator.add_files("moonshot", 10, status="processing")
    simulator.add_files("siliconflow", 10)
    with Receiver() as receiver:
        replica_env = {
            **env,
            "SYNCER_ALERT_URLS": receiver.url,
            "SYNCER_ALERT_DISPATCH_INTERVAL": "0.3s",
        }
        replicas = [
            LoggedService(replica_env, tmp_path, tmp_path / f"replica-{n}.log") for n in (1, 2)
        ]
        truth = []
        ticks = 0
        try:

            def caught_up() -> bool:
                return all(in_sync_with(engine, simulator, s) for s in SOURCES)

            wait(caught_up, replicas, what="the replicas record the tick")
            start = last_event_id(engine)
            churn_until = time.monotonic() + CHURN_SECONDS
            while time.monotonic() < churn_until:
                truth += net_of_tick(simulator.step())  # files appear, settle, fail, go
                ticks += 1
                wait(caught_up, replicas, what="the replicas record the tick")
            recorded = events_after(engine, start)
            failed = [c.file_id for c in truth if c.new_status == "error"]
            wait(lambda: len(receiver.received) >= len(failed), replicas, what="alerts arrive")
            time.sleep(2)  # more dispatch ticks on both replicas: nothing may come twice
        finally:
            outputs = stop_all(replicas)

        assert ticks >= 5
        assert recorded == as_events(truth)
        for source in SOURCES:
            assert_history_consistent(engine, source)
        assert failed
        delivered = alert_ids(receiver.received)
        assert len(delivered) == len(set(delivered))  # each delivered exactly once
        alerts = query(engine, "SELECT alert_key, kind, file_id, state FROM alerts")
        assert sorted(delivered) == sorted(a["alert_key"] for a in alerts)
        assert sorted(a["file_id"] for a in alerts) == sorted(failed)  # raised once each
        assert {a["state"] for a in alerts} == {"sent"}
    for output in outputs:
        no_deadlock(output)
    # Which replica syncs a source is up to whoever claims it first: one may take every
    # tick (tests/test_scheduling.py shows the sharing itself, once per interval).
    assert any('"outcome": "ok"' in output for output in outputs)
    runs = query(engine, "SELECT outcome FROM sync_runs")
    assert {r["outcome"] for r in runs} == {"ok"}


def wait(
    condition, services: Sequence[LoggedService] = (), timeout: float = 30, what: str = ""
) -> None:
    """Until `condition()`, failing with the services' logs if one dies or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or not all(s.alive() for s in services):
            logs = "\n".join(s.output()[-3000:] for s in services)
            pytest.fail(f"{what or 'condition'}: not met within {timeout} s\n{logs}")
        time.sleep(0.1)
