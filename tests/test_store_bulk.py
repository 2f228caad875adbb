"""The bulk paths of a sync keep its guarantees: what docs/performance.md changed.

Listings of thousands of files go through orjson, COPY and set-based statements; these
tests hold them to the same contract as test_sync.py: unchanged rows are not rewritten
(xmin), events come once and in order, a failure rolls everything back.
"""

from __future__ import annotations

import gc
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from conftest import make_source
from fakes import ScriptedMoonshot

from syncer.bulk import gc_paused
from syncer.db import store
from syncer.diff import TRACKED_FIELDS, StoredFile, _snapshot
from syncer.model import ListedFile, Outcome, StatusClass
from syncer.providers import moonshot
from syncer.providers.http import parse_json, parse_json_checked
from syncer.providers.items import parse_items
from syncer.simulator import Account, Simulator
from syncer.sync import sync_source

KEY = "sk-bulk-test-key-0123456789abcdef"
FILES = 3000


def item(number: int, status: str = "ok", **fields: Any) -> dict[str, Any]:
    return {
        "id": f"f{number:06d}",
        "object": "file",
        "bytes": 1000 + number,
        "created_at": 1_760_000_000 + number,
        "filename": f"report-{number}.pdf",
        "purpose": "file-extract",
        "status": status,
        "status_details": "",
        **fields,
    }


@pytest.fixture
def listing():
    scripted = ScriptedMoonshot(KEY)
    scripted.items = {f"f{n:06d}": item(n) for n in range(FILES)}
    return scripted


@pytest.fixture
def run(engine, rules, policy, listing):
    source = make_source("bulk", "moonshot", "https://api.moonshot.test/v1", KEY)

    def run(**kwargs: Any):
        kwargs.setdefault("rules", rules)
        return sync_source(
            engine, source, policy=policy, transport=httpx.MockTransport(listing.handler), **kwargs
        )

    return run


def versions(engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT file_id, xmin::text FROM files"))
        return dict(rows.all())


def events(engine, run_id: int) -> list[tuple[int, str, str]]:
    with engine.connect() as conn:
        query = "SELECT id, file_id, kind FROM file_events WHERE sync_run_id = :run ORDER BY id"
        return [tuple(row) for row in conn.execute(sa.text(query), {"run": run_id})]


def test_a_large_unchanged_listing_rewrites_no_row(engine, run):
    first = run()
    before = versions(engine)

    again = run()

    assert (first.counts["appeared"], again.outcome) == (FILES, Outcome.OK)
    assert versions(engine) == before
    assert events(engine, again.run_id) == []


def test_churn_rewrites_exactly_the_changed_rows_and_orders_events(engine, run, listing):
    run()
    before = versions(engine)
    changed = [f"f{n:06d}" for n in range(0, FILES, 100)]
    gone = [f"f{n:06d}" for n in range(50, FILES, 100)]
    for file_id in changed:
        listing.items[file_id] = {**listing.items[file_id], "status": "error"}
    for file_id in gone:
        del listing.items[file_id]
    listing.items["f999999"] = item(999_999)

    result = run()

    after = versions(engine)
    rewritten = {file_id for file_id in before if after[file_id] != before[file_id]}
    assert rewritten == set(changed) | set(gone)
    written = events(engine, result.run_id)
    assert [file_id for _, file_id, _ in written] == sorted([*changed, *gone, "f999999"])
    assert [event_id for event_id, _, _ in written] == sorted(e for e, _, _ in written)
    kinds = {file_id: kind for _, file_id, kind in written}
    assert {kinds[f] for f in changed} == {"status_changed"}
    assert {kinds[f] for f in gone} == {"disappeared"}
    assert kinds["f999999"] == "appeared"


def test_reappearing_and_changed_files_are_overwritten_but_keep_first_seen(engine, run, listing):
    run()
    removed = listing.items.pop("f000007")
    run(allow_mass_disappear=True)
    listing.items["f000007"] = {**removed, "filename": "renamed.pdf"}
    listing.items["f000008"] = {**listing.items["f000008"], "bytes": 1}

    result = run()

    assert (result.counts["reappeared"], result.counts["changed"]) == (1, 1)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT file_id, filename, bytes, deleted_at, first_seen_at < changed_at AS kept,"
                " raw->>'filename' AS raw_name FROM files WHERE file_id IN ('f000007', 'f000008')"
                " ORDER BY file_id"
            )
        ).all()
    assert [tuple(row) for row in rows] == [
        ("f000007", "renamed.pdf", 1007, None, True, "renamed.pdf"),
        ("f000008", "report-8.pdf", 1, None, True, "report-8.pdf"),
    ]


