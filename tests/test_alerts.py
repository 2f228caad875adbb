"""Which alerts a sync raises (DESIGN.md 6) and what a person reads: the pure part."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from test_diff import RULES, listed, state, stored

from syncer.alerts import (
    FAILURE_STREAK,
    AlertKind,
    Severity,
    SourceHistory,
    alerts_for_failed_run,
    alerts_for_run,
    render,
)
from syncer.diff import plan_sync
from syncer.model import Listing, Outcome, StatusClass

AT = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
QUIET = SourceHistory(consecutive_failures=0, last_complete_outcome=Outcome.OK)


def failed(file_id: str, status: str = "error", **fields: object):
    return listed(file_id, status, status_class=StatusClass.FAILED, **fields)


def raised(listing_files, stored_files=(), history=QUIET, run_id=7):
    plan = plan_sync(Listing(files=tuple(listing_files)), state(*stored_files), RULES)
    return alerts_for_run("kimi", "moonshot", run_id, plan, history, observed_at=AT)


def test_a_file_that_appears_failed_raises_one_alert_with_what_a_person_needs():
    (alert,) = raised([failed("f1", status_details="line 3: bad json"), listed("f2")])

    assert alert.kind is AlertKind.FILE_FAILED
    assert (alert.source, alert.provider, alert.file_id) == ("kimi", "moonshot", "f1")
    assert alert.key == "file_failed/kimi/7/f1"
    assert alert.payload["status"] == "error"
    assert alert.payload["status_details"] == "line 3: bad json"
    assert alert.payload["filename"] == "f1.jsonl"
    assert alert.payload["event"] == "appeared"


def test_a_file_that_changes_to_failed_raises_an_alert():
    (alert,) = raised([failed("f1")], [stored("f1", "processing")])

    assert alert.payload["old_status"] == "processing"
    assert alert.payload["event"] == "status_changed"


def test_a_file_that_reappears_failed_raises_an_alert():
    gone = stored("f1", "error", deleted_at=AT)

    (alert,) = raised([failed("f1")], [gone])

    assert alert.payload["event"] == "reappeared"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (stored("f1", "error"), failed("f1", "failed")),  # failed -> failed: no news
        (stored("f1", "error"), failed("f1", filename="renamed.jsonl")),  # other field only
        (stored("f1", "error"), failed("f1")),  # unchanged
        (stored("f1", "processing"), listed("f1", "ok")),  # pending -> ready
    ],
)
def test_no_alert_unless_the_file_enters_failed(before, after):
    assert raised([after], [before]) == []


def test_the_failure_streak_alerts_once_when_it_reaches_the_limit():
    def failing(previous_failures: int):
        history = SourceHistory(consecutive_failures=previous_failures)
        return alerts_for_failed_run(
            "kimi", "moonshot", 40 + previous_failures, history, error="HTTP 503", observed_at=AT
        )

    assert failing(FAILURE_STREAK - 2) == []
    (alert,) = failing(FAILURE_STREAK - 1)
    assert failing(FAILURE_STREAK) == []  # still failing: no repeat every interval

    assert alert.kind is AlertKind.SOURCE_FAILING
    assert alert.key == f"source_failing/kimi/{40 + FAILURE_STREAK - 1}"
    assert alert.payload["error"] == "HTTP 503"
    assert alert.file_id is None


def test_recovery_is_announced_only_after_a_failure_alert():
    short_streak = SourceHistory(consecutive_failures=FAILURE_STREAK - 1)
    long_streak = SourceHistory(consecutive_failures=FAILURE_STREAK + 4)

    assert raised([listed("a")], history=short_streak) == []
    (alert,) = raised([listed("a")], history=long_streak)
    assert alert.kind is AlertKind.SOURCE_RECOVERED
    assert alert.payload["failed_runs"] == FAILURE_STREAK + 4


def test_a_held_run_alerts_when_the_breaker_trips_not_on_every_held_run():
    present = [stored(f"f{i}") for i in range(20)]
    nearly_empty = [listed("f0")]

    (alert,) = raised(nearly_empty, present, history=QUIET)
    again = raised(nearly_empty, present, history=SourceHistory(0, Outcome.HELD))

    assert alert.kind is AlertKind.RUN_HELD
    assert alert.payload["disappearances_held"] == 19
    assert again == []


def test_a_rendered_alert_names_source_file_status_time_and_its_id():
    (alert,) = raised([failed("file-abc", status_details="invalid jsonl at line 3")])

    message = render(alert.key, alert.kind, alert.source, alert.provider, alert.payload)

    assert message.severity is Severity.FAILURE
    assert "kimi" in message.title
    assert "file-abc.jsonl" in message.title
    for expected in (
        "file-abc",
        "moonshot",
        "Status: error - invalid jsonl at line 3",
        AT.isoformat(),
        f"Alert id: {alert.key}",
    ):
        assert expected in message.body


@pytest.mark.parametrize(
    ("history", "listing", "stored_files", "expected"),
    [
        (SourceHistory(FAILURE_STREAK), [listed("a")], [], "synced again (ok)"),
        (QUIET, [listed("f0")], [stored(f"f{i}") for i in range(20)], "--allow-mass-disappear"),
    ],
)
def test_every_kind_renders_a_readable_message(history, listing, stored_files, expected):
    (alert,) = raised(listing, stored_files, history=history)

    message = render(alert.key, alert.kind, alert.source, alert.provider, alert.payload)

    assert expected in message.body
    assert message.body.endswith(f"Alert id: {alert.key}")


def test_a_failing_source_message_quotes_the_redacted_error():
    (alert,) = alerts_for_failed_run(
        "kimi",
        "moonshot",
        3,
        SourceHistory(FAILURE_STREAK - 1),
        error="HTTP 401: Invalid token",
        observed_at=AT,
    )

    message = render(alert.key, alert.kind, alert.source, alert.provider, alert.payload)

    assert "failed 3 syncs in a row" in message.body
    assert "Last error: HTTP 401: Invalid token" in message.body


# --- a source stuck incomplete ----------------------------------------------------------


def incomplete_run(history: SourceHistory):
    plan = plan_sync(Listing(files=(), skipped=1), state(stored("a")), RULES)
    return alerts_for_run("kimi", "moonshot", 9, plan, history, observed_at=AT)


def test_the_third_incomplete_run_in_a_row_raises_source_incomplete_once():
    by_streak = [incomplete_run(SourceHistory(consecutive_incomplete=n)) for n in range(5)]

    assert [len(alerts) for alerts in by_streak] == [0, 0, 1, 0, 0]
    [alert] = by_streak[2]
    assert (alert.kind, alert.key) == (AlertKind.SOURCE_INCOMPLETE, "source_incomplete/kimi/9")
    message = render(alert.key, alert.kind, alert.source, alert.provider, alert.payload)
    assert "3 incomplete listings in a row" in message.body
    assert "not being marked disappeared" in message.body


def test_a_complete_listing_after_the_streak_recovers_the_source():
    history = SourceHistory(consecutive_incomplete=4)

    [alert] = raised([listed("a")], [stored("a")], history=history)

    assert alert.kind is AlertKind.SOURCE_RECOVERED
    message = render(alert.key, alert.kind, alert.source, alert.provider, alert.payload)
    assert "after 4 incomplete listings in a row" in message.body
    assert (
        raised([listed("a")], [stored("a")], history=SourceHistory(consecutive_incomplete=2)) == []
    )


def test_entering_failed_uses_the_provider_s_own_classes():
    # Gemini's FAILED after PROCESSING enters failed; its old status is read by Gemini's rules.
    plan = plan_sync(
        Listing(files=(listed("f", "FAILED", status_class=StatusClass.FAILED),)),
        state(stored("f", "PROCESSING")),
        RULES,
    )
    again = plan_sync(
        Listing(files=(listed("f", "FAILED", status_class=StatusClass.FAILED, filename="x"),)),
        state(stored("f", "FAILED")),
        RULES,
    )

    entered = alerts_for_run("g", "gemini", 1, plan, QUIET, observed_at=AT)
    stayed = alerts_for_run("g", "gemini", 2, again, QUIET, observed_at=AT)

    assert [a.kind for a in entered] == [AlertKind.FILE_FAILED]
    assert stayed == []
