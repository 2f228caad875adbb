"""The audit trail checked against the inventory, and against the simulator's truth.

For every file row, its events (in id order) must tell a possible story that ends where
the row is: `appeared` first; statuses chain (each event starts from the status the
previous one ended with); `disappeared` only for a present file and `reappeared` only
for a gone one; and replaying the events' `changes` from nothing rebuilds the row's
tracked fields. A duplicated event breaks the chain, a lost one breaks it or the
replay. Every event belongs to a file row.

The simulator's `step()` returns the changes it made; `as_events` turns them into the
events syncer must record, to compare with `events_after` a point in the trail.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from syncer.model import EventKind

if TYPE_CHECKING:
    from collections.abc import Iterable

    from syncer.simulator import Change, Simulator

TRACKED = ("filename", "purpose", "bytes", "line_count", "status", "status_details", "created_at")


def history_problems(engine: sa.Engine, source: str | None = None) -> list[str]:
    """Every way the events disagree with the rows (of `source`, or of all sources)."""
    where = "" if source is None else " WHERE source = :source"
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(f"SELECT * FROM files{where} ORDER BY source, file_id"), {"source": source}
        ).mappings()
        files = {(r["source"], r["file_id"]): dict(r) for r in rows}
        events: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for event in conn.execute(
            sa.text(f"SELECT * FROM file_events{where} ORDER BY id"), {"source": source}
        ).mappings():
            events.setdefault((event["source"], event["file_id"]), []).append(dict(event))
    problems = [f"{key}: events but no files row" for key in events.keys() - files.keys()]
    for key, row in files.items():
        problems.extend(f"{key}: {p}" for p in _file_problems(row, events.get(key, [])))
    return problems


def assert_history_consistent(engine: sa.Engine, source: str | None = None) -> None:
    problems = history_problems(engine, source)
    assert not problems, "\n".join(problems[:20])


def _file_problems(row: dict[str, Any], events: list[dict[str, Any]]) -> list[str]:
    if not events:
        return ["a files row without events"]
    if events[0]["kind"] != "appeared":
        return [f"first event is {events[0]['kind']}"]
    problems: list[str] = []
    state: dict[str, Any] = {}
    present = False
    for event in events:
        problems.extend(_event_problems(event, state, present=present))
        present = event["kind"] != "disappeared"
        if present:
            for name, (_, after) in event["changes"].items():
                state[name] = after
    gone = row["deleted_at"] is not None
    if present == gone:
        problems.append(f"the last event is {events[-1]['kind']}, the row says gone={gone}")
    rebuilt = {name: state.get(name) for name in TRACKED}
    if rebuilt["created_at"] is not None:
        rebuilt["created_at"] = datetime.fromisoformat(rebuilt["created_at"])
    differs = {n: (rebuilt[n], row[n]) for n in TRACKED if rebuilt[n] != row[n]}
    if differs:
        problems.append(f"replayed events differ from the row (replayed, stored): {differs}")
    return problems


def _event_problems(event: dict[str, Any], state: dict[str, Any], *, present: bool) -> list[str]:
    """What is wrong with `event` coming after a file's `state` (empty before `appeared`)."""
    kind, old, new, at = event["kind"], event["old_status"], event["new_status"], event["id"]
    allowed = {
        "appeared": not state,
        "reappeared": bool(state) and not present,
        "disappeared": present,
        "status_changed": present,
        "changed": present,
    }
    problems = [] if allowed[kind] else [f"event {at}: {kind} cannot happen here"]
    if state and old != state.get("status"):
        problems.append(f"event {at} starts from {old!r}, not {state.get('status')!r}")
    if kind == "disappeared":
        if new is not None or event["changes"]:
            problems.append(f"event {at}: disappeared with a new state")
        return problems
    for name, (before, _) in event["changes"].items():
        if state and before != state.get(name):
            problems.append(f"event {at}: {name} was {state.get(name)!r}, not {before!r}")
    if event["changes"].get("status", [None, state.get("status")])[1] != new:
        problems.append(f"event {at}: new_status {new!r} disagrees with its changes")
    return problems


# --- The truth (the simulator's changes) against the trail --------------------------

Event = tuple[str, str, str, str | None, str | None]


def as_events(changes: Iterable[Change]) -> Counter[Event]:
    """The events syncer must record for `changes`, as (source, file id, kind, old, new)."""
    return Counter(
        (c.account, c.file_id, c.kind.value, c.old_status, c.new_status) for c in changes
    )


def events_after(engine: sa.Engine, last_id: int) -> Counter[Event]:
    """The events recorded after event `last_id`, in the same shape."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT source, file_id, kind, old_status, new_status FROM file_events"
                " WHERE id > :id"
            ),
            {"id": last_id},
        )
        return Counter(tuple(row) for row in rows)


def last_event_id(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        last: int = conn.execute(
            sa.text("SELECT coalesce(max(id), 0) FROM file_events")
        ).scalar_one()
        return last


def in_sync_with(engine: sa.Engine, simulator: Simulator, account: str) -> bool:
    """The source's present files and their statuses are what the simulator lists."""
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT file_id, status FROM current_files WHERE source = :s"), {"s": account}
        )
        return dict(tuple(row) for row in stored) == {
            f["id"]: f.get("status") for f in simulator.files(account)
        }


def alert_ids(messages: Iterable[dict[str, Any]]) -> list[str]:
    """The alert id each message ends with (`Alert id: ...`), in the order received."""
    return [
        line.removeprefix("Alert id: ")
        for message in messages
        for line in message["message"].splitlines()
        if line.startswith("Alert id: ")
    ]


def net_of_tick(changes: Iterable[Change]) -> list[Change]:
    """The changes of one tick as a sync that saw before and after must record them.

    A tick may settle a file and then delete it (the simulator deletes a random file):
    syncer, which never saw the settled status, records one `disappeared` from the
    status before the tick, and nothing else about that file.
    """
    changes = list(changes)
    gone = {(c.account, c.file_id) for c in changes if c.kind is EventKind.DISAPPEARED}
    status_before: dict[tuple[str, str], str | None] = {}
    for change in changes:
        if change.kind is EventKind.STATUS_CHANGED:
            status_before.setdefault((change.account, change.file_id), change.old_status)
    net = []
    for change in changes:
        key = (change.account, change.file_id)
        if change.kind is EventKind.DISAPPEARED and key in status_before:
            net.append(replace(change, old_status=status_before[key]))
        elif key not in gone or change.kind is EventKind.DISAPPEARED:
            net.append(change)
    return net
