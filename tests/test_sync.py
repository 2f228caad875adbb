"""One source's sync against real PostgreSQL: each guarantee of DESIGN.md 5.

The provider is a real adapter talking to an in-process fake through
httpx.MockTransport; the end-to-end tests run the same against the simulator.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from conftest import make_source
from fakes import ScriptedMoonshot

from syncer import sync
from syncer.db import sources
from syncer.errors import LeaseLostError, SourceBusyError
from syncer.model import Outcome
from syncer.sync import sync_leased, sync_source

KEY = "sk-sync-test-key-0123456789abcdef"


@pytest.fixture
def fake():
    return ScriptedMoonshot(KEY)


@pytest.fixture
def run(engine, rules, policy, fake):
    source = make_source("kimi", "moonshot", "https://api.moonshot.test/v1", KEY)

    def run(**kwargs: Any):
        kwargs.setdefault("rules", rules)
        return sync_source(
            engine, source, policy=policy, transport=httpx.MockTransport(fake.handler), **kwargs
        )

    return run


def rows(engine, query: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(query), params)]


def events(engine) -> list[tuple[str, str, str | None, str | None]]:
    return [
        (e["file_id"], e["kind"], e["old_status"], e["new_status"])
        for e in rows(engine, "SELECT * FROM file_events ORDER BY id")
    ]


def files_snapshot(engine) -> list[dict[str, Any]]:
    """Every files row with its physical version (xmin changes when a row is rewritten)."""
    return rows(engine, "SELECT xmin::text AS version, * FROM files ORDER BY file_id")


def test_first_sync_fills_files_events_and_runs(engine, run, fake):
    fake.add("a", "ok")
    fake.add("b", "error", status_details="line 3 is not JSON")
    fake.add("c", "processing")

    result = run()

    assert result.outcome is Outcome.OK
    assert events(engine) == [
        ("a", "appeared", None, "ok"),
        ("b", "appeared", None, "error"),
        ("c", "appeared", None, "processing"),
    ]
    by_id = {f["file_id"]: f for f in rows(engine, "SELECT * FROM files")}
    assert {k: by_id["b"][k] for k in ("source", "provider", "status", "status_class")} == {
        "source": "kimi",
        "provider": "moonshot",
        "status": "error",
        "status_class": "failed",
    }
    assert by_id["b"]["status_details"] == "line 3 is not JSON"
    assert by_id["c"]["status_class"] == "pending"
    assert by_id["a"]["raw"]["filename"] == "a.pdf"
    assert by_id["a"]["created_at"].timestamp() == 1_760_000_000
    assert by_id["a"]["deleted_at"] is None
    (run_row,) = rows(engine, "SELECT * FROM sync_runs")
    assert run_row["outcome"] == "ok"
    assert (run_row["files_listed"], run_row["appeared"], run_row["error"]) == (3, 3, None)
    assert run_row["started_at"] <= run_row["finished_at"]


def test_a_runs_finish_time_is_taken_after_its_writes(engine, run, fake):
    fake.add("a", "ok")
    with engine.begin() as conn:  # writing the events takes at least half a second
        conn.execute(
            sa.text("""
            CREATE FUNCTION slow_event() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$;
            CREATE TRIGGER slow_event BEFORE INSERT ON file_events
                FOR EACH ROW EXECUTE FUNCTION slow_event();
        """)
        )
    try:
        run()
    finally:
        with engine.begin() as conn:
            conn.execute(
                sa.text("DROP TRIGGER slow_event ON file_events; DROP FUNCTION slow_event()")
            )

    (run_row,) = rows(engine, "SELECT started_at, finished_at FROM sync_runs")
    assert (run_row["finished_at"] - run_row["started_at"]).total_seconds() >= 0.5


def test_changes_disappearance_and_reappearance_are_recorded(engine, run, fake):
    fake.add("a", "processing")
    fake.add("b")
    run()

    fake.add("a", "ok")
    fake.items["b"]["filename"] = "renamed.pdf"
    fake.add("c")
    run()
    del fake.items["c"]
    run()
    fake.add("c", "error")
    run()

    assert events(engine)[2:] == [
        ("a", "status_changed", "processing", "ok"),
        ("b", "changed", "ok", "ok"),
        ("c", "appeared", None, "ok"),
        ("c", "disappeared", "ok", None),
        ("c", "reappeared", "ok", "error"),
    ]
    (c,) = rows(engine, "SELECT * FROM files WHERE file_id = 'c'")
    assert (c["deleted_at"], c["status_class"]) == (None, "failed")
    summary = rows(
        engine,
        "SELECT outcome, appeared, status_changed, changed, disappeared, reappeared"
        " FROM sync_runs ORDER BY id",
    )
    assert [tuple(r.values()) for r in summary] == [
        ("ok", 2, 0, 0, 0, 0),
        ("ok", 1, 1, 1, 0, 0),
        ("ok", 0, 0, 0, 1, 0),
        ("ok", 0, 0, 0, 0, 1),
    ]


def test_unchanged_listing_rewrites_no_row_and_writes_no_event(engine, run, fake):
    """Guarantee 3: a sync that changes nothing writes only its sync_runs row."""
    for i in range(5):
        fake.add(f"f{i}", "ok" if i % 2 else "processing")
    run()
    before = files_snapshot(engine)

    result = run()

    assert result.outcome is Outcome.OK
    assert files_snapshot(engine) == before
    assert len(events(engine)) == 5
    assert rows(engine, "SELECT count(*) AS n FROM sync_runs")[0]["n"] == 2


def test_failed_listing_changes_nothing_about_files(engine, run, fake):
    """Guarantee 2 (failed): an outage is a failed run, never a mass deletion."""
    fake.add("a")
    fake.add("b")
    run()
    before = files_snapshot(engine)
    fake.fail_with = 500

    result = run()

    assert result.outcome is Outcome.FAILED
    assert "HTTP 500" in (result.error or "")
    assert files_snapshot(engine) == before
    assert len(events(engine)) == 2
    (failed,) = rows(engine, "SELECT * FROM sync_runs WHERE outcome = 'failed'")
    assert "kimi" in failed["error"]
    assert KEY not in failed["error"]


def test_incomplete_listing_upserts_what_it_saw_but_deletes_nothing(engine, run, fake):
    """Guarantees 2 and 5: an unusable item makes the run incomplete; seen files apply."""
    fake.add("a", "processing")
    fake.add("b")
    run()
    fake.raw_items = [
        {**fake.items["a"], "status": "ok"},
        {"id": "", "bytes": 1},  # unusable: no id
    ]

    result = run()

    assert result.outcome is Outcome.INCOMPLETE
    assert result.counts["items_skipped"] == 1
    assert events(engine)[2:] == [("a", "status_changed", "processing", "ok")]
    assert rows(engine, "SELECT count(*) AS n FROM files WHERE deleted_at IS NULL")[0]["n"] == 2
    (last,) = rows(engine, "SELECT * FROM sync_runs ORDER BY id DESC LIMIT 1")
    assert (last["outcome"], last["items_skipped"], last["files_listed"]) == ("incomplete", 1, 2)


def test_missing_grace_needs_consecutive_complete_listings(engine, run, fake, rules):
    graced = replace(rules, missing_grace=3)
    fake.add("a")
    fake.add("b")
    run(rules=graced)
    del fake.items["b"]

    run(rules=graced)
    run(rules=graced)
    assert [e[1] for e in events(engine)] == ["appeared", "appeared"]
    (b,) = rows(engine, "SELECT * FROM current_files WHERE file_id = 'b'")
    first_run_finished = rows(engine, "SELECT finished_at FROM sync_runs WHERE id = 1")[0]
    assert b["last_seen_at"] == first_run_finished["finished_at"]

    fake.fail_with = 503  # a failed run in between neither counts nor resets
    run(rules=graced)
    fake.fail_with = None
    run(rules=graced)
    assert events(engine)[-1] == ("b", "disappeared", "ok", None)


def test_mass_disappearance_is_held_until_allowed(engine, run, fake):
    for i in range(20):
        fake.add(f"f{i:02d}")
    run()
    for i in range(15):
        del fake.items[f"f{i:02d}"]
    fake.add("new")

    held = run()

    assert held.outcome is Outcome.HELD
    assert held.counts["disappearances_held"] == 15
    assert rows(engine, "SELECT count(*) AS n FROM current_files")[0]["n"] == 21
    assert events(engine)[-1] == ("new", "appeared", None, "ok")
    assert run().outcome is Outcome.HELD  # still held on the next tick

    allowed = run(allow_mass_disappear=True)

    assert allowed.outcome is Outcome.OK
    assert allowed.counts["disappeared"] == 15
    assert rows(engine, "SELECT count(*) AS n FROM current_files")[0]["n"] == 6


def test_a_failure_while_writing_rolls_the_whole_sync_back(engine, run, fake):
    """Guarantee 1: rows, events and run record commit together or not at all."""
    fake.add("a", "processing")
    run()
    before = files_snapshot(engine)
    with engine.begin() as conn:  # make the events insert fail after the files upsert
        conn.execute(
            sa.text("""
            CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.file_id = 'boom' THEN RAISE EXCEPTION 'disk on fire'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_boom BEFORE INSERT ON file_events
                FOR EACH ROW EXECUTE FUNCTION refuse_boom();
        """)
        )
    fake.add("a", "ok")
    fake.add("boom")
    try:
        result = run()
    finally:
        with engine.begin() as conn:
            conn.execute(
                sa.text("DROP TRIGGER refuse_boom ON file_events; DROP FUNCTION refuse_boom()")
            )

    assert result.outcome is Outcome.FAILED
    assert "disk on fire" in (result.error or "")
    assert files_snapshot(engine) == before
    assert len(events(engine)) == 1
    outcomes = [r["outcome"] for r in rows(engine, "SELECT outcome FROM sync_runs ORDER BY id")]
    assert outcomes == ["ok", "failed"]

    assert run().outcome is Outcome.OK  # the next run applies the listing, once
    assert events(engine)[1:] == [
        ("a", "status_changed", "processing", "ok"),
        ("boom", "appeared", None, "ok"),
    ]


def test_a_busy_source_is_refused_and_nothing_is_written(engine, rules, policy, fake):
    """Guarantee 4: while another process holds the source's lease, nothing is written,
    and the refusal names the holder."""
    fake.add("a")
    source = make_source("kimi", "moonshot", "https://api.moonshot.test/v1", KEY)
    with engine.begin() as conn:
        held = sources.acquire(conn, source, "run:other-host:42:abc", lease_seconds=60)
    assert isinstance(held, sources.Lease)
    started = time.monotonic()
    with pytest.raises(SourceBusyError, match=r"'kimi'.*leased by run:other-host:42:abc"):
        sync_source(
            engine,
            source,
            rules=rules,
            policy=policy,
            transport=httpx.MockTransport(fake.handler),
            wait=0.5,
        )
    assert time.monotonic() - started < 5
    assert rows(engine, "SELECT count(*) AS n FROM sync_runs")[0]["n"] == 0


def test_a_listing_fetched_under_a_lost_lease_is_never_applied(engine, rules, policy, fake):
    """Guarantee 4 with leases: the lease expires during the fetch and another process
    takes the source over; the late listing is dropped, and the new holder's counts."""
    fake.add("a")
    source = make_source("kimi", "moonshot", "https://api.moonshot.test/v1", KEY)
    with engine.begin() as conn:
        lease = sources.acquire(conn, source, "run:slow:1:aaa", lease_seconds=0.01)
    assert isinstance(lease, sources.Lease)

    def provider(request: httpx.Request) -> httpx.Response:
        time.sleep(0.05)  # the lease expires meanwhile, and another process takes it
        with engine.begin() as conn:
            taken = sources.acquire(conn, source, "run:fast:2:bbb", lease_seconds=60)
        assert isinstance(taken, sources.Lease)
        return fake.handler(request)

    with pytest.raises(LeaseLostError, match="not applied"):
        sync_leased(
            engine,
            source,
            lease,
            rules=rules,
            policy=policy,
            reschedule=True,
            transport=httpx.MockTransport(provider),
        )
    assert rows(engine, "SELECT count(*) AS n FROM sync_runs")[0]["n"] == 0
    assert events(engine) == []
    (row,) = rows(engine, "SELECT lease_owner, lease_token FROM sources")
    assert row == {"lease_owner": "run:fast:2:bbb", "lease_token": 2}


