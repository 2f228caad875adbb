"""Alerting and HTTP end to end: the real `syncer run` process, a real webhook receiver,
a real scrape of /metrics. The issue's "done when", as tests."""

from __future__ import annotations

import signal
import socket
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from receiver import TOKEN, Receiver
from test_cli import admin, assert_no_secret, count_runs, query, start_service, syncer, wait_for

from syncer.alerts import FAILURE_STREAK
from syncer.service import HEARTBEAT_SECONDS, Heartbeat


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def receiver():
    with Receiver() as receiver:
        yield receiver


@pytest.fixture
def service_env(env, receiver) -> dict[str, str]:
    """Moonshot only, alerts to the receiver, quick dispatch, HTTP on a free port."""
    service_env = {k: v for k, v in env.items() if not k.startswith("SILICONFLOW_")}
    return {
        **service_env,
        "SYNCER_ALERT_URLS": receiver.url,
        "SYNCER_ALERT_DISPATCH_INTERVAL": "0.5s",
        "SYNCER_ALERT_BACKOFF": "1s",
        "SYNCER_HTTP_HOST": "127.0.0.1",
        "SYNCER_HTTP_PORT": str(free_port()),
    }


def get(env: dict[str, str], path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{env['SYNCER_HTTP_PORT']}{path}", timeout=10)


def scrape(env: dict[str, str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = get(env, "/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def stop(service) -> str:
    service.send_signal(signal.SIGTERM)
    stdout, stderr = service.communicate(timeout=60)
    assert service.returncode == 0, stderr
    assert_no_secret(stdout + stderr)
    assert TOKEN not in stdout + stderr
    return stderr


def test_a_failed_file_reaches_the_receiver_once_even_across_a_restart(
    engine, service_env, simulator, receiver, tmp_path
):
    file_id = simulator.add_file("moonshot", status="processing", filename="batch-7.jsonl")
    receiver.stop()  # the target is down when the file fails
    service = start_service(service_env, tmp_path)
    try:
        wait_for(lambda: count_runs(engine, "moonshot") >= 1, service)
        simulator.set_status("moonshot", file_id, "error", "line 3 is not JSON")
        wait_for(lambda: query(engine, "SELECT 1 FROM alerts WHERE attempts >= 1"), service)
    finally:
        first_logs = stop(service)
    assert "not delivered" in first_logs

    receiver.start()  # the target is back, and so is syncer
    service = start_service(service_env, tmp_path)
    try:
        (message,) = receiver.wait_for(1)
        runs_then = count_runs(engine, "moonshot")
        wait_for(lambda: count_runs(engine, "moonshot") >= runs_then + 2, service)
        metrics = scrape(service_env)
    finally:
        stop(service)

    assert len(receiver.received) == 1  # more syncs and dispatch ticks: nothing twice
    assert "batch-7.jsonl" in message["title"]
    assert "Status: error - line 3 is not JSON" in message["message"]
    (alert,) = query(engine, "SELECT alert_key, state FROM alerts")
    assert alert["state"] == "sent"
    assert f"Alert id: {alert['alert_key']}" in message["message"]
    failed = ("source", "moonshot"), ("status_class", "failed")
    assert metrics["syncer_files", (("provider", "moonshot"), *failed)] == 1
    assert (
        metrics["syncer_files", (("provider", "moonshot"), *failed[:1], ("status_class", "ready"))]
        == 0
    )
    assert metrics["syncer_alerts", (("state", "sent"),)] == 1
    assert metrics["syncer_sync_runs_total", (("outcome", "ok"), ("source", "moonshot"))] >= 2
    assert metrics["syncer_last_success_timestamp_seconds", (("source", "moonshot"),)] > 0


def test_a_file_failing_while_syncer_runs_arrives_within_an_interval_and_a_tick(
    engine, service_env, simulator, receiver, tmp_path
):
    file_id = simulator.add_file("moonshot", status="processing")
    service = start_service(service_env, tmp_path)
    try:
        wait_for(lambda: count_runs(engine, "moonshot") >= 1, service)
        simulator.set_status("moonshot", file_id, "failed")
        receiver.wait_for(1, timeout=30)
        wait_for(lambda: query(engine, "SELECT 1 FROM alerts WHERE state = 'sent'"), service)
        (run,) = query(
            engine, "SELECT r.finished_at FROM alerts a JOIN sync_runs r ON r.id = a.sync_run_id"
        )
        (sent,) = query(engine, "SELECT sent_at FROM alerts")
    finally:
        stop(service)

    # Delivered by the first dispatch tick after the sync that saw it (tick = 0.5 s).
    assert (sent["sent_at"] - run["finished_at"]).total_seconds() < 5


def test_health_readiness_and_metrics_follow_the_database(
    engine, service_env, database_url, simulator, tmp_path
):
    simulator.add_file("moonshot", status="ok")
    service = start_service(service_env, tmp_path)
    name = database_url.rsplit("/", 1)[-1]
    try:
        wait_for(lambda: count_runs(engine, "moonshot") >= 1, service)
        assert (get(service_env, "/healthz").status_code, get(service_env, "/readyz").text) == (
            200,
            "ok\n",
        )
        assert get(service_env, "/nope").status_code == 404
        before = scrape(service_env)
        engine.dispose()
        with admin(database_url) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        not_ready = get(service_env, "/readyz")
        alive = get(service_env, "/healthz")
        during = scrape(service_env)
    finally:
        with admin(database_url) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    try:
        wait_for(lambda: get(service_env, "/readyz").status_code == 200, service)
    finally:
        stop(service)

    assert before["syncer_database_up", ()] == 1
    assert not_ready.status_code == 503
    assert "database unavailable" in not_ready.text
    assert alive.status_code == 200  # the process is fine; restarting it would not help
    assert during["syncer_database_up", ()] == 0
    assert (
        "syncer_files",
        (("provider", "moonshot"), ("source", "moonshot"), ("status_class", "ready")),
    ) not in during


def test_a_source_failing_three_times_pages_once(
    engine, service_env, simulator, receiver, tmp_path
):
    from syncer.simulator import Fault  # noqa: PLC0415

    simulator.set_persistent_fault("moonshot", Fault.status(401))
    service = start_service(service_env, tmp_path)
    try:
        receiver.wait_for(1)
        wait_for(lambda: count_runs(engine, "moonshot") >= FAILURE_STREAK + 2, service)
        time.sleep(1)  # a couple more dispatch ticks
    finally:
        stop(service)

    (message,) = receiver.received
    assert "source moonshot is failing" in message["title"]
    assert "HTTP 401" in message["message"]


def test_alerts_commands_test_list_and_dispatch(engine, env, simulator, tmp_path):
    with Receiver() as up, Receiver() as down:
        down.stop()
        env = {**env, "SYNCER_ALERT_URLS": f"{up.url}, {down.url}"}

        tested = syncer("alerts", "test", env=env, cwd=tmp_path)

        assert tested.returncode == 1
        assert "target #1 (JSON): ok" in tested.stdout
        assert "target #2 (JSON): A Connection error occurred" in tested.stdout
        assert "target #2 (JSON)" in tested.stdout
        assert TOKEN not in tested.stdout + tested.stderr
        assert [m["title"] for m in up.received] == ["syncer: test notification"]

        simulator.add_file("moonshot", status="error")
        assert syncer("sync", "--source", "moonshot", env=env, cwd=tmp_path).returncode == 0
        env["SYNCER_ALERT_BACKOFF"] = "1h"
        dispatched = syncer("alerts", "dispatch", env=env, cwd=tmp_path)
        listed = syncer("alerts", "list", env=env, cwd=tmp_path)

    assert dispatched.returncode == 1  # one target still owes it
    assert "0 sent, 1 to retry, 0 dead" in dispatched.stdout
    assert len(up.received) == 2
    assert "pending" in listed.stdout
    assert "attempts=1 file_failed/moonshot/" in listed.stdout
    assert "target #2 (JSON)" in listed.stdout
    assert TOKEN not in dispatched.stdout + dispatched.stderr + listed.stdout + listed.stderr


def test_alert_commands_without_targets_say_so(env, tmp_path):
    result = syncer("alerts", "test", env=env, cwd=tmp_path)

    assert result.returncode == 2
    assert "SYNCER_ALERT_URLS is not set" in result.stderr


def test_run_refuses_an_unusable_alert_url_at_start(env, tmp_path):
    env = {**env, "SYNCER_ALERT_URLS": "nosuch://tok-9f8e7d6c5b4a39281706"}

    result = syncer("run", env=env, cwd=tmp_path)

    assert result.returncode == 2
    assert "SYNCER_ALERT_URLS: entry 1 (nosuch://...)" in result.stderr
    assert TOKEN not in result.stderr


def test_run_refuses_a_taken_http_port_at_start(env, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**env, "SYNCER_HTTP_HOST": "127.0.0.1", "SYNCER_HTTP_PORT": str(port)}

        result = syncer("run", env=env, cwd=tmp_path)

    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_healthz_fails_when_the_scheduler_stops_running_jobs():
    class Scheduler:
        running = True

    heartbeat = Heartbeat()
    scheduler = Scheduler()
    assert heartbeat.problem(scheduler) is None

    heartbeat._last -= HEARTBEAT_SECONDS * 10  # no job has run for a while
    assert "has run no job for" in heartbeat.problem(scheduler)
    heartbeat.beat()
    scheduler.running = False
    assert heartbeat.problem(scheduler) == "the scheduler is not running"
