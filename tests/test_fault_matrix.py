"""The provider fault matrix: every way a provider or the network misbehaves, end to end.

Each row runs the real `syncer sync` command (in-process, for speed) against the
simulator on loopback and a real PostgreSQL that already holds the source's files, with
the fault in place, and checks what a user would see: the exit status, the `sync_runs`
outcome and error, that no file row was written, that nothing disappeared, and that
the API key shows up nowhere. docs/reliability.md has the same table in prose.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from syncer.cli import cli
from syncer.simulator import Fault

FILES_PER_ACCOUNT = 3


@dataclass(frozen=True)
class Row:
    """One fault and what syncer must make of it."""

    account: str
    fault: Fault
    outcome: str  # the run's outcome: `failed`, `incomplete`, or `ok` once a retry got through
    error: str = ""  # a fragment of the run's error (failed rows)
    persistent: bool = True  # every request fails, or only the first
    retried: bool = True  # more than one request was made

    def __str__(self) -> str:
        return f"{self.account}-{type(self.fault).__name__}"


def http_date(seconds_from_now: float) -> str:
    when = datetime.now(UTC) + timedelta(seconds=seconds_from_now)
    return when.strftime("%a, %d %b %Y %H:%M:%S GMT")


SF, MS = "siliconflow", "moonshot"
MATRIX = {
    # SiliconFlow's documented error shapes: plain text 401/403/404/504, JSON 400/429/503.
    "sf 400 json": Row(SF, Fault.status(400), "failed", "HTTP 400", retried=False),
    "sf 401 Invalid token": Row(SF, Fault.status(401), "failed", "HTTP 401", retried=False),
    "sf 403 Forbidden": Row(SF, Fault.status(403), "failed", "HTTP 403", retried=False),
    "sf 404 text": Row(SF, Fault.status(404), "failed", "HTTP 404", retried=False),
    "sf 429 rate limit, persists": Row(SF, Fault.status(429), "failed", "HTTP 429"),
    "sf 503 overloaded, persists": Row(SF, Fault.status(503), "failed", "HTTP 503"),
    "sf 504 text, persists": Row(SF, Fault.status(504), "failed", "HTTP 504"),
    "sf 503 once": Row(SF, Fault.status(503), "ok", persistent=False),
    "sf 429 once, Retry-After seconds": Row(
        SF, Fault.rate_limited(retry_after=1), "ok", persistent=False
    ),
    # Moonshot: {"error": {"type", "message"}}; the type decides, not the status.
    "ms 400 invalid_request_error": Row(MS, Fault.status(400), "failed", "HTTP 400", retried=False),
    "ms 400 content_filter": Row(
        MS, Fault.status(400, error_type="content_filter"), "failed", "HTTP 400", retried=False
    ),
    "ms 401 invalid_authentication_error": Row(
        MS, Fault.status(401), "failed", "HTTP 401", retried=False
    ),
    "ms 403 exceeded_current_quota_error": Row(
        MS,
        Fault.status(403, error_type="exceeded_current_quota_error"),
        "failed",
        "HTTP 403",
        retried=False,
    ),
    "ms 403 permission_denied_error": Row(
        MS,
        Fault.status(403, error_type="permission_denied_error"),
        "failed",
        "HTTP 403",
        retried=False,
    ),
    "ms 404 resource_not_found_error": Row(
        MS, Fault.status(404), "failed", "HTTP 404", retried=False
    ),
    "ms 429 exceeded_current_quota_error": Row(
        MS,
        Fault.status(429, error_type="exceeded_current_quota_error"),
        "failed",
        "exceeded_current_quota_error",
        retried=False,
    ),
    "ms 429 rate_limit_reached_error, persists": Row(
        MS, Fault.rate_limited(), "failed", "rate_limit_reached_error"
    ),
    "ms 429 engine_overloaded_error once": Row(
        MS, Fault.status(429, error_type="engine_overloaded_error"), "ok", persistent=False
    ),
    "ms 429 once, Retry-After HTTP date": Row(
        MS, Fault.rate_limited(retry_after=http_date(1)), "ok", persistent=False
    ),
    "ms 500 server_error, persists": Row(MS, Fault.status(500), "failed", "HTTP 500"),
    "ms 500 unexpected_output once": Row(
        MS, Fault.status(500, error_type="unexpected_output"), "ok", persistent=False
    ),
    # The network and the body.
    # The 1 s request deadline fires; the 1.5 s budget has no room for a second attempt.
    "timeout before the first byte": Row(
        MS, Fault.slow(3), "failed", "gave up after", retried=False
    ),
    # Likewise: the drip is cut off at the 1 s deadline, and no backoff fits the rest.
    "slow-drip body past the deadline": Row(
        MS, Fault.drip(piece_size=8, delay=0.2), "failed", "gave up after", retried=False
    ),
    "connection reset, persists": Row(MS, Fault.reset(), "failed", "gave up after"),
    "connection reset once": Row(MS, Fault.reset(), "ok", persistent=False),
    "truncated JSON (Content-Length)": Row(MS, Fault.truncated(), "failed", "gave up after"),
    "truncated JSON (chunked)": Row(MS, Fault.truncated(chunked=True), "failed", "gave up after"),
    "truncated JSON once": Row(SF, Fault.truncated(), "ok", persistent=False),
    "200 with an HTML page": Row(MS, Fault.html(), "failed", "is not valid JSON"),
    # The second page repeats the first: the listing ends there, incomplete.
    "has_more that never ends": Row(MS, Fault.broken_paginator(), "incomplete"),
    "redirect": Row(MS, Fault.redirect(), "failed", "does not follow redirects", retried=False),
}


@pytest.fixture
def run_sync(env, tmp_path, monkeypatch):
    """`syncer sync --source ACCOUNT` in this process; returns (exit code, output)."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    env = {
        **env,
        "SYNCER_RETRY_TIMEOUT": "1.5",  # persistent retryable faults give up quickly
        "SYNCER_REQUEST_TIMEOUT": "1",  # and a slow or dripping answer hits the deadline
        "SYNCER_LOG_FORMAT": "console",
    }
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(account: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, ["sync", "--no-migrate", "--source", account], env=env)
        return result.exit_code, result.output + result.stderr

    yield run
    root.handlers[:], root.level = handlers, level


