"""Retention: what a prune removes, what it must keep, and that it is counted exactly once.

The run ledger is built two ways: rows written straight into `sync_runs` (each rule
of retention, one run at a time, and many runs for the races), and a history made by
real syncs of the simulator over 45 simulated days, on which every documented query
and report must answer the same before and after a prune. Then real processes: two
`syncer prune` at once, and `syncer run`'s scheduled pass.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from test_cli import syncer
from test_reporting_docs import QUERIES
from test_reporting_seed import rows

from syncer.alerts import SourceHistory
from syncer.config import SourceConfig, SyncRules
from syncer.db import outbox, sources
from syncer.metrics import DatabaseGauges
from syncer.model import Outcome, StatusClass
from syncer.redaction import Secret
from syncer.reports import Filters, Report, events_report, files_report, runs_report
from syncer.retention import RetentionPolicy, prune, prune_runs
from syncer.simulator import Account, Fault, Simulator
from syncer.sync import sync_source

if TYPE_CHECKING:
    from collections.abc import Iterator

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
OLD = NOW - 60 * DAY


@pytest.fixture
def ledger(engine: sa.Engine) -> Iterator[sa.Engine]:
    """The test database, with the tables retention writes emptied after the test too."""
    yield engine
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE sync_run_daily, pruned_history"))


def add_run(
    conn: sa.Connection, source: str, at: datetime, outcome: str = "ok", **counts: int
) -> int:
    """One `sync_runs` row; `counts` sets counters such as appeared or files_listed."""
    columns = {"files_listed": 10, **counts}
    names = ", ".join(columns)
    values = ", ".join(f":{name}" for name in columns)
    return int(
        conn.execute(
            sa.text(
                f"INSERT INTO sync_runs (source, provider, started_at, finished_at, outcome,"
                f" {names}) VALUES (:source, 'moonshot', :at, :at + interval '1.5 seconds',"
                f" :outcome, {values}) RETURNING id"
            ),
            {"source": source, "at": at, "outcome": outcome, **columns},
        ).scalar_one()
    )


def add_event(conn: sa.Connection, run_id: int, source: str, file_id: str, kind: str,
              at: datetime) -> None:  # fmt: skip
    conn.execute(
        sa.text(
            "INSERT INTO file_events (sync_run_id, occurred_at, source, provider, file_id, kind,"
            " new_status, changes) VALUES (:run, :at, :source, 'moonshot', :file, :kind, 'ok',"
            " '{}')"
        ),
        {"run": run_id, "at": at, "source": source, "file": file_id, "kind": kind},
    )


def add_alert(conn: sa.Connection, run_id: int | None, key: str, state: str, at: datetime) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO alerts (alert_key, created_at, kind, source, provider, sync_run_id,"
            " payload, state, next_attempt_at, sent_at) VALUES (:key, :at, 'source_failing',"
            " 'a', 'moonshot', :run, '{}', :state, :at,"
            " CASE WHEN :state = 'sent' THEN CAST(:at AS timestamptz) END)"
        ),
        {"key": key, "at": at, "run": run_id, "state": state},
    )


def run_ids(engine: sa.Engine, where: str = "true") -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text(f"SELECT id FROM sync_runs WHERE {where}")).scalars())


def test_prune_removes_only_old_unchanged_ok_runs_and_keeps_every_run_something_needs(ledger):
    with ledger.begin() as conn:
        # 300 old runs of source a, two hours apart, most of them prunable...
        ids = [add_run(conn, "a", OLD + n * timedelta(hours=2)) for n in range(300)]
        special = {
            "failed": add_run(conn, "a", OLD + 3 * DAY + timedelta(minutes=1), "failed"),
            "incomplete": add_run(conn, "a", OLD + 3 * DAY + timedelta(minutes=2), "incomplete"),
            "held": add_run(conn, "a", OLD + 3 * DAY + timedelta(minutes=3), "held"),
            "changed": add_run(conn, "a", OLD + 3 * DAY + timedelta(minutes=4), changed=1),
            "evented": add_run(conn, "a", OLD + 3 * DAY + timedelta(minutes=5)),
            "alerted": add_run(conn, "a", OLD + 3 * DAY + timedelta(minutes=6)),
        }
        add_event(conn, special["evented"], "a", "f1", "appeared", OLD + 3 * DAY)
        add_alert(conn, special["alerted"], "recovered/a/1", "pending", OLD + 3 * DAY)
        # ... then a failure streak, and recent runs the retention does not reach yet.
        recent_ok = [add_run(conn, "a", NOW - 20 * DAY + n * timedelta(hours=1)) for n in range(5)]
        streak = [
            add_run(conn, "a", NOW - DAY + n * timedelta(minutes=5), "failed") for n in range(4)
        ]
    # The newest 100 ok runs by id: 5 recent, the 3 special ok ones, 92 of the old ones.
    newest_ok_100 = set(sorted(ids)[-92:]) | set(recent_ok)

    report = prune(ledger, RetentionPolicy())

    kept = run_ids(ledger)
    assert set(special.values()) <= kept
    assert newest_ok_100 <= kept
    assert set(streak) <= kept
    assert kept == set(special.values()) | newest_ok_100 | set(streak)
    assert report.runs_removed == 300 - 92
    with ledger.connect() as conn:
        health = conn.execute(
            sa.text("SELECT last_outcome, consecutive_failures, last_ok_at FROM source_health")
        ).one()
    assert health == ("failed", 4, NOW - 20 * DAY + 4 * timedelta(hours=1) + timedelta(seconds=1.5))


def last_success(engine: sa.Engine, names: list[str]) -> dict[str, datetime]:
    """Each source's last success, as /metrics reads it."""
    configs = [SourceConfig(name, "moonshot", Secret("k"), "http://127.0.0.1:9") for name in names]
    return dict(DatabaseGauges(engine, configs).read().last_ok)


