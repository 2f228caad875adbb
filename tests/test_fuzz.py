"""Bad input, generated (issue 7, item 4): listings full of odd items through
parse -> diff -> store, against real PostgreSQL.

Each example starts a source from a listing of good files, then serves it listings
that keep some of them, change others in odd ways and add junk: ids of any unicode
(NUL and lone surrogates included), huge strings, nulls, wrong types, duplicates,
extra and nested fields, timestamps in s, ms and µs, negative and huge numbers. The
body goes over httpx.MockTransport as JSON text, so the adapters' own JSON handling
is part of it. Whatever comes, a sync must:

- return a result, never raise, and not fail: an odd item is skipped, not fatal;
- make nothing disappear from a listing with an unusable item;
- store every usable item as parsed, so the same listing again changes nothing;
- leave the events agreeing with the rows (tests/history.py).
"""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from conftest import make_source
from history import history_problems
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncer.config import HttpPolicy, SyncRules
from syncer.diff import StoredFile, plan_sync
from syncer.model import Listing, Outcome
from syncer.providers import get_provider
from syncer.providers.http import parse_json
from syncer.providers.items import parse_items
from syncer.sync import sync_source

KEY = "sk-fuzz-0123456789abcdef"
PROVIDERS = ("moonshot", "siliconflow")
# A number no Python float holds: the marker is swapped for it in the JSON text.
HUGE_FLOAT_MARKER = "__fuzz_1e400__"
# Bodies are always valid JSON here, so the budget only matters if that breaks.
POLICY = HttpPolicy(retry_budget=0.1, wait_initial=0.01, wait_max=0.02)
# The breaker needs at least 10 disappearances: with at most 6 files it never trips.
RULES = SyncRules(missing_grace=1, mass_disappear_fraction=0.5, mass_disappear_min=10)
_names = itertools.count()

# --- Strategies ---------------------------------------------------------------------

# What PostgreSQL can store: no NUL, no lone surrogate (st.text() never makes those).
clean_text = st.text(st.characters(exclude_characters="\x00"), max_size=20)
lone_surrogate = st.integers(0xD800, 0xDFFF).map(chr)
any_text = st.text(st.one_of(st.characters(), lone_surrogate, st.just("\x00")), max_size=20)
huge_text = st.builds(
    lambda unit, times: unit * times, st.text(min_size=1, max_size=3), st.integers(5_000, 200_000)
)
text = st.one_of(clean_text, any_text, huge_text)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.just(HUGE_FLOAT_MARKER),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, text)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=6,
)
timestamps = st.one_of(
    st.integers(0, 4 * 10**9),  # seconds
    st.integers(10**11, 4 * 10**12),  # milliseconds
    st.integers(10**14, 4 * 10**15),  # microseconds
    st.floats(0, 4e9),
    st.integers(-(2**40), -1),
    st.integers(2**62, 2**70),
)
statuses = st.one_of(
    st.sampled_from(["ok", "error", "processing", "ready", "failed", " OK ", ""]), clean_text
)
odd_values = st.one_of(json_values, timestamps, text, numbers)


@st.composite
def good_items(draw: st.DrawFn, provider: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": draw(st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=24)),
        "object": "file",
        "bytes": draw(st.integers(0, 2**62)),
        "created_at": draw(st.integers(0, 4 * 10**9) | st.integers(10**11, 4 * 10**12)),
        "filename": draw(clean_text),
        "purpose": draw(st.sampled_from(["batch", "file-extract"]) | clean_text),
    }
    if provider == "moonshot":
        item["status"] = draw(statuses)
        item["status_details"] = draw(clean_text)
    else:
        item["line_count"] = draw(st.none() | st.integers(0, 2**31 - 1))
    return item


@st.composite
def oddly_changed(draw: st.DrawFn, item: dict[str, Any]) -> dict[str, Any]:
    """`item` with one field changed to an odd value, removed, or an extra field added."""
    changed = dict(item)
    field = draw(st.sampled_from([*item, "extra", "createdAt"]))
    how = draw(st.sampled_from(["odd value", "remove", "nested extra"]))
    if how == "remove":
        changed.pop(field, None)
    elif how == "nested extra":
        changed[draw(any_text)] = draw(json_values)
    else:
        changed[field] = draw(odd_values)
    return changed


@st.composite
def listings(draw: st.DrawFn, provider: str) -> tuple[list[Any], list[list[Any]]]:
    """A first listing of good files, then one or two odd listings that follow it."""
    first = draw(st.lists(good_items(provider), max_size=6, unique_by=lambda item: item["id"]))
    later = []
    for _ in range(draw(st.integers(1, 2))):
        items: list[Any] = []
        for item in first:
            what = draw(st.sampled_from(["keep", "keep", "change", "drop", "duplicate"]))
            if what == "keep":
                items.append(item)
            elif what == "change":
                items.append(draw(oddly_changed(item)))
            elif what == "duplicate":
                items += [item, draw(st.just(item) | oddly_changed(item))]
        items += draw(st.lists(good_items(provider), max_size=2))
        items += draw(st.lists(json_values | oddly_changed({"id": "x"}), max_size=2))
        later.append(draw(st.permutations(items)))
    return first, later


# --- Serving and checking -----------------------------------------------------------


def body(provider: str, items: list[Any]) -> bytes:
    if provider == "moonshot":
        document: dict[str, Any] = {"object": "list", "data": items}
    else:
        document = {"code": 20000, "message": "Ok", "status": True, "data": {"data": items}}
    encoded = json.dumps(document)  # ASCII: lone surrogates and NUL go as \u escapes
    return encoded.replace(f'"{HUGE_FLOAT_MARKER}"', "1e400").encode()


