"""Every registered provider, end to end: the simulator plays it, syncer syncs it into
the real PostgreSQL, and the rows, events, runs and alerts must be exactly right.

Parametrized over the registry, so a provider added as one module is held to all of
it: listings of several pages, every error class of its taxonomy, expiry, and a
source stuck incomplete.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fakes import (
    FAST_RETRIES,
    PAGE_SIZE,
    Clock,
    a_good_item,
    error_cases,
    paged_simulator,
    source_for,
)

from syncer.alerts import INCOMPLETE_STREAK
from syncer.model import Outcome
from syncer.providers import get_provider, provider_names
from syncer.simulator import Fault
from syncer.sync import sync_source

PROVIDERS = provider_names()


def rows(engine, query: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(query), params)]


def events_of(engine, run_id: int | None) -> set[tuple[str, str]]:
    found = rows(engine, "SELECT file_id, kind FROM file_events WHERE sync_run_id = :r", r=run_id)
    return {(e["file_id"], e["kind"]) for e in found}


def present_ids(engine) -> set[str]:
    return {
        r["file_id"] for r in rows(engine, "SELECT file_id FROM files WHERE deleted_at IS NULL")
    }


def alert_kinds(engine) -> list[str]:
    return [r["kind"] for r in rows(engine, "SELECT kind FROM alerts ORDER BY id")]


def served_ids(sim, provider: str) -> set[str]:
    id_field = get_provider(provider).personality.id_field
    return {item[id_field] for item in sim.files(provider)}


@pytest.fixture
def clock() -> Clock:
    return Clock()


def sync(engine, rules, source, clock, policy=FAST_RETRIES):
    return sync_source(engine, source, rules=rules, policy=policy, clock=clock)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_listing_of_several_pages_then_changes_give_exact_rows_and_events(
    engine, rules, clock, provider
):
    personality = get_provider(provider).personality
    with paged_simulator(provider, clock) as sim:
        sim.add_files(provider, 2 * PAGE_SIZE + 1)
        source = source_for(sim, provider)

        first = sync(engine, rules, source, clock)
        pages = sim.request_count(provider)

        gone = min(served_ids(sim, provider))
        sim.delete_file(provider, gone)
        changed = min(served_ids(sim, provider))
        if personality.status_fields is not None and personality.statuses is not None:
            sim.set_status(provider, changed, personality.statuses[2], "it broke")
        new = sim.add_file(provider)
        clock.now += timedelta(minutes=5)
        second = sync(engine, rules, source, clock)

    assert first.outcome is Outcome.OK, first.error
    assert pages == (3 if personality.pages else 1)
    assert first.counts["files_listed"] == 2 * PAGE_SIZE + 1
    assert second.outcome is Outcome.OK, second.error
    expected = {(gone, "disappeared"), (new, "appeared")}
    if personality.status_fields is not None:
        expected.add((changed, "status_changed"))
    assert events_of(engine, second.run_id) == expected
    assert present_ids(engine) == served_ids(sim, provider)
    [run] = rows(engine, "SELECT * FROM sync_runs WHERE id = :r", r=second.run_id)
    assert (run["appeared"], run["disappeared"], run["expired"]) == (1, 1, 0)
    if personality.status_fields is not None:
        [row] = rows(engine, "SELECT * FROM files WHERE file_id = :f", f=changed)
        assert (row["status_class"], row["status_details"]) == ("failed", "it broke")
        assert alert_kinds(engine) == ["file_failed"]


@pytest.mark.parametrize(
    ("provider", "case"),
    [
        pytest.param(provider, case, id=f"{provider}-{case.name}")
        for provider in PROVIDERS
        for case in error_cases(provider)
    ],
)
def test_every_error_class_fails_the_run_at_once_or_after_retries(
    engine, rules, clock, provider, case
):
    with paged_simulator(provider, clock) as sim:
        sim.add_files(provider, 2)
        source = source_for(sim, provider)
        sync(engine, rules, source, clock)
        before = sim.request_count(provider)
        sim.set_persistent_fault(provider, case.fault)
        result = sync(engine, rules, source, clock)
        attempts = sim.request_count(provider) - before

    assert result.outcome is Outcome.FAILED
    assert case.says in (result.error or "")
    assert sim.api_key(provider) not in (result.error or "")
    if case.retried:
        assert attempts > 1, "a retryable error must be retried"
        assert "gave up after" in (result.error or "")
    else:
        assert attempts == 1, "a fatal error must not be retried"
    # A failed listing changes nothing about files.
    assert len(present_ids(engine)) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_file_gone_at_its_expiry_has_expired_not_disappeared(engine, rules, clock, provider):
    personality = get_provider(provider).personality
    if personality.expiry_fields is None:
        pytest.skip(f"{provider} gives files no expiry")
    expires = int((clock.now + timedelta(hours=1)).timestamp())
    with paged_simulator(provider, clock) as sim:
        sim.add_files(provider, 2)
        keeps, deleted = sorted(served_ids(sim, provider))
        expiring = sim.add_file(provider, **personality.expiry_fields(expires))
        source = source_for(sim, provider)
        sync(engine, rules, source, clock)
        [stored] = rows(engine, "SELECT expires_at FROM files WHERE file_id = :f", f=expiring)

        sim.delete_file(provider, deleted)  # deleted before its expiry, if it had one
        clock.now += timedelta(hours=2)  # the provider deletes the expired file by itself
        result = sync(engine, rules, source, clock)

    assert int(stored["expires_at"].timestamp()) == expires
    assert result.outcome is Outcome.OK, result.error
    assert events_of(engine, result.run_id) == {(expiring, "expired"), (deleted, "disappeared")}
    assert result.counts["expired"] == 1
    assert "1 expired" in result.summary()
    [run] = rows(
        engine, "SELECT disappeared, expired FROM sync_runs WHERE id = :r", r=result.run_id
    )
    assert run == {"disappeared": 1, "expired": 1}
    [row] = rows(engine, "SELECT deleted_at FROM files WHERE file_id = :f", f=expiring)
    assert row["deleted_at"] == clock.now
    assert present_ids(engine) == {keeps}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_source_stuck_incomplete_alerts_once_and_again_when_it_recovers(
    engine, rules, clock, provider
):
    good = a_good_item(provider)
    id_field = get_provider(provider).personality.id_field
    with paged_simulator(provider, clock) as sim:
        sim.add_files(provider, 2)
        source = source_for(sim, provider)
        sync(engine, rules, source, clock)
        everything = served_ids(sim, provider)
        # One permanently unusable item, and only one of the stored files listed.
        sim.set_raw_items(provider, [good, {"broken": True}])
        outcomes, alerts_after = [], []
        for _ in range(INCOMPLETE_STREAK + 1):
            clock.now += timedelta(minutes=5)
            outcomes.append(sync(engine, rules, source, clock).outcome)
            alerts_after.append(alert_kinds(engine))
        present_while_stuck = present_ids(engine)
        sim.set_raw_items(provider, None)
        clock.now += timedelta(minutes=5)
        recovered = sync(engine, rules, source, clock)

    assert outcomes == [Outcome.INCOMPLETE] * (INCOMPLETE_STREAK + 1)
    # Alerted on the third incomplete run in a row, and only then.
    assert [len(a) for a in alerts_after] == [0, 0, 1, 1]
    assert alerts_after[-1] == ["source_incomplete"]
    # Nothing disappeared while incomplete; the good item was applied.
    assert present_while_stuck == everything | {good[id_field]}
    assert recovered.outcome is Outcome.OK
    assert alert_kinds(engine) == ["source_incomplete", "source_recovered"]
    [payload] = rows(engine, "SELECT payload FROM alerts WHERE kind = 'source_recovered'")
    assert payload["payload"]["incomplete_runs"] == INCOMPLETE_STREAK + 1
    # The complete listing tracks disappearances again: the item gone meanwhile.
    assert events_of(engine, recovered.run_id) == {(good[id_field], "disappeared")}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_provider_that_ignores_the_cursor_gives_an_incomplete_listing(
    engine, rules, clock, provider
):
    personality = get_provider(provider).personality
    if not personality.pages:
        pytest.skip(f"{provider} does not page")
    with paged_simulator(provider, clock) as sim:
        sim.add_files(provider, 2 * PAGE_SIZE)
        source = source_for(sim, provider)
        sync(engine, rules, source, clock)
        sim.delete_file(provider, min(served_ids(sim, provider)))
        sim.set_persistent_fault(provider, Fault.broken_paginator())
        result = sync(engine, rules, source, clock)
        requests = sim.request_count(provider)

    assert result.outcome is Outcome.INCOMPLETE
    assert requests < 20  # the loop was caught, not run to the page cap
    assert events_of(engine, result.run_id) == set()  # nothing disappears
    assert len(present_ids(engine)) == 2 * PAGE_SIZE