def test_a_streak_longer_than_the_retention_keeps_every_run_it_is_told_by(ledger):
    # Two sources synced fine 90 to 80 days ago; for the last 45 days one has failed
    # every sync and the other listed incompletely (after a held run), 180 times each.
    # Their last ok runs are far older than the retention.
    streak_start = NOW - 45 * DAY
    with ledger.begin() as conn:
        last_ok = {}
        for source in ("down", "partial"):
            ok = [
                add_run(conn, source, OLD - 30 * DAY + n * timedelta(hours=2)) for n in range(120)
            ]
            last_ok[source] = ok[-1]
        held = add_run(conn, "partial", streak_start - DAY, "held")
        for n in range(180):
            add_run(conn, "down", streak_start + n * timedelta(hours=6), "failed")
            add_run(conn, "partial", streak_start + n * timedelta(hours=6), "incomplete")

    def told() -> tuple[Any, ...]:
        with ledger.connect() as conn:
            histories = {name: outbox.source_history(conn, name) for name in ("down", "partial")}
        return (
            rows(ledger, "SELECT * FROM source_health ORDER BY source"),
            histories,
            last_success(ledger, ["down", "partial"]),
        )

    before = told()
    report = prune(ledger, RetentionPolicy(keep_ok_runs=5))

    # Only old ok runs went, and not the newest 5 ok runs of each source.
    assert report.runs_removed == 2 * (120 - 5)
    assert {last_ok["down"], last_ok["partial"], held} <= run_ids(ledger)
    assert told() == before
    _, histories, successes = before
    last_ok_at = OLD - 30 * DAY + 119 * timedelta(hours=2) + timedelta(seconds=1.5)
    assert successes == {"down": last_ok_at, "partial": last_ok_at}
    # What the next sync's alerts are decided on: the streaks, whole.
    assert histories == {
        "down": SourceHistory(consecutive_failures=180, last_complete_outcome=Outcome.OK),
        "partial": SourceHistory(last_complete_outcome=Outcome.HELD, consecutive_incomplete=180),
    }
    assert rows(ledger, "SELECT source, consecutive_failures FROM source_health ORDER BY 1") == [
        ("down", 180),
        ("partial", 0),
    ]