def listed_items(provider: str, raw: bytes) -> list[Any]:
    document = parse_json(raw)
    assert isinstance(document, dict)
    data = document["data"] if provider == "moonshot" else document["data"]["data"]
    assert isinstance(data, list)
    return data


def rows(engine: sa.Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


class Source:
    """One fresh source per example: a listing to serve and the syncs of it."""

    def __init__(self, engine: sa.Engine, provider: str) -> None:
        self.engine, self.provider = engine, provider
        self.config = make_source(f"fuzz-{next(_names)}", provider, "https://api.test/v1", KEY)
        self.body = b""

    def serve(self, items: list[Any]) -> None:
        self.body = body(self.provider, items)

    def sync(self):
        transport = httpx.MockTransport(lambda _: httpx.Response(200, content=self.body))
        return sync_source(
            self.engine, self.config, rules=RULES, policy=POLICY, transport=transport
        )

    def present(self) -> dict[str, dict[str, Any]]:
        stored = rows(
            self.engine,
            "SELECT * FROM files WHERE source = :s AND deleted_at IS NULL",
            s=self.config.name,
        )
        return {r["file_id"]: r for r in stored}

    def events_of(self, run_id: int) -> list[dict[str, Any]]:
        return rows(self.engine, "SELECT * FROM file_events WHERE sync_run_id = :r", r=run_id)


def check_sync(source: Source) -> None:
    """Sync what `source` serves, then again, and check everything the module promises."""
    before = source.present()
    parsed = parse_items(
        listed_items(source.provider, source.body), get_provider(source.provider).items
    )
    result = source.sync()

    assert result.outcome is not Outcome.FAILED, result.error
    assert result.counts["items_skipped"] == parsed.skipped
    assert result.counts["files_listed"] == len(parsed.files) + parsed.skipped
    usable = {f.file_id: f for f in parsed.files}
    gone = {e["file_id"] for e in source.events_of(result.run_id) if e["kind"] == "disappeared"}
    if parsed.skipped:
        assert result.outcome is Outcome.INCOMPLETE
        assert not gone  # a file skipped as unusable may well still be there
    else:
        assert result.outcome is Outcome.OK
        assert gone == before.keys() - usable.keys()
    present = source.present()
    assert usable.keys() <= present.keys()
    for file_id, listed in usable.items():
        stored = present[file_id]
        assert {
            name: stored[name]
            for name in ("filename", "purpose", "bytes", "line_count", "status", "status_details")
        } == {
            "filename": listed.filename,
            "purpose": listed.purpose,
            "bytes": listed.bytes,
            "line_count": listed.line_count,
            "status": listed.status,
            "status_details": listed.status_details,
        }
        assert stored["created_at"] == listed.created_at
    assert history_problems(source.engine, source.config.name) == []

    again = source.sync()  # the same listing: stored as parsed, so nothing to do
    assert again.outcome is result.outcome
    assert source.events_of(again.run_id) == []


FUZZ = settings(
    max_examples=25,
    deadline=None,
    database=None,  # no .hypothesis directory in the working tree
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # each example makes a source of its own
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@pytest.mark.parametrize("provider", PROVIDERS)
@FUZZ
@given(data=st.data())
def test_odd_listings_never_break_a_sync(engine, provider, data):
    first, later = data.draw(listings(provider))
    source = Source(engine, provider)
    source.serve(first)
    check_sync(source)
    for items in later:
        source.serve(items)
        check_sync(source)


# Bugs the fuzzer found (both fixed), pinned down as plain examples: a random run may
# not generate them again.
GOOD = {
    "id": "file-good",
    "object": "file",
    "bytes": 1,
    "created_at": 1_700_000_000,
    "filename": "good.jsonl",
    "purpose": "batch",
    "status": "ok",
    "status_details": "",
}


def test_a_huge_id_is_skipped_not_fatal(engine):
    source = Source(engine, "moonshot")
    source.serve([GOOD, {**GOOD, "id": random.Random(1).randbytes(1400).hex()}])
    check_sync(source)


def test_a_huge_integer_beside_an_infinite_number_is_not_fatal(engine):
    source = Source(engine, "moonshot")
    source.serve([GOOD, {**GOOD, "id": "file-odd", "extra": [2**64, HUGE_FLOAT_MARKER]}])
    check_sync(source)


@settings(max_examples=300, deadline=None, database=None)
@given(
    provider=st.sampled_from(PROVIDERS),
    items=st.lists(st.one_of(json_values, good_items("moonshot"), good_items("siliconflow"))),
    stored_ids=st.lists(clean_text, max_size=5),
)
def test_parse_and_plan_take_anything(provider, items, stored_ids):
    """Faster and wider, without a database: the pure parse -> diff steps."""
    raw = listed_items(provider, body(provider, items))
    parsed = parse_items(raw, get_provider(provider).items)

    assert len(parsed.files) + parsed.skipped == len(raw)
    assert len({f.file_id for f in parsed.files}) == len(parsed.files)
    stored = {
        file_id: StoredFile(file_id, "f", "batch", 1, None, None, None, datetime.now(UTC))
        for file_id in stored_ids
    }
    listing = Listing(files=parsed.files, skipped=parsed.skipped, problems=parsed.problems)
    plan = plan_sync(listing, stored, RULES)
    if parsed.skipped:
        assert plan.outcome is Outcome.INCOMPLETE
        assert not plan.disappearances