def test_a_failure_in_the_bulk_insert_rolls_everything_back(engine, run, listing):
    with engine.begin() as conn:
        conn.execute(
            sa.text("""
            CREATE FUNCTION refuse_last() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.file_id = 'f002999' THEN RAISE EXCEPTION 'disk on fire'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_last BEFORE INSERT ON files
                FOR EACH ROW EXECUTE FUNCTION refuse_last();
        """)
        )
    try:
        result = run()
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER refuse_last ON files; DROP FUNCTION refuse_last()"))

    assert result.outcome is Outcome.FAILED
    assert "disk on fire" in (result.error or "")
    with engine.connect() as conn:
        counts = conn.execute(
            sa.text("SELECT (SELECT count(*) FROM files), (SELECT count(*) FROM file_events)")
        ).one()
    assert tuple(counts) == (0, 0)
    assert run().counts["appeared"] == FILES


def test_raw_keeps_integers_beyond_64_bits(engine, run, listing):
    listing.items["f000001"] = {**listing.items["f000001"], "extra": 2**70}

    run()

    with engine.connect() as conn:
        extra = conn.execute(
            sa.text("SELECT (raw->>'extra')::numeric FROM files WHERE file_id = 'f000001'")
        ).scalar_one()
    assert extra == 2**70


def test_load_state_reads_what_the_table_holds(engine, run, listing):
    run()
    del listing.items["f000002"]
    run()
    columns = [sa.column(name) for name in StoredFile.__dataclass_fields__]

    with engine.connect() as conn:
        loaded = store.load_state(conn, "bulk")
        query = sa.select(*columns).select_from(sa.table("files"))
        expected = {row.file_id: StoredFile(*row) for row in conn.execute(query)}

    assert loaded == expected
    assert loaded["f000002"].deleted_at is not None
    assert loaded["f000003"].created_at.utcoffset() is not None


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": [1, 2.5, "x", null, true]}',
        b"[123456789012345678901234567890, -9223372036854775809]",
        b'"\\ud800"',
        b'"a\\u0000b"',
        b'\xef\xbb\xbf{"bom": 1}',
        b'{"a": 1, "a": 2}',
        b"1e400",
        '"\u5b63\u5ea6"'.encode(),
        '{"x": 1}'.encode("utf-16"),
    ],
)
def test_parsing_gives_what_the_standard_library_gives(body):
    assert parse_json(body) == json.loads(body)


@pytest.mark.parametrize("body", [b"NaN", b"[Infinity]", b'{"a": 1', b"\xff"])
def test_parsing_refuses_what_it_refused_before(body):
    with pytest.raises(ValueError, match=r"."):
        parse_json(body)


@pytest.mark.parametrize(
    ("body", "storable"),
    [
        (b'{"a": "plain"}', True),
        (b'{"a": "a\\u0000b"}', False),
        (b'{"a": "\\ud800"}', False),
        (b'{"a\\u0000": 1}', False),
        (b'{"a": "\\\\u0000"}', False),  # an escaped backslash: only looks like one
    ],
)
def test_bodies_are_called_storable_only_when_no_string_can_hold_nul_or_surrogates(body, storable):
    assert parse_json_checked(body)[1] is storable


def test_the_appearance_snapshot_has_every_tracked_field_in_order():
    listed = ListedFile(
        file_id="a",
        filename="a.pdf",
        purpose="batch",
        bytes=1,
        line_count=2,
        status="ok",
        status_details="",
        status_class=StatusClass.READY,
        created_at=datetime(2026, 1, 2, tzinfo=UTC),
        raw={},
    )

    snapshot = _snapshot(listed)

    assert tuple(snapshot) == TRACKED_FIELDS
    assert snapshot["created_at"] == [None, "2026-01-02T00:00:00+00:00"]


def test_gc_pauses_nest_and_restore_the_collector():
    assert gc.isenabled()
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()

    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # left as it was found
    finally:
        gc.enable()


def test_the_simulator_serves_a_changed_account_afresh():
    with Simulator([Account("m", "moonshot", "sk-sim-cache-test")], seed=1) as sim:
        file_id = sim.add_file("m")
        url = f"{sim.base_url('m')}/files"
        headers = {"Authorization": "Bearer sk-sim-cache-test"}
        first = httpx.get(url, headers=headers).json()["data"]
        sim.set_status("m", file_id, "error")
        second = httpx.get(url, headers=headers).json()["data"]

    assert [f["status"] for f in first] == ["ok"]
    assert [f["status"] for f in second] == ["error"]


def test_a_parsed_item_fills_every_field_of_its_listed_file():
    raw = item(5, status="Processing", status_details="queued", line_count=7)

    parsed = parse_items([raw], moonshot.ITEMS, storable=True)

    assert parsed.files == (
        ListedFile(
            file_id="f000005",
            filename="report-5.pdf",
            purpose="file-extract",
            bytes=1005,
            line_count=7,
            status="Processing",
            status_details="queued",
            status_class=StatusClass.PENDING,
            created_at=datetime.fromtimestamp(1_760_000_005, UTC),
            raw=raw,
        ),
    )