def test_a_source_with_fewer_ok_runs_than_it_keeps_loses_none(ledger):
    with ledger.begin() as conn:
        for n in range(100):
            add_run(conn, "a", OLD + n * timedelta(hours=1))

    report = prune(ledger, RetentionPolicy())

    assert report.runs_removed == 0
    assert len(run_ids(ledger)) == 100


def test_runs_that_a_file_missing_within_grace_counts_back_through_stay(ledger):
    # A file missing from its source's last 150 complete listings (SYNCER_MISSING_GRACE
    # above that) was last seen 150 complete runs back: that run must stay.
    with ledger.begin() as conn:
        ids = [add_run(conn, "a", OLD + n * timedelta(hours=1)) for n in range(400)]
        conn.execute(
            sa.text(
                "INSERT INTO files (source, file_id, provider, filename, purpose, bytes,"
                " status_class, created_at, first_seen_at, changed_at, raw, missing_count)"
                " VALUES ('a', 'f1', 'moonshot', 'f.pdf', 'file-extract', 1, 'ready', :at, :at,"
                " :at, '{}', 150)"
            ),
            {"at": OLD},
        )
    last_seen = "SELECT last_seen_at FROM current_files WHERE file_id = 'f1'"
    before = rows(ledger, last_seen)

    prune(ledger, RetentionPolicy())

    assert rows(ledger, last_seen) == before
    assert run_ids(ledger) == set(sorted(ids)[-151:])


def test_the_rollup_adds_up_to_exactly_the_pruned_runs(ledger):
    with ledger.begin() as conn:
        for n in range(24 * 10):  # ten days, hourly, with files listed rising
            add_run(conn, "a", OLD + n * timedelta(hours=1), files_listed=n)
            add_run(conn, "b", OLD + n * timedelta(hours=1) + timedelta(minutes=30), files_listed=7)
    before = rows(
        ledger,
        "SELECT id, source, (started_at AT TIME ZONE 'UTC')::date, files_listed,"
        " extract(epoch FROM finished_at - started_at) FROM sync_runs",
    )

    report = prune(ledger, RetentionPolicy(keep_ok_runs=10, batch=50))

    kept = run_ids(ledger)
    pruned: dict[tuple[str, Any], list[int]] = {}
    for run_id, source, day, listed, _ in before:
        if run_id not in kept:
            pruned.setdefault((source, day), []).append(listed)
    daily = rows(
        ledger,
        "SELECT source, day, runs, ok, incomplete, held, failed, files_listed_min,"
        " files_listed_max, duration_p50, duration_max FROM sync_run_daily ORDER BY 1, 2",
    )
    assert report.runs_removed == 2 * 240 - 20 == sum(len(v) for v in pruned.values())
    assert [
        (s, d, n, ok, inc, held, failed, lo, hi)
        for s, d, n, ok, inc, held, failed, lo, hi, *_ in daily
    ] == [
        (source, day, len(listed), len(listed), 0, 0, 0, min(listed), max(listed))
        for (source, day), listed in sorted(pruned.items())
    ]
    assert all(p50 == pytest.approx(1.5) and top == pytest.approx(1.5) for *_, p50, top in daily)


