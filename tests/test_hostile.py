"""A hostile provider on loopback: memory and time stay bounded, the run is `failed`.

Each test runs a real `syncer sync` process against the simulator (syncer/simulator.py
has the hostile faults) and measures the child's peak RSS with wait4(). Every child
also runs under an address-space limit, so that a regression fails the test instead
of swapping the machine.
"""

from __future__ import annotations

import http.server
import os
import resource
import shutil
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import httpx
import pytest
import stamina
from test_cli import assert_no_secret, present_ids, query

from syncer.config import HttpPolicy, SourceConfig
from syncer.errors import FatalProviderError, RetryableProviderError
from syncer.providers import fetch_listing
from syncer.redaction import Secret
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
            preexec_fn=_limit_memory,  # noqa: PLW1509 - the child starts no thread before exec
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
        "SELECT outcome, error, extract(epoch FROM finished_at - started_at) AS seconds"
        " FROM sync_runs WHERE source = :s ORDER BY id DESC LIMIT 1",
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


def test_ten_million_empty_items_are_refused_before_they_are_parsed(
    engine, env, simulator, tmp_path, synced
):
    """A 30 MB body of `{}` items (3.2 GB RSS before)."""
    body = b'{"object":"list","data":[' + b"{}," * 9_999_999 + b"{}]}"
    simulator.set_persistent_fault("moonshot", Fault.response(200, body))

    finished = sync_process(env, tmp_path, "--source", "moonshot")

    assert_failed_and_unchanged(engine, finished, synced, "SYNCER_MAX_LISTING_ITEMS")


def test_pages_that_never_end_stop_at_the_items_cap(engine, env, simulator, tmp_path, synced):
    """Moonshot pages of 20,000 new files each, always `has_more` (3.5 GB RSS before)."""
    simulator.set_persistent_fault("moonshot", EndlessPages(per_page=20_000))

    finished = sync_process(env, tmp_path, "--source", "moonshot")

    assert_failed_and_unchanged(engine, finished, synced, "more than 200000 items")
    # The cap, not the 200-page guard, ended it: 11 pages of 20,000 pass 200,000.
    assert simulator.request_count("moonshot") <= 1 + 11


def test_a_two_gigabyte_body_stops_at_the_listing_byte_cap(
    engine, env, simulator, tmp_path, synced
):
    """A plain 2 GiB body (603 MB RSS before)."""
    simulator.set_persistent_fault("moonshot", EndlessBody(2 << 30))

    finished = sync_process(env, tmp_path, "--source", "moonshot")

    assert_failed_and_unchanged(engine, finished, synced, "SYNCER_MAX_LISTING_BYTES")


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
# A sync may take the retry budget plus one request deadline; the slack covers the
# database work of recording the run on a loaded machine. (The process as a whole
# also starts Python, which is not the sync's time.)
_BOUND = 3 + 2 + 2


def test_headers_dripped_byte_by_byte_end_the_sync_within_its_bounds(
    engine, env, simulator, tmp_path, synced
):
    """Before: past 150 s with a 5 s request timeout, no run recorded, the lock held."""
    simulator.set_persistent_fault("moonshot", HeaderDrip(delay=0.5))

    finished = sync_process({**env, **TIMEOUTS}, tmp_path, "--source", "moonshot", timeout=60)

    assert_failed_and_unchanged(engine, finished, synced, "did not finish within 2 s")
    assert last_run(engine, "moonshot")["seconds"] < _BOUND


def test_a_server_that_never_answers_costs_one_request_deadline_per_attempt(
    engine, env, simulator, tmp_path, synced
):
    """Before: 30 s per attempt whatever SYNCER_REQUEST_TIMEOUT said."""
    simulator.set_persistent_fault("moonshot", Silent())

    finished = sync_process({**env, **TIMEOUTS}, tmp_path, "--source", "moonshot", timeout=90)

    assert_failed_and_unchanged(engine, finished, synced, "did not finish within 2 s")
    assert last_run(engine, "moonshot")["seconds"] < _BOUND


def test_the_retry_budget_is_a_hard_bound_never_overshot_by_a_backoff_step():
    """Before: stamina checked its timeout before sleeping, so a backoff step of up to
    `wait_max` could end far past SYNCER_RETRY_TIMEOUT."""
    policy = HttpPolicy(request_deadline=1, retry_budget=2.5, wait_initial=1, wait_max=8)
    source = SourceConfig("moonshot", "moonshot", Secret("sk-budget-test"), "https://x.test/v1")
    overloaded = httpx.MockTransport(lambda _: httpx.Response(503, text="overloaded"))

    with stamina.set_testing(testing=False):
        started = time.monotonic()
        with pytest.raises(RetryableProviderError, match=r"within the 2\.5 s retry budget"):
            fetch_listing(source, policy, transport=overloaded)
        elapsed = time.monotonic() - started

    # Backoff 1 + 2 + 4 s would end at 3 s or later; the budget ends at 2.5 s.
    assert elapsed < 2.5 + 0.3, elapsed


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    """A certificate for 127.0.0.1 that no CA signed."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_server(self_signed):
    """An HTTPS server on loopback whose certificate does not verify."""
    cert, key = self_signed

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_certificate_that_does_not_verify_fails_at_once(tls_server):
    """Before: retried for the whole retry budget, as if it were temporary."""
    policy = HttpPolicy(request_deadline=5, retry_budget=10, wait_initial=0.5, wait_max=2)
    source = SourceConfig("moonshot", "moonshot", Secret("sk-tls-test"), tls_server)

    with stamina.set_testing(testing=False):
        started = time.monotonic()
        with pytest.raises(FatalProviderError) as caught:
            fetch_listing(source, policy)
        elapsed = time.monotonic() - started

    assert elapsed < 3, elapsed
    assert "TLS certificate does not verify" in str(caught.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
