"""The audit trail checked against the inventory: DESIGN.md 5.6 as one reusable assertion.

For every file row, its events (in id order) must tell a possible story that ends where
the row is: `appeared` first; statuses chain (each event starts from the status the
previous one ended with); `disappeared` only for a present file and `reappeared` only
for a gone one; and replaying the events' `changes` from nothing rebuilds the row's
tracked fields. A duplicated event breaks the chain, a lost one breaks it or the
replay. Every event belongs to a file row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

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
