"""Alerts from cause to receiver: the outbox in real PostgreSQL, a real webhook receiver.

Syncs run against the simulator; the dispatcher delivers through Apprise to a
`json://` receiver on loopback, which can refuse or be switched off.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from conftest import make_source
from receiver import TOKEN, Receiver

from syncer.alerts import FAILURE_STREAK
from syncer.config import AlertPolicy
from syncer.delivery import build_targets, dispatch_due
from syncer.errors import ConfigError
from syncer.model import Outcome
from syncer.redaction import Secret
from syncer.simulator import Fault
from syncer.sync import sync_source

POLICY = AlertPolicy(backoff_initial=60, backoff_max=600, max_attempts=3)


@pytest.fixture
def receiver():
    with Receiver() as receiver:
        yield receiver


@pytest.fixture
def kimi(simulator):
    return make_source(
        "kimi", "moonshot", simulator.base_url("moonshot"), simulator.api_key("moonshot")
    )


@pytest.fixture
def sync(engine, kimi, rules, policy):
    def run(**options):
        return sync_source(engine, kimi, rules=rules, policy=policy, **options)

    return run


class Clock:
    """The dispatcher's idea of now, so backoff can be stepped over without sleeping."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def alert_rows(engine) -> list[dict]:
    with engine.connect() as conn:
        return [
            dict(row._mapping)
            for row in conn.execute(sa.text("SELECT * FROM alerts ORDER BY id")).all()
        ]


def test_a_file_that_fails_is_delivered_once_with_its_details(engine, simulator, receiver, sync):
    file_id = simulator.add_file("moonshot", status="processing", filename="train.jsonl")
    sync()
    simulator.set_status("moonshot", file_id, "error", "line 7 is not JSON")
    result = sync()
    targets = build_targets([Secret(receiver.url)])

    first = dispatch_due(engine, targets, POLICY)
    second = dispatch_due(engine, targets, POLICY)

    (alert,) = alert_rows(engine)
    assert (alert["kind"], alert["file_id"], alert["sync_run_id"]) == (
        "file_failed",
        file_id,
        result.run_id,
    )
    assert (alert["state"], alert["attempts"]) == ("sent", 1)
    assert alert["sent_at"] is not None
    assert (first.sent, second.sent) == (1, 0)
    (message,) = receiver.received
    assert message["type"] == "failure"
    assert "train.jsonl" in message["title"]
    for expected in (file_id, "kimi", "Status: error - line 7 is not JSON", alert["alert_key"]):
        assert expected in message["message"]


def test_an_alert_commits_with_its_cause_or_not_at_all(engine, simulator, sync):
    simulator.add_file("moonshot", status="error")
    with engine.begin() as conn:  # make the outbox insert fail after rows and events
        conn.execute(
            sa.text("""
            CREATE FUNCTION refuse_alert() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'outbox on fire'; END $$;
            CREATE TRIGGER refuse_alert BEFORE INSERT ON alerts
                FOR EACH ROW EXECUTE FUNCTION refuse_alert();
        """)
        )
    try:
        failed = sync()
    finally:
        with engine.begin() as conn:
            conn.execute(
                sa.text("DROP TRIGGER refuse_alert ON alerts; DROP FUNCTION refuse_alert()")
            )

    with engine.connect() as conn:
        files = conn.execute(sa.text("SELECT count(*) FROM files")).scalar_one()
        events = conn.execute(sa.text("SELECT count(*) FROM file_events")).scalar_one()
    assert failed.outcome is Outcome.FAILED
    assert (files, events, alert_rows(engine)) == (0, 0, [])

    assert sync().outcome is Outcome.OK
    assert [a["kind"] for a in alert_rows(engine)] == ["file_failed"]


def test_receiver_down_then_up_gets_each_alert_exactly_once(engine, simulator, receiver, sync):
    simulator.add_file("moonshot", status="error")
    simulator.add_file("moonshot", status="failed")
    sync()
    targets = build_targets([Secret(receiver.url)])
    clock = Clock()
    receiver.stop()

    down = dispatch_due(engine, targets, POLICY, clock=clock)

    assert (down.sent, down.retrying) == (0, 2)
    for alert in alert_rows(engine):
        assert (alert["state"], alert["attempts"]) == ("pending", 1)
        assert alert["next_attempt_at"] == clock.now + timedelta(seconds=60)
        assert "target #1 (JSON)" in alert["last_error"]
        assert TOKEN not in alert["last_error"]
    assert dispatch_due(engine, targets, POLICY, clock=clock).retrying == 0  # not due yet

    receiver.start()
    clock.advance(60)
    up = dispatch_due(engine, targets, POLICY, clock=clock)
    clock.advance(3600)
    later = dispatch_due(engine, targets, POLICY, clock=clock)

    assert (up.sent, later.sent) == (2, 0)
    assert len(receiver.received) == 2
    assert {a["state"] for a in alert_rows(engine)} == {"sent"}


def test_a_refusing_target_is_retried_with_backoff_then_dead(engine, simulator, receiver, sync):
    simulator.add_file("moonshot", status="error")
    sync()
    targets = build_targets([Secret(receiver.url)])
    clock = Clock()
    receiver.failing = True
    waits = []

    for _ in range(POLICY.max_attempts):
        before = clock.now
        dispatch_due(engine, targets, POLICY, clock=clock)
        (alert,) = alert_rows(engine)
        waits.append((alert["next_attempt_at"] - before).total_seconds())
        clock.advance(waits[-1])

    assert alert["state"] == "dead"
    assert alert["attempts"] == POLICY.max_attempts
    assert "did not accept" in alert["last_error"] or "500" in alert["last_error"]
    assert waits[:-1] == [60, 120]  # doubling; the last attempt makes it dead
    receiver.failing = False
    assert dispatch_due(engine, targets, POLICY, clock=clock).sent == 0  # dead stays dead
    assert receiver.received == []