def file_versions(engine) -> list[tuple[str, str]]:
    """Every file row with its row version: any write changes `xmin`."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT file_id, xmin::text FROM files ORDER BY 1"))
        return [(file_id, version) for file_id, version in rows]


@pytest.mark.parametrize("row", MATRIX.values(), ids=MATRIX.keys())
def test_fault(row: Row, engine, simulator, run_sync):
    simulator.add_files(row.account, FILES_PER_ACCOUNT, status="ok")
    assert run_sync(row.account)[0] == 0
    before = file_versions(engine)
    if row.persistent:
        simulator.set_persistent_fault(row.account, row.fault)
    else:
        simulator.inject(row.account, row.fault)
    requests_before = simulator.request_count(row.account)

    exit_code, output = run_sync(row.account)

    requests = simulator.request_count(row.account) - requests_before
    with engine.connect() as conn:
        run = conn.execute(
            sa.text("SELECT outcome, error FROM sync_runs ORDER BY id DESC LIMIT 1")
        ).one()
        disappeared = conn.execute(
            sa.text("SELECT count(*) FROM file_events WHERE kind = 'disappeared'")
        ).scalar_one()
        stored_errors = conn.execute(
            sa.text("SELECT string_agg(error, ' ') FROM sync_runs")
        ).scalar()
    assert run.outcome == row.outcome, output
    assert exit_code == (0 if row.outcome == "ok" else 1)
    assert f"{row.account}: {row.outcome}" in output
    if row.outcome == "failed":
        assert row.error in run.error
        assert row.error in output
    else:
        assert run.error is None
    assert file_versions(engine) == before  # not one row written, also after a retry
    assert disappeared == 0
    assert (requests > 1) is row.retried, f"{requests} requests"
    key = simulator.api_key(row.account)
    assert key not in output
    assert key not in (stored_errors or "")
