"""Which alerts a sync raises, and how an alert reads to the person it pages.

Pure: the sync decides its alerts from its plan and the source's recent history
(DESIGN.md 6), the outbox stores them in the same transaction, and the dispatcher
renders each stored alert into a message. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from syncer.model import EventKind, Outcome, StatusClass
from syncer.providers.spec import registry

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from datetime import datetime

    from syncer.diff import Plan, PlannedEvent
    from syncer.model import ListedFile

# A source alerts when its failed runs in a row reach this many (DESIGN.md 6), and
# when its incomplete runs in a row do: such a source never tracks disappearances.
FAILURE_STREAK = 3
INCOMPLETE_STREAK = 3


class AlertKind(StrEnum):
    FILE_FAILED = "file_failed"
    SOURCE_FAILING = "source_failing"
    SOURCE_INCOMPLETE = "source_incomplete"
    SOURCE_RECOVERED = "source_recovered"
    RUN_HELD = "run_held"


class Severity(StrEnum):
    """How a notification presents itself; the values are Apprise's notify types."""

    FAILURE = "failure"
    WARNING = "warning"
    SUCCESS = "success"


_SEVERITY = {
    AlertKind.FILE_FAILED: Severity.FAILURE,
    AlertKind.SOURCE_FAILING: Severity.FAILURE,
    AlertKind.SOURCE_INCOMPLETE: Severity.WARNING,
    AlertKind.SOURCE_RECOVERED: Severity.SUCCESS,
    AlertKind.RUN_HELD: Severity.WARNING,
}


@dataclass(frozen=True, slots=True)
class SourceHistory:
    """What the runs before the current one say about a source.

    consecutive_failures:   `failed` runs since the last run that was not failed.
    last_complete_outcome:  outcome of the latest `ok` or `held` run (the runs whose
                            listing was complete), None if there was none.
    consecutive_incomplete: `incomplete` runs since the last run that was not.
    """

    consecutive_failures: int = 0
    last_complete_outcome: Outcome | None = None
    consecutive_incomplete: int = 0


@dataclass(frozen=True, slots=True)
class NewAlert:
    """An alert to store in the outbox.

    `key` is the alert's stable id: unique in the outbox (the same cause never makes
    two alerts) and shown in every message, so receivers can de-duplicate.
    """

    key: str
    kind: AlertKind
    source: str
    provider: str
    file_id: str | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Message:
    title: str
    body: str
    severity: Severity


# What `syncer alerts test` sends: proof that a target reaches a person.
TEST_MESSAGE = Message(
    title="syncer: test notification",
    body="This is a test from `syncer alerts test`: this target receives syncer's alerts.",
    severity=Severity.SUCCESS,
)


def alerts_for_run(
    source: str,
    provider: str,
    run_id: int,
    plan: Plan,
    history: SourceHistory,
    *,
    observed_at: datetime,
) -> list[NewAlert]:
    """The alerts of a run whose listing was applied (ok, incomplete or held)."""
    alerts: list[NewAlert] = []
    listed = {file.file_id: file for file in plan.upserts}
    classify = registry()[provider].items.classify if provider in registry() else None
    for event in plan.events:
        file = listed.get(event.file_id)
        if file is not None and _enters_failed(event, file, classify):
            alerts.append(
                NewAlert(
                    key=f"{AlertKind.FILE_FAILED}/{source}/{run_id}/{event.file_id}",
                    kind=AlertKind.FILE_FAILED,
                    source=source,
                    provider=provider,
                    file_id=event.file_id,
                    payload=_file_payload(file, event, run_id, observed_at),
                )
            )
    if history.consecutive_failures >= FAILURE_STREAK:
        alerts.append(
            _source_alert(
                AlertKind.SOURCE_RECOVERED,
                source,
                provider,
                run_id,
                observed_at,
                failed_runs=history.consecutive_failures,
                outcome=plan.outcome.value,
            )
        )
    alerts.extend(_incomplete_streak_alerts(source, provider, run_id, plan, history, observed_at))
    # Alert when the breaker trips, not again on every held run while it stays tripped.
    if plan.outcome is Outcome.HELD and history.last_complete_outcome is not Outcome.HELD:
        alerts.append(
            _source_alert(
                AlertKind.RUN_HELD,
                source,
                provider,
                run_id,
                observed_at,
                disappearances_held=plan.disappearances_held,
            )
        )
    return alerts


def _incomplete_streak_alerts(
    source: str,
    provider: str,
    run_id: int,
    plan: Plan,
    history: SourceHistory,
    observed_at: datetime,
) -> list[NewAlert]:
    """source_incomplete when the streak reaches the limit; source_recovered when a
    complete listing (ok or held) ends a streak that had alerted."""
    if plan.outcome is Outcome.INCOMPLETE:
        if history.consecutive_incomplete + 1 != INCOMPLETE_STREAK:
            return []
        return [
            _source_alert(
                AlertKind.SOURCE_INCOMPLETE,
                source,
                provider,
                run_id,
                observed_at,
                incomplete_runs=INCOMPLETE_STREAK,
            )
        ]
    if history.consecutive_incomplete >= INCOMPLETE_STREAK:
        return [
            _source_alert(
                AlertKind.SOURCE_RECOVERED,
                source,
                provider,
                run_id,
                observed_at,
                incomplete_runs=history.consecutive_incomplete,
                outcome=plan.outcome.value,
            )
        ]
    return []


