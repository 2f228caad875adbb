"""An item listed exactly as stored is recognised by its digest and not parsed again.

What a re-sync of a large, mostly unchanged source rests on (docs/performance.md):
the digest of each item's JSON text is stored with its row, and the next listing
parses only the items whose digest is new. These tests hold that shortcut to the
results of parsing everything: the same files, events and rows, and a whole parse
wherever the shortcut cannot decide.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from conftest import make_source
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz import body, good_items, json_values, oddly_changed

from syncer.config import HttpPolicy, SyncRules
from syncer.db import store
from syncer.providers import fetch_listing, moonshot, siliconflow
from syncer.providers.http import parse_json_checked, split_page
from syncer.providers.items import item_digest, parse_items, parse_raw_items
from syncer.providers.paginator import page_decoder
from syncer.sync import sync_source

KEY = "sk-digest-test-key-0123456789abcdef"
SOURCE = make_source("digests", "moonshot", "https://api.moonshot.test/v1", KEY)
POLICY = HttpPolicy(retry_budget=0.1, wait_initial=0.01, wait_max=0.02)


def item(number: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"f{number:04d}",
        "object": "file",
        "bytes": 1000 + number,
        "created_at": 1_760_000_000 + number,
        "filename": f"report-{number}.pdf",
        "purpose": "file-extract",
        "status": "ok",
        "status_details": "",
        **fields,
    }


class Account:
    """A Moonshot list endpoint serving `items` in that order, as compact JSON."""

    def __init__(self, count: int) -> None:
        self.items = {f"f{n:04d}": item(n) for n in range(count)}

    def body(self) -> bytes:
        document = {"object": "list", "data": list(self.items.values()), "has_more": False}
        return json.dumps(document, separators=(",", ":")).encode()

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(lambda _: httpx.Response(200, content=self.body()))

    def text_of(self, file_id: str) -> bytes:
        return json.dumps(self.items[file_id], separators=(",", ":")).encode()


@pytest.fixture
def account():
    return Account(50)


@pytest.fixture
def sync(engine, account):
    def sync(**kwargs: Any):
        kwargs.setdefault("rules", SyncRules(missing_grace=2))
        return sync_source(engine, SOURCE, policy=POLICY, transport=account.transport(), **kwargs)

    return sync


def listing_now(engine, account):
    """What the next sync's fetch will see, with what is stored now."""
    with engine.connect() as conn:
        known = store.load_known(conn, SOURCE.name)
        conn.rollback()
    return fetch_listing(SOURCE, POLICY, transport=account.transport(), known=known.digests)


def digests(engine) -> dict[str, bytes | None]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT file_id, listed_digest FROM files"))
        return dict(rows.all())


def versions(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT file_id, xmin::text FROM files")).all())


def event_kinds(engine, run_id: int) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT file_id, kind FROM file_events WHERE sync_run_id = :r"), {"r": run_id}
        )
        return dict(rows.all())


def test_each_row_keeps_the_digest_of_its_items_exact_text(engine, account, sync):
    sync()

    assert digests(engine) == {
        file_id: item_digest(account.text_of(file_id)) for file_id in account.items
    }


def test_a_listing_as_stored_is_all_unchanged_and_nothing_is_parsed(engine, account, sync):
    sync()

    listing = listing_now(engine, account)

    assert listing.files == ()
    assert sorted(listing.unchanged) == sorted(account.items)
    assert (listing.items_listed, listing.complete) == (50, True)


def test_only_the_items_that_differ_are_parsed_and_changes_still_count(engine, account, sync):
    sync()
    before = versions(engine)
    account.items["f0003"]["status"] = "error"
    account.items["f0004"]["filename"] = "renamed.pdf"
    del account.items["f0005"]
    account.items["f0999"] = item(999)

    listing = listing_now(engine, account)
    result = sync(rules=SyncRules(missing_grace=1))

    assert sorted(f.file_id for f in listing.files) == ["f0003", "f0004", "f0999"]
    assert len(listing.unchanged) == 47
    assert event_kinds(engine, result.run_id) == {
        "f0003": "status_changed",
        "f0004": "changed",
        "f0005": "disappeared",
        "f0999": "appeared",
    }
    after = versions(engine)
    assert {f for f in before if after[f] != before[f]} == {"f0003", "f0004", "f0005"}
    assert digests(engine)["f0003"] == item_digest(account.text_of("f0003"))


def test_an_untracked_change_is_parsed_each_time_and_never_rewrites_the_row(engine, account, sync):
    sync()
    stored_digest = digests(engine)["f0007"]
    before = versions(engine)
    account.items["f0007"]["new_provider_field"] = {"nested": [1, 2]}

    for _ in range(2):
        assert [f.file_id for f in listing_now(engine, account).files] == ["f0007"]
        result = sync()
        assert (result.outcome.value, event_kinds(engine, result.run_id)) == ("ok", {})
        assert versions(engine) == before
        assert digests(engine)["f0007"] == stored_digest


