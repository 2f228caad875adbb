"""The pure diff: each guarantee of DESIGN.md 5 that a listing alone decides."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from syncer.config import SyncRules
from syncer.diff import TRACKED_FIELDS, StoredFile, plan_sync
from syncer.model import EventKind, ListedFile, Listing, Outcome, StatusClass

CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
GONE_AT = datetime(2026, 2, 1, tzinfo=UTC)
RULES = SyncRules(missing_grace=1, mass_disappear_fraction=0.5, mass_disappear_min=10)


def listed(file_id: str, status: str | None = "ok", **fields: object) -> ListedFile:
    values: dict[str, object] = {
        "file_id": file_id,
        "filename": f"{file_id}.jsonl",
        "purpose": "batch",
        "bytes": 100,
        "line_count": None,
        "status": status,
        "status_details": "",
        "status_class": StatusClass.READY,
        "created_at": CREATED,
        "raw": {"id": file_id},
    }
    values.update(fields)
    return ListedFile(**values)  # type: ignore[arg-type]


def stored(file_id: str, status: str | None = "ok", **fields: object) -> StoredFile:
    item = listed(file_id, status)
    values: dict[str, object] = {name: getattr(item, name) for name in ("file_id", *TRACKED_FIELDS)}
    values.update(fields)
    return StoredFile(**values)  # type: ignore[arg-type]


def state(*files: StoredFile) -> dict[str, StoredFile]:
    return {f.file_id: f for f in files}


def kinds(plan) -> list[tuple[str, EventKind]]:
    return [(e.file_id, e.kind) for e in plan.events]


def test_new_file_appears_with_a_full_snapshot():
    plan = plan_sync(Listing(files=(listed("a"),)), {}, RULES)

    assert plan.outcome is Outcome.OK
    assert [f.file_id for f in plan.upserts] == ["a"]
    (event,) = plan.events
    assert event.kind is EventKind.APPEARED
    assert (event.old_status, event.new_status) == (None, "ok")
    assert event.changes == {
        "filename": [None, "a.jsonl"],
        "purpose": [None, "batch"],
        "bytes": [None, 100],
        "line_count": [None, None],
        "status": [None, "ok"],
        "status_details": [None, ""],
        "created_at": [None, CREATED.isoformat()],
    }


def test_unchanged_listing_plans_no_write_and_no_event():
    plan = plan_sync(
        Listing(files=(listed("a"), listed("b"))), state(stored("a"), stored("b")), RULES
    )

    assert plan.outcome is Outcome.OK
    assert (plan.upserts, plan.missing_counts, plan.disappearances, plan.events) == ((), (), (), ())


def test_untracked_raw_fields_alone_do_not_rewrite_a_row():
    item = listed("a", raw={"id": "a", "new_provider_field": 1})
    plan = plan_sync(Listing(files=(item,)), state(stored("a")), RULES)

    assert plan.upserts == ()
    assert plan.events == ()


def test_status_change_is_status_changed_with_every_changed_field():
    item = listed("a", "error", status_details="bad line 3", status_class=StatusClass.FAILED)
    plan = plan_sync(Listing(files=(item,)), state(stored("a", "processing")), RULES)

    (event,) = plan.events
    assert event.kind is EventKind.STATUS_CHANGED
    assert (event.old_status, event.new_status) == ("processing", "error")
    assert event.changes == {
        "status": ["processing", "error"],
        "status_details": ["", "bad line 3"],
    }
    assert plan.upserts == (item,)


def test_other_tracked_field_change_is_changed():
    plan = plan_sync(Listing(files=(listed("a", bytes=200),)), state(stored("a")), RULES)

    (event,) = plan.events
    assert event.kind is EventKind.CHANGED
    assert event.changes == {"bytes": [100, 200]}
    assert (event.old_status, event.new_status) == ("ok", "ok")


def test_file_missing_from_a_complete_listing_disappears():
    plan = plan_sync(Listing(files=(listed("a"),)), state(stored("a"), stored("b")), RULES)

    assert plan.disappearances == ("b",)
    assert kinds(plan) == [("b", EventKind.DISAPPEARED)]
    assert (plan.events[0].old_status, plan.events[0].new_status) == ("ok", None)


@pytest.mark.parametrize(
    "listing",
    [
        Listing(files=(listed("a"),), truncated=True),
        Listing(files=(listed("a"),), skipped=1, problems=("item 2: id missing",)),
    ],
    ids=["truncated", "unusable-item"],
)
def test_incomplete_listing_never_marks_anything_disappeared(listing):
    plan = plan_sync(listing, state(stored("a", "processing"), stored("b")), RULES)

    assert plan.outcome is Outcome.INCOMPLETE
    assert plan.disappearances == ()
    assert plan.missing_counts == ()
    # What was seen is still applied.
    assert kinds(plan) == [("a", EventKind.STATUS_CHANGED)]


def test_missing_grace_counts_consecutive_complete_listings():
    rules = replace(RULES, missing_grace=3)
    current = state(stored("a"), stored("b"))
    listing = Listing(files=(listed("a"),))

    first = plan_sync(listing, current, rules)
    assert (first.missing_counts, first.events) == ((("b", 1),), ())

    second = plan_sync(listing, state(stored("a"), stored("b", missing_count=1)), rules)
    assert (second.missing_counts, second.events) == ((("b", 2),), ())

    third = plan_sync(listing, state(stored("a"), stored("b", missing_count=2)), rules)
    assert third.disappearances == ("b",)
    assert kinds(third) == [("b", EventKind.DISAPPEARED)]


def test_a_file_seen_again_within_grace_has_its_count_reset_without_an_event():
    rules = replace(RULES, missing_grace=3)
    plan = plan_sync(Listing(files=(listed("b"),)), state(stored("b", missing_count=2)), rules)

    assert plan.missing_counts == (("b", 0),)
    assert plan.events == ()
    assert plan.upserts == ()


def test_incomplete_listing_neither_advances_nor_resets_unseen_counts():
    rules = replace(RULES, missing_grace=3)
    plan = plan_sync(
        Listing(files=(listed("a"),), truncated=True),
        state(stored("a"), stored("b", missing_count=2)),
        rules,
    )
    assert plan.missing_counts == ()
    assert plan.disappearances == ()


def test_deleted_file_listed_again_reappears_with_its_differences():
    gone = stored("a", "processing", deleted_at=GONE_AT)
    plan = plan_sync(Listing(files=(listed("a", "ok"),)), state(gone), RULES)

    (event,) = plan.events
    assert event.kind is EventKind.REAPPEARED
    assert event.changes == {"status": ["processing", "ok"]}
    assert plan.upserts[0].file_id == "a"


def test_reappearance_is_recognised_even_from_an_incomplete_listing():
    gone = stored("a", deleted_at=GONE_AT)
    plan = plan_sync(Listing(files=(listed("a"),), truncated=True), state(gone), RULES)

    assert kinds(plan) == [("a", EventKind.REAPPEARED)]


def test_already_deleted_files_do_not_disappear_again():
    plan = plan_sync(Listing(files=()), state(stored("a", deleted_at=GONE_AT)), RULES)

    assert plan.outcome is Outcome.OK
    assert plan.events == ()


def _present(count: int) -> dict[str, StoredFile]:
    return state(*(stored(f"f{i:03d}") for i in range(count)))


def test_mass_disappearance_is_held_but_everything_else_applies():
    current = _present(20)
    survivors = (*(listed(f"f{i:03d}") for i in range(9)), listed("new"))
    plan = plan_sync(Listing(files=survivors), current, RULES)

    assert plan.outcome is Outcome.HELD
    assert plan.disappearances == ()
    assert plan.disappearances_held == 11
    assert kinds(plan) == [("new", EventKind.APPEARED)]
    # The missing files are remembered, so an allowed run can remove them at once.
    assert len(plan.missing_counts) == 11


def test_a_held_run_repeated_writes_nothing_new():
    current = state(*(replace(f, missing_count=1) for f in _present(20).values()))
    plan = plan_sync(Listing(files=()), current, RULES)

    assert plan.outcome is Outcome.HELD
    assert (plan.missing_counts, plan.events, plan.upserts) == ((), (), ())


def test_allow_mass_disappear_applies_what_the_breaker_would_hold():
    plan = plan_sync(Listing(files=()), _present(20), RULES, allow_mass_disappear=True)

    assert plan.outcome is Outcome.OK
    assert len(plan.disappearances) == 20


@pytest.mark.parametrize(
    ("present", "missing", "outcome"),
    [
        (20, 10, Outcome.OK),  # exactly half is not more than half
        (20, 11, Outcome.HELD),
        (12, 9, Outcome.OK),  # more than half, but fewer than the minimum of 10
        (10, 10, Outcome.HELD),
    ],
)
def test_breaker_needs_both_the_fraction_and_the_minimum(present, missing, outcome):
    listing = Listing(files=tuple(listed(f"f{i:03d}") for i in range(present - missing)))
    plan = plan_sync(listing, _present(present), RULES)

    assert plan.outcome is outcome


def test_events_come_in_file_id_order_whatever_the_listing_order():
    listing = Listing(files=(listed("c"), listed("a", "error"), listed("d")))
    plan = plan_sync(listing, state(stored("a"), stored("b")), RULES)

    assert kinds(plan) == [
        ("a", EventKind.STATUS_CHANGED),
        ("b", EventKind.DISAPPEARED),
        ("c", EventKind.APPEARED),
        ("d", EventKind.APPEARED),
    ]


def test_the_same_listing_planned_twice_yields_its_events_once():
    listing = Listing(files=(listed("a"), listed("b", "error")))
    first = plan_sync(listing, {}, RULES)
    after = state(*(stored(f.file_id, f.status) for f in first.upserts))

    assert plan_sync(listing, after, RULES).events == ()


# --- expiry ---------------------------------------------------------------------------

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def test_a_file_gone_at_or_after_its_expiry_has_expired():
    current = state(
        stored("a"),
        stored("due", expires_at=NOW),
        stored("past", expires_at=datetime(2026, 2, 1, tzinfo=UTC)),
        stored("later", expires_at=datetime(2026, 4, 1, tzinfo=UTC)),
        stored("never"),
    )

    plan = plan_sync(Listing(files=(listed("a"),)), current, RULES, now=NOW)

    assert kinds(plan) == [
        ("due", EventKind.EXPIRED),
        ("later", EventKind.DISAPPEARED),
        ("never", EventKind.DISAPPEARED),
        ("past", EventKind.EXPIRED),
    ]
    assert plan.disappearances == ("due", "later", "never", "past")
    assert (plan.count(EventKind.EXPIRED), plan.count(EventKind.DISAPPEARED)) == (2, 2)
    assert all(e.status_class is None for e in plan.events)


def test_without_a_time_nothing_counts_as_expired():
    plan = plan_sync(Listing(files=()), state(stored("due", expires_at=NOW)), RULES)

    assert kinds(plan) == [("due", EventKind.DISAPPEARED)]


def test_expirations_neither_trip_the_breaker_nor_wait_behind_it():
    # Gemini deletes every file 48 h after upload: a batch uploaded at once expires at once.
    expiring = {f"e{i}": stored(f"e{i}", expires_at=NOW) for i in range(20)}
    vanishing = {f"v{i}": stored(f"v{i}") for i in range(12)}
    kept = {f"k{i}": stored(f"k{i}") for i in range(4)}

    calm = plan_sync(
        Listing(files=tuple(listed(k) for k in {**kept, **vanishing})),
        {**expiring, **vanishing, **kept},
        RULES,
        now=NOW,
    )
    tripped = plan_sync(
        Listing(files=tuple(listed(k) for k in kept)),
        {**expiring, **vanishing, **kept},
        RULES,
        now=NOW,
    )

    assert calm.outcome is Outcome.OK
    assert calm.count(EventKind.EXPIRED) == 20
    assert tripped.outcome is Outcome.HELD
    assert tripped.disappearances_held == 12
    assert set(tripped.disappearances) == set(expiring)


def test_events_that_set_a_file_carry_its_class():
    plan = plan_sync(
        Listing(files=(listed("new", "error", status_class=StatusClass.FAILED),)), {}, RULES
    )

    assert [e.status_class for e in plan.events] == [StatusClass.FAILED]