def alerts_for_failed_run(
    source: str,
    provider: str,
    run_id: int,
    history: SourceHistory,
    *,
    error: str,
    observed_at: datetime,
) -> list[NewAlert]:
    """The alert of a failed run: only the one that makes the streak reach the limit."""
    if history.consecutive_failures + 1 != FAILURE_STREAK:
        return []
    return [
        _source_alert(
            AlertKind.SOURCE_FAILING,
            source,
            provider,
            run_id,
            observed_at,
            failed_runs=FAILURE_STREAK,
            error=error,
        )
    ]


def render(key: str, kind: str, source: str, provider: str, payload: Mapping[str, Any]) -> Message:
    """The title and body a person reads, from what the outbox stored."""
    alert_kind = AlertKind(kind)
    at = payload.get("observed_at", "?")
    run = payload.get("sync_run_id", "?")
    lines: list[str]
    if alert_kind is AlertKind.FILE_FAILED:
        status = payload.get("status") or "?"
        details = payload.get("status_details")
        title = f"syncer: file failed at {source}: {payload.get('filename')}"
        lines = [
            (
                f"File {payload.get('file_id')} ({payload.get('filename')}) "
                f"at source {source} ({provider}) has failed."
            ),
            f"Status: {status}" + (f" - {details}" if details else ""),
            (
                f"Purpose: {payload.get('purpose')}, {payload.get('bytes')} bytes, "
                f"created {payload.get('created_at')}"
            ),
            f"Seen by sync run {run} at {at} ({payload.get('event')}).",
        ]
    elif alert_kind is AlertKind.SOURCE_FAILING:
        title = f"syncer: source {source} is failing"
        lines = [
            (
                f"Source {source} ({provider}) has failed {payload.get('failed_runs')} "
                "syncs in a row; its inventory is not being updated."
            ),
            f"Last error: {payload.get('error')}",
            f"Sync run {run} at {at}.",
        ]
    elif alert_kind is AlertKind.SOURCE_INCOMPLETE:
        title = f"syncer: source {source} lists incompletely"
        lines = [
            (
                f"Source {source} ({provider}) has had {payload.get('incomplete_runs')} "
                "incomplete listings in a row (unusable items, a listing cut short, or "
                "pages that ended early): files that are gone are not being marked "
                "disappeared."
            ),
            "The sync log names the cause of each incomplete listing.",
            f"Sync run {run} at {at}.",
        ]
    elif alert_kind is AlertKind.SOURCE_RECOVERED:
        title = f"syncer: source {source} recovered"
        streak = (
            f"{payload.get('failed_runs')} failed syncs"
            if "failed_runs" in payload
            else f"{payload.get('incomplete_runs')} incomplete listings"
        )
        lines = [
            (
                f"Source {source} ({provider}) synced again ({payload.get('outcome')}) "
                f"after {streak} in a row."
            ),
            f"Sync run {run} at {at}.",
        ]
    else:
        title = f"syncer: disappearances held back at {source}"
        lines = [
            (
                f"Source {source} ({provider}) listed so few of its files that "
                f"{payload.get('disappearances_held')} would disappear at once; syncer "
                "held these disappearances back (everything else was applied)."
            ),
            (
                "If the files are really gone, run: "
                f"syncer sync --source {source} --allow-mass-disappear"
            ),
            f"Sync run {run} at {at}.",
        ]
    lines.append(f"Alert id: {key}")
    return Message(title=title, body="\n".join(lines), severity=_SEVERITY[alert_kind])


def _enters_failed(
    event: PlannedEvent,
    file: ListedFile,
    classify: Callable[[str | None], StatusClass] | None,
) -> bool:
    """Whether the event puts the file in the failed class it was not in before.

    The class before is the provider's reading of the old status (its registry entry);
    an unknown provider's old status is taken as not failed.
    """
    if file.status_class is not StatusClass.FAILED:
        return False
    if event.kind in (EventKind.APPEARED, EventKind.REAPPEARED):
        return True
    was = classify(event.old_status) if classify is not None else StatusClass.UNKNOWN
    return event.kind is EventKind.STATUS_CHANGED and was is not StatusClass.FAILED


def _file_payload(
    file: ListedFile, event: PlannedEvent, run_id: int, observed_at: datetime
) -> dict[str, Any]:
    return {
        "file_id": file.file_id,
        "filename": file.filename,
        "purpose": file.purpose,
        "bytes": file.bytes,
        "status": file.status,
        "status_details": file.status_details,
        "status_class": file.status_class.value,
        "created_at": file.created_at.isoformat(),
        "event": event.kind.value,
        "old_status": event.old_status,
        "sync_run_id": run_id,
        "observed_at": observed_at.isoformat(),
    }


def _source_alert(
    kind: AlertKind,
    source: str,
    provider: str,
    run_id: int,
    observed_at: datetime,
    **details: object,
) -> NewAlert:
    return NewAlert(
        key=f"{kind}/{source}/{run_id}",
        kind=kind,
        source=source,
        provider=provider,
        file_id=None,
        payload={"sync_run_id": run_id, "observed_at": observed_at.isoformat(), **details},
    )