def test_rows_from_before_digests_are_compared_in_full_and_not_rewritten(engine, account, sync):
    sync()
    with engine.begin() as conn:  # as migration 0004 leaves the rows of an older syncer
        conn.execute(sa.text("UPDATE files SET listed_digest = NULL"))
    before = versions(engine)

    listing = listing_now(engine, account)
    result = sync()

    assert (len(listing.files), listing.unchanged) == (50, ())
    assert event_kinds(engine, result.run_id) == {}
    assert versions(engine) == before


def test_a_file_listed_again_unchanged_after_a_miss_has_its_count_reset(engine, account, sync):
    sync()
    missing = account.items.pop("f0010")
    sync()  # missing once, within the grace of 2 listings
    account.items["f0010"] = missing

    listing = listing_now(engine, account)
    result = sync()

    assert "f0010" in listing.unchanged
    assert event_kinds(engine, result.run_id) == {}
    with engine.connect() as conn:
        count = conn.execute(
            sa.text("SELECT missing_count, deleted_at FROM files WHERE file_id = 'f0010'")
        ).one()
    assert tuple(count) == (0, None)


def test_a_file_that_disappeared_comes_back_parsed_even_with_the_same_text(engine, account, sync):
    sync()
    gone = account.items.pop("f0011")
    sync(rules=SyncRules(missing_grace=1))
    account.items["f0011"] = gone

    listing = listing_now(engine, account)
    result = sync()

    assert [f.file_id for f in listing.files] == ["f0011"]
    assert event_kinds(engine, result.run_id) == {"f0011": "reappeared"}


def test_an_id_listed_twice_is_decided_by_the_whole_parse(engine, account, sync):
    sync()
    copy = dict(account.items["f0001"])
    account.items["copy"] = copy  # the same id under another key: listed twice

    listing = listing_now(engine, account)
    result = sync()

    assert listing.unchanged == ()
    assert listing.skipped == 1
    assert "listed 2 times; kept one identical copy" in listing.problems[0]
    assert (result.outcome.value, event_kinds(engine, result.run_id)) == ("incomplete", {})


# --- The shortcut against a whole parse, on generated listings ------------------------

RAW_PAGES = {"moonshot": page_decoder(moonshot.PAGES), "siliconflow": siliconflow._RAW_PAGE}
ITEMS = {"moonshot": moonshot.ITEMS, "siliconflow": siliconflow.ITEMS}


def raw_items(provider: str, page: Any) -> Any:
    return page.items if provider == "moonshot" else page.data.data


def whole_items(provider: str, document: Any) -> Any:
    return document["data"] if provider == "moonshot" else document["data"]["data"]


@st.composite
def generated_items(draw: st.DrawFn, provider: str) -> list[Any]:
    good = draw(st.lists(good_items(provider), max_size=8))
    odd = draw(st.lists(json_values | oddly_changed({"id": "x"}), max_size=3))
    changed = [draw(oddly_changed(one)) for one in good[: draw(st.integers(0, len(good)))]]
    return draw(st.permutations([*good, *odd, *changed]))


@settings(max_examples=300, deadline=None, database=None)
@given(provider=st.sampled_from(sorted(RAW_PAGES)), data=st.data())
def test_parsing_item_by_item_gives_what_the_whole_parse_gives(provider, data):
    text = body(provider, data.draw(generated_items(provider)))
    document, storable = parse_json_checked(text)
    expected = parse_items(whole_items(provider, document), ITEMS[provider], storable=storable)
    page = split_page(text, RAW_PAGES[provider])
    if page is None:  # left to the whole parse: msgspec refuses lone surrogates
        assert b"\\ud" in text.lower()
        return
    items = raw_items(provider, page)

    fast = parse_raw_items(items, known={}, fields=ITEMS[provider])

    ids = [f.file_id for f in expected.files]
    if fast is None:  # left to the whole parse: only for an id listed more than once
        assert expected.problems
        assert any("listed" in p for p in expected.problems)
        return
    assert len(set(ids)) == len(ids)
    assert [replace(f, digest=None) for f in fast.files] == list(expected.files)
    assert (fast.skipped, fast.problems, fast.unchanged) == (
        expected.skipped,
        expected.problems,
        (),
    )
    # The same items again, each known by its digest: none is parsed.
    known = {f.digest: f.file_id for f in fast.files if f.digest is not None}
    again = parse_raw_items(items, known=known, fields=ITEMS[provider])
    assert again is not None
    assert (again.files, sorted(again.unchanged)) == (
        tuple(f for f in fast.files if f.digest not in known),
        sorted(ids),
    )


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(b'\xef\xbb\xbf{"object":"list","data":[]}', id="byte order mark"),
        pytest.param(b'{"data":[{"id":"a","s":"\\ud800"}]}', id="lone surrogate"),
        pytest.param(b'{"data":[{"id":"a"}],"x":"\xff"}', id="invalid UTF-8 in a skipped field"),
        pytest.param(b'{"data":[{"id":"a"}],"has_more":"false"}', id="has_more not a boolean"),
        pytest.param(b'{"data":{"id":"a"}}', id="data not an array"),
        pytest.param(b'{"data":[{"id":"a"}]} trailing', id="not JSON"),
    ],
)
def test_a_body_off_the_documented_shape_is_left_to_the_whole_parse(text):
    assert split_page(text, page_decoder(moonshot.PAGES)) is None
