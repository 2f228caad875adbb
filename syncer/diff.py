"""The pure heart of a sync: a listing and the stored state in, a plan of writes out.

No I/O happens here, so every guarantee about what a listing may and may not do to the
inventory (DESIGN.md 5) is decided, and tested, in this module alone:

- only a complete listing can make a file disappear, and only after it has been missing
  from `missing_grace` complete listings in a row;
- a listing that would make too many files disappear at once is `held`: everything
  else is applied, the disappearances wait;
- a file gone at or after the expiry its provider gave it has `expired`: the
  provider's retention, not a deletion (nor a reason to hold a listing);
- a file whose tracked fields did not change produces no write and no event.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from syncer.bulk import gc_paused
from syncer.model import EventKind, ListedFile, Listing, Outcome, StatusClass

if TYPE_CHECKING:
    from collections.abc import Mapping

    from syncer.config import SyncRules

# The fields whose change is worth an event. `raw` is refreshed along with them but
# not compared: a provider adding a field we do not track must not rewrite every row.
TRACKED_FIELDS = (
    "filename",
    "purpose",
    "bytes",
    "line_count",
    "status",
    "status_details",
    "created_at",
)
_tracked_values = attrgetter(*TRACKED_FIELDS)
_file_id = attrgetter("file_id")


@dataclass(slots=True)
class StoredFile:
    """The columns of a `files` row that the diff compares.

    Not frozen, unlike the other values here, for speed alone: a sync builds one per
    stored file, and a frozen dataclass's __init__ costs five times as much. Nothing
    changes one after it is built.
    """

    file_id: str
    filename: str
    purpose: str
    bytes: int
    line_count: int | None
    status: str | None
    status_details: str | None
    created_at: datetime
    deleted_at: datetime | None = None
    missing_count: int = 0
    expires_at: datetime | None = None

    @property
    def present(self) -> bool:
        return self.deleted_at is None


@dataclass(frozen=True, slots=True)
class StoredState:
    """What a plan needs of a source's stored files.

    present: the missing count of every present file, by id.
    files:   the compared columns of every stored file that the listing may change or
             leave out: all of them but the present files in `Listing.unchanged`.
    """

    present: Mapping[str, int]
    files: Mapping[str, StoredFile]

    @classmethod
    def of(cls, files: Mapping[str, StoredFile]) -> StoredState:
        """The state of a source whose stored files are all at hand."""
        present = {f.file_id: f.missing_count for f in files.values() if f.deleted_at is None}
        return cls(present, files)


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    file_id: str
    kind: EventKind
    old_status: str | None
    new_status: str | None
    changed: dict[str, list[Any]] | ListedFile
    """The changed tracked fields, or for an appearance the file that appeared."""
    status_class: StatusClass | None = None
    """The file's class after the event; None for one that leaves (disappeared, expired)."""

    @property
    def changes(self) -> dict[str, list[Any]]:
        """`{field: [old, new]}`; an appearance has every tracked field, from None.

        An appearance's are built when asked for, by the writer of the events: an
        initial load plans 100,000 of them, and building a dict of eight containers
        for each in the plan, all alive until written, took a third of its time.
        """
        changed = self.changed
        return _snapshot(changed) if isinstance(changed, ListedFile) else changed


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one sync will write, decided before any write happens.

    upserts:         listed files to insert, or to overwrite because a tracked field
                     changed or the file came back; each has exactly one event.
    missing_counts:  (file_id, count) for present files whose only change is how many
                     complete listings in a row they were missing from.
    disappearances:  files to mark deleted now.
    """

    outcome: Outcome
    upserts: tuple[ListedFile, ...]
    missing_counts: tuple[tuple[str, int], ...]
    disappearances: tuple[str, ...]
    events: tuple[PlannedEvent, ...]
    disappearances_held: int = 0
    # Filled on the first count(): a large plan's events are counted once, not per kind.
    _counts: Counter[EventKind] = field(
        default_factory=Counter, init=False, repr=False, compare=False
    )

    def count(self, kind: EventKind) -> int:
        if self.events and not self._counts:
            self._counts.update(event.kind for event in self.events)
        return self._counts[kind]


def plan_sync(
    listing: Listing,
    stored: StoredState | Mapping[str, StoredFile],
    rules: SyncRules,
    *,
    allow_mass_disappear: bool = False,
    now: datetime | None = None,
) -> Plan:
    """Compare a listing with the stored state of the same source and plan the writes.

    `stored` is a StoredState, or simply every stored file of the source by id. `now`
    is when the listing was taken: a file gone at or after its `expires_at` has
    expired (None: no file counts as expired).
    """
    state = stored if isinstance(stored, StoredState) else StoredState.of(stored)
    with gc_paused():  # planning 100,000 appearances creates a million objects
        return _plan(listing, state, rules, allow_mass_disappear=allow_mass_disappear, now=now)


def _plan(
    listing: Listing,
    stored: StoredState,
    rules: SyncRules,
    *,
    allow_mass_disappear: bool,
    now: datetime | None,
) -> Plan:
    upserts: list[ListedFile] = []
    missing_counts: list[tuple[str, int]] = []
    events: list[PlannedEvent] = []

    # Listed exactly as stored: only a missing count can need resetting.
    missing_counts.extend((file_id, 0) for file_id in listing.unchanged if stored.present[file_id])
    known = stored.files
    for listed in listing.files:
        old = known.get(listed.file_id)
        # The usual case first, cheaply: a present file whose tracked fields are equal.
        if (
            old is not None
            and old.deleted_at is None
            and _tracked_values(old) == _tracked_values(listed)
        ):
            if old.missing_count:
                missing_counts.append((listed.file_id, 0))
            continue
        event = _event_for_listed(listed, old)
        if event is not None:
            upserts.append(listed)
            events.append(event)
        elif old is not None and old.missing_count:
            missing_counts.append((listed.file_id, 0))

    outcome = Outcome.OK if listing.complete else Outcome.INCOMPLETE
    disappearances: list[str] = []
    held = 0
    if listing.complete:
        held = _plan_missing(
            listing,
            stored,
            rules,
            allow_mass_disappear=allow_mass_disappear,
            now=now,
            into=(disappearances, events, missing_counts),
        )
        if held:
            outcome = Outcome.HELD

    events.sort(key=_file_id)
    return Plan(
        outcome=outcome,
        upserts=tuple(upserts),
        missing_counts=tuple(sorted(missing_counts)),
        disappearances=tuple(sorted(disappearances)),
        events=tuple(events),
        disappearances_held=held,
    )


def _plan_missing(
    listing: Listing,
    stored: StoredState,
    rules: SyncRules,
    *,
    allow_mass_disappear: bool,
    now: datetime | None,
    into: tuple[list[str], list[PlannedEvent], list[tuple[str, int]]],
) -> int:
    """Plan what a complete listing does to present files it left out.

    Appends to `into` (disappearances, events, missing_counts); returns how many
    disappearances the breaker holds back (0: none, or it did not trip). Expirations
    are the provider's schedule, not a sign of a broken listing: they neither count
    towards the breaker nor are held by it.
    """
    disappearances, events, missing_counts = into
    listed_ids = {listed.file_id for listed in listing.files}
    listed_ids.update(listing.unchanged)
    missing = [stored.files[file_id] for file_id in stored.present if file_id not in listed_ids]
    due = [f for f in missing if f.missing_count + 1 >= rules.missing_grace]
    expired = {f.file_id for f in due if _has_expired(f, now)}
    held = 0
    vanished = len(due) - len(expired)
    # Measured against the files that were not due to expire anyway.
    not_expiring = len(stored.present) - len(expired)
    if not allow_mass_disappear and _trips_breaker(vanished, not_expiring, rules):
        held = vanished
    for gone in missing:
        is_due = gone.missing_count + 1 >= rules.missing_grace
        if is_due and (gone.file_id in expired or not held):
            kind = EventKind.EXPIRED if gone.file_id in expired else EventKind.DISAPPEARED
            disappearances.append(gone.file_id)
            events.append(PlannedEvent(gone.file_id, kind, gone.status, None, {}))
        else:
            # Capped, so that a run held for days does not rewrite the same rows.
            count = min(gone.missing_count + 1, rules.missing_grace)
            if count != gone.missing_count:
                missing_counts.append((gone.file_id, count))
    return held


def _has_expired(gone: StoredFile, now: datetime | None) -> bool:
    return now is not None and gone.expires_at is not None and gone.expires_at <= now


def _event_for_listed(listed: ListedFile, old: StoredFile | None) -> PlannedEvent | None:
    if old is None:
        return PlannedEvent(
            listed.file_id, EventKind.APPEARED, None, listed.status, listed, listed.status_class
        )
    changes = {
        name: [_jsonable(getattr(old, name)), _jsonable(getattr(listed, name))]
        for name in TRACKED_FIELDS
        if getattr(old, name) != getattr(listed, name)
    }
    if not old.present:
        kind = EventKind.REAPPEARED
    elif "status" in changes:
        kind = EventKind.STATUS_CHANGED
    elif changes:
        kind = EventKind.CHANGED
    else:
        return None
    return PlannedEvent(
        listed.file_id, kind, old.status, listed.status, changes, listed.status_class
    )


def _snapshot(listed: ListedFile) -> dict[str, list[Any]]:
    """Every tracked field of an appearing file, as `{field: [None, value]}`.

    Spelled out rather than built from TRACKED_FIELDS (tests check that they agree):
    an initial load builds 100,000 of these.
    """
    return {
        "filename": [None, listed.filename],
        "purpose": [None, listed.purpose],
        "bytes": [None, listed.bytes],
        "line_count": [None, listed.line_count],
        "status": [None, listed.status],
        "status_details": [None, listed.status_details],
        "created_at": [None, listed.created_at.isoformat()],
    }


def _trips_breaker(due: int, present: int, rules: SyncRules) -> bool:
    return due >= rules.mass_disappear_min and due > rules.mass_disappear_fraction * present


def _jsonable(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value
