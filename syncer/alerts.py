"""Which alerts a sync raises, and how an alert reads to the person it pages.

Pure: the sync decides its alerts from its plan and the source's recent history
(DESIGN.md 6), the outbox stores them in the same transaction, and the dispatcher
renders each stored alert into a message. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from syncer.model import EventKind, Outcome, StatusClass, classify_status

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from syncer.diff import Plan, PlannedEvent
    from syncer.model import ListedFile

# A source alerts when its failed runs in a row reach this many (DESIGN.md 6).
FAILURE_STREAK = 3


class AlertKind(StrEnum):
    FILE_FAILED = "file_failed"
    SOURCE_FAILING = "source_failing"
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
    AlertKind.SOURCE_RECOVERED: Severity.SUCCESS,
    AlertKind.RUN_HELD: Severity.WARNING,
}


@dataclass(frozen=True, slots=True)
class SourceHistory:
    """What the runs before the current one say about a source.

    consecutive_failures:  `failed` runs since the last run that was not failed.
    last_complete_outcome: outcome of the latest `ok` or `held` run (the runs whose
                           listing was complete), None if there was none.
    """

    consecutive_failures: int = 0
    last_complete_outcome: Outcome | None = None


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
    for event in plan.events:
        file = listed.get(event.file_id)
        if file is not None and _enters_failed(event, file):
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
    elif alert_kind is AlertKind.SOURCE_RECOVERED:
        title = f"syncer: source {source} recovered"
        lines = [
            (
                f"Source {source} ({provider}) synced again ({payload.get('outcome')}) "
                f"after {payload.get('failed_runs')} failed syncs in a row."
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


def _enters_failed(event: PlannedEvent, file: ListedFile) -> bool:
    if file.status_class is not StatusClass.FAILED:
        return False
    if event.kind in (EventKind.APPEARED, EventKind.REAPPEARED):
        return True
    was = classify_status(event.old_status, provider_reports_status=True)
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
