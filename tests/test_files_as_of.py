"""`files_as_of(t)` and `file_history` agree with a replay of the events in Python.

Hypothesis makes up a few hours of listings for a Moonshot and a SiliconFlow account
(files appearing, changing, vanishing, coming back, listings failing); real syncs
against the simulator record them; then, at times before, at and between the syncs,
the SQL rebuild must equal both a plain Python fold over `file_events` and the
listings themselves.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import TABLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncer.config import SourceConfig
from syncer.providers import get_provider, provider_names
from syncer.redaction import Secret
from syncer.simulator import Account, Fault, Simulator
from syncer.sync import sync_source

ACCOUNTS = (Account("m", "moonshot", "sk-prop-m"), Account("s", "siliconflow", "sk-prop-s"))
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
STEP = timedelta(hours=1)
IDS = ("a", "b", "c", "d")
COLUMNS = (
    "source",
    "file_id",
    "provider",
    "filename",
    "purpose",
    "bytes",
    "line_count",
    "status",
    "status_details",
    "status_class",
    "created_at",
    "first_seen_at",
    "changed_at",
)
CREATED = (1_767_225_600, 1_767_229_200)

moonshot_file = st.fixed_dictionaries(
    {
        "filename": st.sampled_from(["x.pdf", "y.pdf"]),
        "purpose": st.sampled_from(["file-extract", "batch"]),
        "bytes": st.integers(1, 3),
        "created_at": st.sampled_from(CREATED),
        "status": st.sampled_from(["ok", "processing", "error", "Weird", None]),
        "status_details": st.sampled_from(["", "bad"]),
    }
)
siliconflow_file = st.fixed_dictionaries(
    {
        "filename": st.sampled_from(["x.jsonl", "y.jsonl"]),
        "purpose": st.just("batch"),
        "bytes": st.integers(1, 3),
        "created_at": st.sampled_from(CREATED),
        "line_count": st.sampled_from([None, 10, 20]),
    }
)
# One step: each account's listing, or None for a listing that fails.
step = st.fixed_dictionaries(
    {
        "m": st.none() | st.dictionaries(st.sampled_from(IDS), moonshot_file),
        "s": st.none() | st.dictionaries(st.sampled_from(IDS), siliconflow_file),
    }
)


@pytest.fixture(scope="module")
def simulator():
    with Simulator(ACCOUNTS, seed=1) as sim:
        yield sim


def serve(sim: Simulator, account: str, listing: dict[str, dict[str, Any]] | None) -> None:
    """Make the account list exactly `listing`, or fail every request if it is None."""
    sim.set_persistent_fault(account, None if listing is not None else Fault.status(401))
    if listing is None:
        return
    current = {item["id"] for item in sim.files(account)}
    for file_id in current - set(listing):
        sim.delete_file(account, file_id)
    for file_id, fields in listing.items():
        if file_id in current:
            sim.update_file(account, file_id, **fields)
        else:
            sim.add_file(account, id=file_id, **fields)


def replay(events: list[sa.Row[Any]], at: datetime) -> list[tuple[Any, ...]]:
    """The present files at `at`, by folding the events' new values in id order."""
    fields: dict[tuple[str, str], dict[str, Any]] = {}
    present: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:
        if event.occurred_at > at:
            break
        key = (event.source, event.file_id)
        if event.kind in ("disappeared", "expired"):
            del present[key]
            continue
        first_seen = fields[key]["first_seen_at"] if key in fields else event.occurred_at
        state = {**fields.get(key, {}), **{k: v[1] for k, v in event.changes.items()}}
        state.update(first_seen_at=first_seen, changed_at=event.occurred_at)
        fields[key] = state
        present[key] = {
            **state,
            "source": event.source,
            "file_id": event.file_id,
            "provider": event.provider,
            "status_class": get_provider(event.provider).items.classify(state["status"]).value,
            "created_at": datetime.fromisoformat(state["created_at"]),
        }
    return [tuple(present[key][c] for c in COLUMNS) for key in sorted(present)]