def test_two_pruners_at_once_remove_and_roll_up_each_run_once(ledger, database_url):
    with ledger.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO sync_runs (source, provider, started_at, finished_at, outcome,"
                " files_listed) SELECT 's' || (n % 3), 'moonshot', :old + n * interval '10 min',"
                " :old + n * interval '10 min' + interval '1 second', 'ok', 5"
                " FROM generate_series(1, 6000) AS n"
            ),
            {"old": OLD},
        )
    policy = RetentionPolicy(keep_ok_runs=100, batch=97)
    cutoff = NOW - 30 * DAY
    old_runs = "SELECT count(*) FROM sync_runs WHERE started_at < :c"
    [(prunable,)] = rows(ledger, old_runs, c=cutoff)
    start = threading.Barrier(2)
    results: list[tuple[int, int]] = []

    # Below the pass's lock: two connections running the same batches side by side.
    def pruner() -> None:
        with ledger.connect() as conn:
            start.wait()
            results.append(prune_runs(conn, policy, cutoff=cutoff))

    threads = [threading.Thread(target=pruner) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    remaining = rows(ledger, "SELECT count(*) FROM sync_runs")[0][0]
    rolled_up = rows(ledger, "SELECT coalesce(sum(runs), 0) FROM sync_run_daily")[0][0]
    removed = sum(removed for removed, _ in results)
    assert removed == 6000 - remaining == rolled_up == prunable
    assert rows(ledger, old_runs, c=cutoff) == [(0,)]


def test_a_second_pass_while_one_runs_does_nothing(ledger):
    with ledger.begin() as conn:
        for n in range(300):
            add_run(conn, "a", OLD + n * timedelta(hours=1))
    second: list[Any] = []
    started = threading.Event()

    def during_first_pass() -> None:
        if not started.is_set():
            started.set()
            second.append(prune(ledger, RetentionPolicy(batch=10)))

    first = prune(ledger, RetentionPolicy(batch=10), batch_done=during_first_pass)

    assert second[0].ran is False
    assert "another process is pruning" in second[0].summary()
    assert first.runs_removed == 200
    assert rows(ledger, "SELECT sum(runs) FROM sync_run_daily") == [(200,)]


def test_alerts_are_pruned_by_state_and_age(ledger):
    with ledger.begin() as conn:
        run = add_run(conn, "a", OLD)
        add_alert(conn, run, "sent-old", "sent", NOW - 91 * DAY)
        add_alert(conn, None, "sent-young", "sent", NOW - 89 * DAY)
        add_alert(conn, None, "dead-old", "dead", NOW - 181 * DAY)
        add_alert(conn, None, "dead-young", "dead", NOW - 179 * DAY)
        add_alert(conn, None, "pending-ancient", "pending", NOW - 400 * DAY)

    report = prune(ledger, RetentionPolicy(runs=None))

    assert report.alerts_removed == 2
    assert rows(ledger, "SELECT alert_key FROM alerts ORDER BY 1") == [
        ("dead-young",),
        ("pending-ancient",),
        ("sent-young",),
    ]


def test_zero_retention_keeps_everything(ledger):
    with ledger.begin() as conn:
        for n in range(300):
            add_run(conn, "a", OLD - 400 * DAY + n * timedelta(hours=1))
        add_alert(conn, None, "sent-ancient", "sent", NOW - 900 * DAY)

    report = prune(ledger, RetentionPolicy(runs=None, alerts=None, events=None))

    assert (report.runs_removed, report.alerts_removed, report.events_removed) == (0, 0, 0)
    assert len(run_ids(ledger)) == 300


# --- Real syncs: the documented queries before and after --------------------------------

ACCOUNTS = (
    Account("kimi", "moonshot", "sk-ret-kimi"),
    Account("sf", "siliconflow", "sk-ret-sf"),
)
RULES = SyncRules(missing_grace=3, mass_disappear_fraction=0.9, mass_disappear_min=10)


def make_history(engine: sa.Engine, policy_http) -> None:
    """45 days of syncs every 12 hours, with changes, a failure streak and a file missing."""
    start = (NOW - 45 * DAY).replace(hour=1)
    with Simulator(ACCOUNTS, seed=3) as sim:
        sources = [
            SourceConfig(a.name, a.provider, Secret(a.api_key), sim.base_url(a.name))
            for a in ACCOUNTS
        ]

        def add(account: str, file_id: str, status: str = "ok") -> None:
            fields: dict[str, Any] = {"filename": f"{file_id}.pdf", "bytes": 1000}
            if account == "kimi":
                fields |= {"purpose": "file-extract", "status": status, "status_details": ""}
            else:
                fields |= {"purpose": "batch", "line_count": 3}
            sim.add_file(account, id=file_id, created_at=int(start.timestamp()), **fields)

        script = {
            2: lambda: sim.set_status("kimi", "k1", "ok"),
            20: lambda: sim.set_status("kimi", "k2", "error", "file is corrupted"),
            30: lambda: (sim.delete_file("kimi", "k3"), add("sf", "s2")),
            40: lambda: sim.set_persistent_fault("kimi", Fault.status(401)),
            45: lambda: sim.set_persistent_fault("kimi", None),
            70: lambda: add("kimi", "k4", "processing"),
            88: lambda: sim.delete_file("sf", "s1"),  # missing within grace: 2 of 3 listings
        }
        for file_id in ("k1", "k2", "k3"):
            add("kimi", file_id, "processing")
        add("sf", "s1")
        for step in range(90):
            at = start + step * timedelta(hours=12)
            if step in script:
                script[step]()
            for source in sources:
                sync_source(engine, source, rules=RULES, policy=policy_http, clock=lambda at=at: at)


def answers(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    found = {heading: rows(engine, sql) for heading, sql in QUERIES}
    # Runs per day count the pruned ones through sync_run_daily: a source that has some.
    (per_day,) = [sql for heading, sql in QUERIES if heading.startswith("Runs per day")]
    found["runs per day of kimi"] = rows(engine, per_day.replace("'kimi-b'", "'kimi'"))
    for name in ("source_health", "current_files", "failed_files", "inventory_summary"):
        found[name] = rows(engine, f"SELECT * FROM {name} ORDER BY 1, 2")
    found["file_history"] = rows(
        engine, "SELECT * FROM file_history ORDER BY source, file_id, version"
    )
    found["file_events"] = rows(engine, "SELECT * FROM file_events ORDER BY id")
    found["alerts"] = rows(engine, "SELECT id, alert_key, sync_run_id FROM alerts ORDER BY id")
    for days in (40, 20, 3):
        found[f"files_as_of {days}d"] = rows(
            engine, "SELECT * FROM files_as_of(now() - :d * interval '1 day')", d=days
        )
    # The statements of `syncer files` and `syncer events` (docs/reporting.md's
    # "Reports on the command line"); `syncer runs` lists the runs, pruned ones gone.
    found["syncer files --include-deleted"] = report_rows(
        engine, files_report(Filters(include_deleted=True))
    )
    found["syncer files --status-class failed"] = report_rows(
        engine, files_report(Filters(status_classes=(StatusClass.FAILED,)))
    )
    found["syncer events"] = report_rows(engine, events_report(Filters()))
    found["syncer events --file k2"] = report_rows(engine, events_report(Filters(file_ids=("k2",))))
    found["syncer runs --outcome failed"] = report_rows(
        engine, runs_report(Filters(outcomes=(Outcome.FAILED,)))
    )
    return found


def report_rows(engine: sa.Engine, report: Report) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(report.statement)]


def test_documented_queries_answer_the_same_after_a_prune(ledger, policy):
    make_history(ledger, policy)
    before = answers(ledger)
    runs_before = rows(ledger, "SELECT * FROM sync_runs ORDER BY id")
    runs_listed = {
        listed: report_rows(ledger, runs_report(replace(listed, limit=None)))
        for listed in (Filters(), Filters(limit=3), Filters(sources=("kimi",)))
    }

    report = prune(ledger, RetentionPolicy(keep_ok_runs=5, batch=7))

    assert report.runs_removed > 20
    assert answers(ledger) == before
    kept = run_ids(ledger)
    # The runs that stayed are untouched; all the others were ok and changed nothing.
    assert rows(ledger, "SELECT * FROM sync_runs ORDER BY id") == [
        r for r in runs_before if r[0] in kept
    ]
    pruned = [r for r in runs_before if r[0] not in kept]
    assert len(pruned) == report.runs_removed
    assert {r[5] for r in pruned} == {"ok"}
    assert rows(ledger, "SELECT sum(runs), sum(ok) FROM sync_run_daily") == [
        (len(pruned), len(pruned))
    ]
    # `syncer runs` shows the same runs, newest first, less the pruned ones.
    pruned_ids = {r[0] for r in pruned}
    for listed in (Filters(), Filters(limit=3), Filters(sources=("kimi",))):
        assert (
            report_rows(ledger, runs_report(listed))
            == [r for r in runs_listed[listed] if r[0] not in pruned_ids][: listed.limit]
        )


def test_event_retention_drops_gone_files_and_files_as_of_refuses_earlier_times(ledger, policy):
    make_history(ledger, policy)
    after_cutoff = "SELECT * FROM files_as_of(now() - interval '10 days')"
    before = rows(ledger, after_cutoff)
    k3_events = rows(ledger, "SELECT count(*) FROM file_events WHERE file_id = 'k3'")[0][0]
    present_events = rows(ledger, "SELECT count(*) FROM file_events WHERE file_id <> 'k3'")

    report = prune(ledger, RetentionPolicy(runs=None, events=timedelta(days=14)))

    assert (report.files_removed, report.events_removed) == (1, k3_events)
    assert rows(ledger, "SELECT file_id FROM files WHERE file_id = 'k3'") == []
    assert rows(ledger, "SELECT count(*) FROM file_events") == present_events
    assert rows(ledger, after_cutoff) == before
    with pytest.raises(sa.exc.DataError, match=r"events before .* were pruned"):
        rows(ledger, "SELECT * FROM files_as_of(now() - interval '20 days')")


def test_event_retention_waits_while_the_source_is_being_synced(ledger, policy):
    make_history(ledger, policy)
    k3_events = rows(ledger, "SELECT count(*) FROM file_events WHERE file_id = 'k3'")[0][0]
    retention = RetentionPolicy(runs=None, events=timedelta(days=14))
    kimi = rows(ledger, "SELECT DISTINCT source FROM files WHERE file_id = 'k3'")[0][0]
    with ledger.begin() as conn:
        lease = sources.acquire(
            conn,
            SourceConfig(kimi, "moonshot", Secret("k"), "http://x"),
            "test:sync",
            lease_seconds=60,
        )
    assert isinstance(lease, sources.Lease)

    # A sync holds the lease (it may be bringing k3 back): its files wait for a later pass.
    assert prune(ledger, retention).files_removed == 0
    assert rows(ledger, "SELECT count(*) FROM file_events WHERE file_id = 'k3'") == [(k3_events,)]

    with ledger.begin() as conn:
        assert sources.hold_for_write(conn, lease)
        sources.release(conn, lease, failed=False, reschedule=False)
    report = prune(ledger, retention)
    assert (report.files_removed, report.events_removed) == (1, k3_events)


def test_syncer_prune_says_what_it_rolled_up_and_removed(ledger, env, tmp_path):
    with ledger.begin() as conn:
        for n in range(300):
            add_run(conn, "a", OLD + n * timedelta(hours=1))
        add_alert(conn, None, "sent-old", "sent", NOW - 100 * DAY)

    result = syncer("prune", env={**env, "SYNCER_ALERT_RETENTION": "30d"}, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "rolled up 200 runs into" in result.stdout
    assert "removed 1 alerts" in result.stdout
    assert len(run_ids(ledger)) == 100


# --- Real processes ---------------------------------------------------------------------


def add_old_runs(engine: sa.Engine, sources: int, runs: int) -> int:
    """`runs` ok runs of each of `sources` sources, from 160 days ago, five minutes apart
    (at most 100 days of them); returns how many the default retention prunes: all but
    each source's newest 100."""
    assert sources * runs * timedelta(minutes=5) < 100 * DAY
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO sync_runs (source, provider, started_at, finished_at, outcome,"
                " files_listed) SELECT 'old' || (n % :sources), 'moonshot',"
                " :old + n * interval '5 min', :old + n * interval '5 min' + interval '1s',"
                " 'ok', 5 FROM generate_series(1, :total) AS n"
            ),
            {"sources": sources, "total": sources * runs, "old": NOW - 160 * DAY},
        )
    return sources * (runs - 100)


def rolled_up(summary: str) -> int:
    """The runs a `prune: ...` summary says it rolled up; 0 if it found the lock taken."""
    if "another process is pruning right now" in summary:
        return 0
    return int(summary.split("rolled up ", 1)[1].split(maxsplit=1)[0])


def test_two_syncer_prune_processes_at_once_remove_each_run_once(ledger, env, tmp_path):
    prunable = add_old_runs(ledger, sources=4, runs=1500)

    # Started together; whichever takes the lock prunes, the other finds it taken (or
    # comes after and finds nothing left): between them, each run once.
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "syncer", "prune"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]

    assert [process.returncode for process in processes] == [0, 0], outputs
    summaries = [stdout for stdout, _ in outputs]
    assert all(summary.startswith("prune: ") for summary in summaries), summaries
    assert sum(rolled_up(summary) for summary in summaries) == prunable
    assert rows(ledger, "SELECT sum(runs) FROM sync_run_daily") == [(prunable,)]
    assert rows(ledger, "SELECT source, count(*) FROM sync_runs GROUP BY 1 ORDER BY 1") == [
        (f"old{n}", 100) for n in range(4)
    ]