def test_a_retry_goes_only_to_the_target_that_failed(engine, simulator, sync):
    simulator.add_file("moonshot", status="error")
    sync()
    with Receiver() as healthy, Receiver() as flaky:
        flaky.failing = True
        targets = build_targets([Secret(healthy.url), Secret(flaky.url)])
        clock = Clock()

        dispatch_due(engine, targets, POLICY, clock=clock)
        flaky.failing = False
        clock.advance(60)
        dispatch_due(engine, targets, POLICY, clock=clock)

        assert (len(healthy.received), len(flaky.received)) == (1, 1)
    (alert,) = alert_rows(engine)
    assert alert["state"] == "sent"
    assert sorted(alert["delivered_to"]) == sorted(t.url_id for t in targets)


def test_two_dispatchers_never_deliver_the_same_alert(engine, simulator, receiver, sync):
    simulator.add_files("moonshot", 6, status="error")
    sync()
    receiver.delay = 0.2  # keep each claim open while the other dispatcher looks
    targets = build_targets([Secret(receiver.url)])
    start = threading.Barrier(2)

    def dispatcher() -> None:
        start.wait()
        dispatch_due(engine, targets, POLICY)

    threads = [threading.Thread(target=dispatcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    bodies = [message["message"] for message in receiver.received]
    assert len(bodies) == 6
    assert len(set(bodies)) == 6
    assert {a["state"] for a in alert_rows(engine)} == {"sent"}


def test_a_failing_source_alerts_once_then_once_on_recovery(engine, simulator, sync):
    simulator.add_file("moonshot", status="ok")
    simulator.set_persistent_fault("moonshot", Fault.status(503))

    outcomes = [sync().outcome for _ in range(FAILURE_STREAK + 2)]
    kinds_while_failing = [a["kind"] for a in alert_rows(engine)]
    simulator.set_persistent_fault("moonshot", None)
    sync()
    sync()

    assert outcomes == [Outcome.FAILED] * (FAILURE_STREAK + 2)
    assert kinds_while_failing == ["source_failing"]
    assert [a["kind"] for a in alert_rows(engine)] == ["source_failing", "source_recovered"]
    assert "503" in alert_rows(engine)[0]["payload"]["error"]


def test_a_held_run_alerts_once_until_it_is_resolved(engine, simulator, sync):
    ids = simulator.add_files("moonshot", 20, status="ok")
    sync()
    for file_id in ids[1:]:
        simulator.delete_file("moonshot", file_id)

    held = [sync().outcome for _ in range(2)]
    allowed = sync(allow_mass_disappear=True)

    assert held == [Outcome.HELD, Outcome.HELD]
    assert allowed.outcome is Outcome.OK
    (alert,) = alert_rows(engine)
    assert alert["kind"] == "run_held"
    assert alert["payload"]["disappearances_held"] == 19


def test_the_same_cause_never_makes_two_alerts(engine, simulator, sync):
    file_id = simulator.add_file("moonshot", status="error")
    sync()
    sync()  # the same listing again: no new event, so no new alert
    simulator.set_status("moonshot", file_id, "ok")
    sync()
    simulator.set_status("moonshot", file_id, "error")
    sync()  # failing again later is news again

    assert [a["kind"] for a in alert_rows(engine)] == ["file_failed", "file_failed"]


def test_alert_urls_with_tokens_never_reach_the_database(engine, simulator, sync):
    simulator.add_file("moonshot", status="error")
    sync()
    with Receiver() as receiver:
        receiver.stop()
        dispatch_due(engine, build_targets([Secret(receiver.url)]), POLICY)

    with engine.connect() as conn:
        dump = conn.execute(sa.text("SELECT string_agg(a::text, ' ') FROM alerts AS a")).scalar()
    assert TOKEN not in dump
    assert "hook" not in dump


def test_an_unusable_alert_url_is_a_configuration_error_that_hides_it():
    with pytest.raises(ConfigError) as error:
        build_targets([Secret("json://127.0.0.1/ok"), Secret("nosuch://secret-token-123")])

    assert "SYNCER_ALERT_URLS: entry 2 (nosuch://...)" in str(error.value)
    assert "secret-token-123" not in str(error.value)


def test_without_targets_alerts_stay_pending(engine, simulator, sync):
    simulator.add_file("moonshot", status="error")
    sync()

    report = dispatch_due(engine, (), POLICY)

    assert (report.sent, report.retrying) == (0, 0)
    assert [(a["state"], a["attempts"]) for a in alert_rows(engine)] == [("pending", 0)]


def test_an_alert_that_cannot_be_rendered_does_not_block_the_others(
    engine, simulator, receiver, sync
):
    simulator.add_files("moonshot", 2, status="error")
    sync()
    with engine.begin() as conn:  # as if a newer syncer had written a kind this one lacks
        conn.execute(sa.text("UPDATE alerts SET kind = 'from_the_future' WHERE id = 1"))

    report = dispatch_due(engine, build_targets([Secret(receiver.url)]), POLICY)

    first, second = alert_rows(engine)
    assert (report.sent, report.retrying) == (1, 1)
    assert (first["state"], second["state"]) == ("pending", "sent")
    assert "cannot render this alert" in first["last_error"]
    assert len(receiver.received) == 1
