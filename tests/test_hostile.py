"""A hostile provider on loopback: memory and time stay bounded, the run is `failed`.

Each test runs a real `syncer sync` process against the simulator (syncer/simulator.py
has the hostile faults) and measures the child's peak RSS with wait4(). Every child
also runs under an address-space limit, so that a regression fails the test instead
of swapping the machine.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
from test_cli import assert_no_secret, present_ids, query

from syncer.simulator import EndlessBody, EndlessPages, Fault, HeaderDrip, Silent, gzip_bomb

PEAK_RSS_LIMIT_MB = 600
# Far above the target, far below what the unbounded code reached (4.2 GB): a run
# that overruns it dies with MemoryError and fails the test.
_ADDRESS_SPACE_LIMIT = 3 << 30


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float
    seconds: float


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (_ADDRESS_SPACE_LIMIT, _ADDRESS_SPACE_LIMIT))


def sync_process(env, cwd, *args: str, timeout: float = 60) -> Finished:
    """`syncer sync ARGS`, with its own peak RSS (wait4 reports it for this child only)."""
    out, err = cwd / "stdout.txt", cwd / "stderr.txt"
    started = time.monotonic()
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "syncer", "sync", *args],
            env=env,
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            preexec_fn=_limit_memory,  # noqa: PLW1509 - no threads are started in between
        )
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = -9
            pytest.fail(f"syncer sync still ran after {timeout} s:\n{err.read_text()[-3000:]}")
        time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)
    finished = Finished(
        process.returncode,
        out.read_text(),
        err.read_text(),
        usage.ru_maxrss / 1024,  # KiB on Linux
        time.monotonic() - started,
    )
    assert_no_secret(finished.stdout + finished.stderr)
    assert "Traceback" not in finished.stderr, finished.stderr[-3000:]
    return finished


def last_run(engine, source: str) -> dict:
    rows = query(
        engine,
        "SELECT outcome, error FROM sync_runs WHERE source = :s ORDER BY id DESC LIMIT 1",
        s=source,
    )
    assert rows, f"no sync_runs row for {source}"
    return rows[0]


@pytest.fixture
def synced(engine, env, simulator, tmp_path):
    """Moonshot with three files, synced once: what a hostile answer must not change."""
    simulator.add_files("moonshot", 3)
    first = sync_process(env, tmp_path, "--source", "moonshot")
    assert first.returncode == 0, first.stderr
    return present_ids(engine, "moonshot")


def assert_failed_and_unchanged(engine, finished: Finished, before: set[str], reason: str):
    assert finished.returncode == 1, finished.stderr[-3000:]
    run = last_run(engine, "moonshot")
    assert run["outcome"] == "failed"
    assert reason in run["error"]
    assert present_ids(engine, "moonshot") == before
    assert finished.peak_rss_mb <= PEAK_RSS_LIMIT_MB, f"peak RSS {finished.peak_rss_mb:.0f} MB"


# --- memory -------------------------------------------------------------------------


def test_a_stacked_gzip_bomb_is_cut_off_while_it_is_decoded(
    engine, env, simulator, tmp_path, synced
):
    """5 KB of `Content-Encoding: gzip, gzip` that expands to 2 GiB (4.2 GB RSS before)."""
    bomb = gzip_bomb(2 << 30, layers=2)
    assert len(bomb) < 10_000
    fault = Fault.response(200, bomb, headers={"Content-Encoding": "gzip, gzip"})
    simulator.set_persistent_fault("moonshot", fault)

    finished = sync_process(env, tmp_path, "--source", "moonshot")

    assert_failed_and_unchanged(engine, finished, synced, "SYNCER_MAX_LISTING_BYTES")
    print(f"gzip bomb: peak RSS {finished.peak_rss_mb:.0f} MB in {finished.seconds:.1f} s")


def test_ten_million_empty_items_are_refused_before_they_are_parsed(
    engine, env, simulator, tmp_path, synced
):
    """A 30 MB body of `{}` items (3.2 GB RSS before)."""
    body = b'{"object":"list","data":[' + b"{}," * 9_999_999 + b"{}]}"
    simulator.set_persistent_fault("moonshot", Fault.response(200, body))

    finished = sync_process(env, tmp_path, "--source", "moonshot")

    assert_failed_and_unchanged(engine, finished, synced, "SYNCER_MAX_LISTING_ITEMS")
    print(f"10M items: peak RSS {finished.peak_rss_mb:.0f} MB in {finished.seconds:.1f} s")


def test_pages_that_never_end_stop_at_the_items_cap(engine, env, simulator, tmp_path, synced):
    """Moonshot pages of 20,000 new files each, always `has_more` (3.5 GB RSS before)."""
    simulator.set_persistent_fault("moonshot", EndlessPages(per_page=20_000))

    finished = sync_process(env, tmp_path, "--source", "moonshot")

    assert_failed_and_unchanged(engine, finished, synced, "more than 200000 items")
    # The cap, not the 200-page guard, ended it: 11 pages of 20,000 pass 200,000.
    assert simulator.request_count("moonshot") <= 1 + 11
    print(f"endless pages: peak RSS {finished.peak_rss_mb:.0f} MB in {finished.seconds:.1f} s")


def test_a_two_gigabyte_body_stops_at_the_listing_byte_cap(
    engine, env, simulator, tmp_path, synced
):
    """A plain 2 GiB body (603 MB RSS before)."""
    simulator.set_persistent_fault("moonshot", EndlessBody(2 << 30))

    finished = sync_process(env, tmp_path, "--source", "moonshot")

    assert_failed_and_unchanged(engine, finished, synced, "SYNCER_MAX_LISTING_BYTES")
    print(f"2 GiB body: peak RSS {finished.peak_rss_mb:.0f} MB in {finished.seconds:.1f} s")


def test_the_listing_caps_are_settings(engine, env, simulator, tmp_path):
    simulator.add_files("moonshot", 30)

    finished = sync_process(
        {**env, "SYNCER_MAX_LISTING_ITEMS": "20"}, tmp_path, "--source", "moonshot"
    )

    assert finished.returncode == 1
    assert "more than 20 items (SYNCER_MAX_LISTING_ITEMS" in last_run(engine, "moonshot")["error"]
    small = sync_process(
        {**env, "SYNCER_MAX_LISTING_BYTES": "2000"}, tmp_path, "--source", "moonshot"
    )
    assert small.returncode == 1
    assert "larger than 2000 bytes" in last_run(engine, "moonshot")["error"]


# --- time ---------------------------------------------------------------------------

TIMEOUTS = {"SYNCER_REQUEST_TIMEOUT": "2", "SYNCER_RETRY_TIMEOUT": "3"}
# A sync may take the retry budget plus one request deadline, plus the start of a
# Python process and the database work (generous: five helpers share two cores).
_BOUND = 3 + 2 + 8


def test_headers_dripped_byte_by_byte_end_the_sync_within_its_bounds(
    engine, env, simulator, tmp_path, synced
):
    """Before: past 150 s with a 5 s request timeout, no run recorded, the lock held."""
    simulator.set_persistent_fault("moonshot", HeaderDrip(delay=0.5))

    finished = sync_process({**env, **TIMEOUTS}, tmp_path, "--source", "moonshot", timeout=60)

    assert finished.seconds < _BOUND, finished.seconds
    assert_failed_and_unchanged(engine, finished, synced, "did not finish within 2 s")
    print(f"header drip: sync ended in {finished.seconds:.1f} s")


def test_a_server_that_never_answers_costs_one_request_deadline_per_attempt(
    engine, env, simulator, tmp_path, synced
):
    """Before: 30 s per attempt whatever SYNCER_REQUEST_TIMEOUT said."""
    simulator.set_persistent_fault("moonshot", Silent())

    finished = sync_process({**env, **TIMEOUTS}, tmp_path, "--source", "moonshot", timeout=90)

    assert finished.seconds < _BOUND, finished.seconds
    assert_failed_and_unchanged(engine, finished, synced, "did not finish within 2 s")
    print(f"silent server: sync ended in {finished.seconds:.1f} s")