def truth(listings: dict[str, dict[str, dict[str, Any]]]) -> dict[tuple[str, str], Any]:
    """(source, file_id) -> (bytes, status) of the files the last good listings held."""
    return {
        (account, file_id): (fields["bytes"], fields.get("status"))
        for account, listing in listings.items()
        for file_id, fields in listing.items()
    }


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(step, min_size=1, max_size=4))
def test_files_as_of_agrees_with_a_replay_of_the_events(engine, rules, policy, simulator, steps):
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY"))
    serve(simulator, "m", {})
    serve(simulator, "s", {})
    sources = [
        SourceConfig(
            name=a.name,
            provider=a.provider,
            api_key=Secret(a.api_key),
            base_url=simulator.base_url(a.name),
        )
        for a in ACCOUNTS
    ]
    listed: dict[str, dict[str, dict[str, Any]]] = {"m": {}, "s": {}}
    expected_at: list[tuple[datetime, dict[tuple[str, str], Any]]] = [(START - STEP, {})]
    for number, listings in enumerate(steps):
        at = START + number * STEP
        for source in sources:
            serve(simulator, source.name, listings[source.name])
            sync_source(engine, source, rules=rules, policy=policy, clock=lambda at=at: at)
            if listings[source.name] is not None:
                listed[source.name] = listings[source.name]
        expected_at.append((at, truth(listed)))
        expected_at.append((at + STEP / 2, truth(listed)))

    with engine.connect() as conn:
        events = list(conn.execute(sa.text("SELECT * FROM file_events ORDER BY id")))
        for at, expected in expected_at:
            rebuilt = [
                tuple(row)
                for row in conn.execute(
                    sa.text(f"SELECT {', '.join(COLUMNS)} FROM files_as_of(:at)"), {"at": at}
                )
            ]

            assert rebuilt == replay(events, at)
            assert {(r[0], r[1]): (r[5], r[7]) for r in rebuilt} == expected

        current = conn.execute(
            sa.text(f"SELECT {', '.join(COLUMNS)} FROM current_files ORDER BY source, file_id")
        )
        assert [tuple(row) for row in current] == replay(events, START + 99 * STEP)


WHITESPACE = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
KNOWN = ["ok", "ready", "processed", "success", "error", "failed", "uploaded", "processing",
         "validating", "in_progress"]  # fmt: skip
padding = st.text(alphabet=WHITESPACE, max_size=2)
spelled = st.sampled_from(KNOWN).flatmap(
    lambda word: st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(word, upper, strict=True))
    )
)
status = (
    st.none()
    | st.builds(lambda a, w, b: a + w + b, padding, spelled, padding)
    | st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"))
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pairs=st.lists(st.tuples(st.sampled_from(provider_names()), status), max_size=40))
def test_file_history_shows_the_class_each_provider_gives_its_status(engine, pairs):
    # Events carry the class their provider's module gave the status when written;
    # file_history reads it, whatever the status says to any other provider.
    with engine.begin() as conn:
        run_id = conn.execute(
            sa.text(
                "INSERT INTO sync_runs (source, provider, started_at, outcome)"
                " VALUES ('prop', 'prop', now(), 'ok') RETURNING id"
            )
        ).scalar_one()
        for n, (provider, value) in enumerate(pairs):
            conn.execute(
                sa.text(
                    "INSERT INTO file_events (sync_run_id, occurred_at, source, provider,"
                    " file_id, kind, new_status, changes, new_status_class)"
                    " VALUES (:run, now(), 'prop-' || :provider, :provider, :id, 'appeared',"
                    " :status, CAST(:changes AS jsonb), :class)"
                ),
                {
                    "run": run_id,
                    "provider": provider,
                    "id": f"f{n}",
                    "status": value,
                    "changes": json.dumps({"status": [None, value]}),
                    "class": get_provider(provider).items.classify(value).value,
                },
            )
        shown = conn.execute(
            sa.text(
                "SELECT provider, status, status_class FROM file_history"
                " WHERE source LIKE 'prop-%' ORDER BY event_id"
            )
        ).all()
        conn.rollback()

    assert [tuple(row) for row in shown] == [
        (provider, value, get_provider(provider).items.classify(value).value)
        for provider, value in pairs
    ]


def test_no_sql_function_or_view_names_a_provider(engine):
    with engine.connect() as conn:
        bodies = conn.execute(
            sa.text(
                "SELECT definition FROM pg_views WHERE schemaname = 'public'"
                " UNION ALL SELECT prosrc FROM pg_proc"
                " WHERE pronamespace = 'public'::regnamespace"
            )
        ).scalars()
        text = "\n".join(bodies).lower()

    for name in provider_names():
        assert f"'{name}'" not in text