# `syncer run` with its hourly retention pass due every second instead, the first at
# once (the module's constants, set before it starts); everything else is the command
# as shipped.
_RUN_PRUNING_EVERY_SECOND = (
    "import runpy, syncer.service as service;"
    " service.PRUNE_SECONDS, service.PRUNE_JITTER_SECONDS = 1.0, 0.0;"
    " service.PRUNE_FIRST_DELAY_SECONDS = 0.0;"
    " runpy.run_module('syncer', run_name='__main__', alter_sys=True)"
)


def test_syncer_run_prunes_on_its_schedule_with_the_configured_retention(ledger, env, tmp_path):
    prunable = add_old_runs(ledger, sources=2, runs=400)
    with ledger.begin() as conn:
        add_alert(conn, None, "sent-40-days-ago", "sent", NOW - 40 * DAY)
        add_alert(conn, None, "sent-10-days-ago", "sent", NOW - 10 * DAY)
    log = tmp_path / "run.log"
    with log.open("w") as stderr:
        service = subprocess.Popen(
            [sys.executable, "-c", _RUN_PRUNING_EVERY_SECOND, "run"],
            env={**env, "SYNCER_INTERVAL": "1s", "SYNCER_ALERT_RETENTION": "30d"},
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 60
        while rows(ledger, "SELECT coalesce(sum(runs), 0) FROM sync_run_daily") != [(prunable,)]:
            assert service.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        # Passes more while it syncs its sources: they prune nothing again.
        passes = log.read_text().count("prune: rolled up")
        synced = "SELECT count(*) > 2 FROM sync_runs WHERE source = 'moonshot'"
        while log.read_text().count("prune: rolled up") < passes + 2 or rows(ledger, synced) != [
            (True,)
        ]:
            assert time.monotonic() < deadline + 30, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        service.send_signal(signal.SIGTERM)
        returncode = service.wait(timeout=60)
    output = log.read_text()
    assert returncode == 0, output[-3000:]
    assert f"prune: rolled up {prunable} runs into" in output
    assert rows(ledger, "SELECT sum(runs) FROM sync_run_daily") == [(prunable,)]
    assert rows(ledger, "SELECT count(*) FROM sync_runs WHERE source LIKE 'old%'") == [(200,)]
    assert rows(ledger, "SELECT alert_key FROM alerts WHERE alert_key LIKE 'sent-%'") == [
        ("sent-10-days-ago",)
    ]
    # The configured sources were synced all along, and none of their (recent) runs went.
    assert rows(ledger, "SELECT count(*) > 2 FROM sync_runs WHERE source = 'moonshot'") == [(True,)]
    assert rows(ledger, "SELECT DISTINCT source FROM sync_run_daily ORDER BY 1") == [
        ("old0",),
        ("old1",),
    ]