def test_concurrent_syncs_of_one_source_record_each_event_once(engine, run, fake):
    """Guarantee 4: same listing, three syncs at once, events once."""
    for i in range(50):
        fake.add(f"f{i:02d}", "processing" if i % 3 else "error")
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(run())) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(r.outcome for r in results) == [Outcome.OK] * 3
    assert sorted(r.counts["appeared"] for r in results) == [0, 0, 50]
    assert len(events(engine)) == 50


def test_odd_values_never_crash_a_run(engine, run, fake):
    """Guarantee 5: duplicates, bad types, unicode, huge strings, negative bytes, ms times."""
    good = {
        "object": "file",
        "bytes": 1,
        "created_at": 1_760_000_000,
        "purpose": "batch",
        "status": "ok",
        "status_details": "",
    }
    fake.raw_items = [
        {**good, "id": "emoji-😀-文件-שלום", "filename": "报告 😀.pdf"},
        {**good, "id": "huge", "filename": "x" * 200_000},
        {**good, "id": "negative", "filename": "n", "bytes": -5},
        {**good, "id": "millis", "filename": "m", "created_at": 1_760_000_000_123},
        {**good, "id": "extra", "filename": "e", "nested": {"deep": [1, {"x": None}]}},
        {**good, "id": "dup", "filename": "one"},
        {**good, "id": "dup", "filename": "two"},
        {**good, "id": "nul", "filename": "a\x00b"},
        {**good, "id": "typed", "filename": "t", "bytes": "many"},
        {**good, "filename": "no id"},
        "not an object",
        None,
    ]

    result = run()

    assert result.outcome is Outcome.INCOMPLETE
    assert result.counts["items_skipped"] == 7
    stored = {f["file_id"]: f for f in rows(engine, "SELECT * FROM files")}
    assert set(stored) == {"emoji-😀-文件-שלום", "huge", "negative", "millis", "extra"}
    assert stored["emoji-😀-文件-שלום"]["filename"] == "报告 😀.pdf"
    assert len(stored["huge"]["filename"]) == 200_000
    assert stored["negative"]["bytes"] == -5
    assert stored["millis"]["created_at"].timestamp() == pytest.approx(1_760_000_000.123)
    assert stored["extra"]["raw"]["nested"] == {"deep": [1, {"x": None}]}

    assert run().counts["appeared"] == 0  # the same odd listing again: nothing new


