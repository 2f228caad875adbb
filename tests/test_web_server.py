"""Port 8080 facing the network: a flood of idle connections must not take it down.

A real `syncer run` process serves /healthz, /readyz and /metrics; these tests open
hundreds of real sockets to it on loopback, as a port scanner or a slowloris would.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from test_secrets import free_port

IDLE_CONNECTIONS = 600
THREAD_BOUND = 40  # a fixed pool and the scheduler's workers; never one per connection


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


@pytest.fixture
def service(engine, env, tmp_path):
    port = free_port()
    log = tmp_path / "service.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "syncer", "run"],
            env={**env, "SYNCER_HTTP_PORT": str(port), "SYNCER_HTTP_HOST": "127.0.0.1"},
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    yield process, port, base
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, log.read_text()[-3000:]


def test_600_idle_connections_neither_block_healthz_nor_add_threads(service):
    """Before: the standard library's server gave each connection a thread with no
    timeout (600 half-open connections made 603 threads) and queued only 5."""
    process, port, base = service
    threads_before = threads_of(process.pid)
    with ExitStack() as stack:
        idle = [
            stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            for _ in range(IDLE_CONNECTIONS)
        ]
        for half_sent in idle[::2]:  # half of them start a request and stop
            half_sent.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        time.sleep(1)  # let the server take them all in

        started = time.monotonic()
        answer = httpx.get(f"{base}/healthz", timeout=5)
        elapsed = time.monotonic() - started

        assert answer.status_code == 200
        assert elapsed < 1.0, elapsed
        assert threads_of(process.pid) <= max(THREAD_BOUND, threads_before + 5)


def test_200_concurrent_readyz_all_answer(service):
    """Before: 73 of 200 concurrent /readyz timed out at 60 s."""
    _, _, base = service

    def ready(_: int) -> int:
        return httpx.get(f"{base}/readyz", timeout=30).status_code

    with ThreadPoolExecutor(200) as pool:
        statuses = list(pool.map(ready, range(200)))

    assert statuses == [200] * 200