def test_history_can_be_rebuilt_from_events_alone(engine, run, fake):
    """Guarantee 6: replaying a file's events in id order yields its current row."""
    fake.add("a", "uploaded")
    run()
    fake.add("a", "processing", bytes=2000)
    run()
    fake.add("a", "error", bytes=2000, status_details="bad")
    run()
    fake.items.clear()
    run()
    fake.add("a", "ok", bytes=3000)
    run()

    rebuilt: dict[str, Any] = {}
    present = False
    for event in rows(engine, "SELECT * FROM file_events WHERE file_id = 'a' ORDER BY id"):
        present = event["kind"] != "disappeared"
        rebuilt.update({field: new for field, (_old, new) in event["changes"].items()})
    (row,) = rows(engine, "SELECT * FROM files WHERE file_id = 'a'")
    assert present is (row["deleted_at"] is None)
    for field in ("filename", "purpose", "bytes", "line_count", "status", "status_details"):
        assert rebuilt[field] == row[field], field
    assert rebuilt["created_at"] == row["created_at"].isoformat()


def test_a_process_never_claims_a_source_it_is_still_syncing(engine):
    """Its lease lapsed or passed on while it waits on the provider, and the source is
    due: the other processes may take it, the one still syncing it may not (two syncs
    of one source in one process took the lease from each other, over and over)."""
    kimi, moon = (make_source(name, "moonshot", "https://api.test/v1", KEY) for name in "ab")
    me, other = "run:me:1:aaa", "run:other:2:bbb"
    with engine.begin() as conn:
        sources.register(conn, [kimi, moon])
        conn.execute(sa.text("UPDATE sources SET next_due_at = now() - interval '1 minute'"))
        claimed = sources.claim_due(
            conn, ["a", "b"], me, limit=2, failing_limit=1, lease_seconds=0.01
        )
    assert sorted(lease.source for lease in claimed) == ["a", "b"]
    time.sleep(0.05)  # both leases lapse while their syncs wait on the provider

    def claim(owner: str, running: list[str]) -> list[str]:
        with engine.begin() as conn:
            leases = sources.claim_due(
                conn, ["a", "b"], owner, limit=2, failing_limit=1, lease_seconds=60,
                running=running,
            )  # fmt: skip
        return sorted(lease.source for lease in leases)

    assert claim(me, running=["a", "b"]) == []
    assert claim(other, running=[]) == ["a", "b"]


def test_an_initial_load_leaves_fresh_planner_statistics(engine, run, fake, monkeypatch, caplog):
    """After a bulk load, `files` and `file_events` are analyzed at once: plans must not
    wait for autovacuum (the threshold is lowered here from 10,000 files to 3)."""
    monkeypatch.setattr(sync, "BULK_LOAD_FILES", 3)
    for n in range(5):
        fake.add(f"f{n}")

    assert run().outcome is Outcome.OK

    assert "could not analyze" not in caplog.text
    estimated = rows(
        engine,
        "SELECT relname, reltuples::int AS n FROM pg_class"
        " WHERE relname IN ('files', 'file_events') ORDER BY relname",
    )
    assert estimated == [{"relname": "file_events", "n": 5}, {"relname": "files", "n": 5}]
