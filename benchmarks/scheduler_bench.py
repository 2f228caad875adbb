"""Does every healthy source sync on time, whatever the others do? `syncer run` at scale.

    uv run python benchmarks/scheduler_bench.py [--rows 10,200,1000,outage40,...]
                                                [--intervals 2] [--database-url URL]
                                                [--syncer-path DIR]

Each row starts a provider simulator with N Moonshot-shaped accounts of 200 files
each (in a child process, so its CPU and memory are not syncer's), points one or two
real `syncer run` processes at them through a SYNCER_CONFIG file, lets them run for a
warm-up interval (the first syncs are spread over it) plus `--intervals` measured
intervals, and prints one line per row:

- on time: healthy sources (not in an outage) whose `ok` runs, over the measured
  window, never leave a gap longer than the interval plus a slack of
  max(2 s, 20% of the interval);
- req/src/int: provider requests per healthy source per interval in that window
  (1.0 is one listing per interval however many replicas run);
- threads, conns, RSS: the peak over the run, per replica: threads of the process,
  its connections in pg_stat_activity, resident memory;
- /metrics: the median and slowest scrape of /metrics (one per second, per replica,
  warm-up included: the first syncs' initial loads compete with it).

Rows: `10`, `200`, `1000` healthy; `outage40`, `outage200`: half the sources answer
503 for the whole run (measured after the warm-up in which each failing source fails
once: until then it is not known to be failing, and holds a worker for the retry
budget); `slow50`: every listing takes 10 s; `replicas200`: 200 sources,
two replicas. `--syncer-path` runs the syncer found in another checkout (for "before"
figures); the database is a scratch one, created and dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime
    from multiprocessing.connection import Connection

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
FILES_PER_SOURCE = 200
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Row:
    name: str
    sources: int
    interval: float
    outage: int = 0  # sources answering 503 throughout
    slow: float = 0.0  # seconds every listing takes
    replicas: int = 1
    workers: int = 8
    retry_timeout: str = "20"
    # Before measuring: the first syncs are spread over one interval; in an outage the
    # first failure of each failing source still holds a worker for the retry budget.
    warmup_intervals: int = 1


ROWS = {
    row.name: row
    for row in (
        Row("10", 10, 10),
        Row("200", 200, 30),
        Row("1000", 1000, 60),
        Row("outage40", 40, 30, outage=20, warmup_intervals=2),
        Row("outage200", 200, 30, outage=100, warmup_intervals=3),
        Row("slow50", 50, 45, slow=10.0, workers=16),
        Row("replicas200", 200, 30, replicas=2),
    )
}


# --- The simulator, in a child process ----------------------------------------------


def _serve(pipe: Connection, row: Row) -> None:
    from syncer.simulator import Account, Fault, Simulator  # noqa: PLC0415

    accounts = [Account(f"src{n}", "moonshot", f"sk-bench-{n:04d}") for n in range(row.sources)]
    with Simulator(accounts, seed=3) as sim:
        for n, account in enumerate(accounts):
            sim.add_files(account.name, FILES_PER_SOURCE)
            if n < row.outage:
                sim.set_persistent_fault(account.name, Fault.status(503))
            elif row.slow:
                sim.set_persistent_fault(account.name, Fault.slow(row.slow))
        pipe.send(sim.port)
        while pipe.recv() == "counts":
            pipe.send({a.name: sim.request_count(a.name) for a in accounts})


@contextlib.contextmanager
def simulator(row: Row) -> Iterator[Connection]:
    context = multiprocessing.get_context("spawn")
    pipe, child = context.Pipe()
    process = context.Process(target=_serve, args=(child, row), daemon=True)
    process.start()
    try:
        yield pipe
    finally:
        pipe.send("stop")
        process.join(timeout=30)


# --- Measuring ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    fields: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Threads", "VmRSS"):
                fields[key] = int(value.split()[0])
    return fields


def run_row(row: Row, admin_url: str, intervals: int, syncer_path: str | None) -> dict[str, Any]:
    name = f"syncer_sched_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = f"postgresql://{_url_path(admin_url, name)}"
    try:
        with simulator(row) as pipe, tempfile.TemporaryDirectory() as tmp:
            port = pipe.recv()
            return _measure(row, url, name, pipe, port, Path(tmp), intervals, syncer_path)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _url_path(admin_url: str, database: str) -> str:
    rest = admin_url.split("://", 1)[1]
    return rest.rsplit("/", 1)[0] + "/" + database


def _environment(
    row: Row, url: str, port: int, tmp: Path, syncer_path: str | None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCER_", "MOONSHOT_"))}
    tables = []
    for n in range(row.sources):
        env[f"KEY_{n}"] = f"sk-bench-{n:04d}"
        tables.append(
            f'[[sources]]\nname = "src{n}"\nprovider = "moonshot"\napi_key_env = "KEY_{n}"\n'
            f'base_url = "http://127.0.0.1:{port}/src{n}/v1"\n'
        )
    (tmp / "sources.toml").write_text("\n".join(tables))
    env.update(
        SYNCER_DATABASE_URL=url,
        SYNCER_CONFIG=str(tmp / "sources.toml"),
        SYNCER_INTERVAL=str(row.interval),
        SYNCER_WORKERS=str(row.workers),
        SYNCER_RETRY_TIMEOUT=row.retry_timeout,
        SYNCER_LOG_FORMAT="json",
        SYNCER_LOG_LEVEL="WARNING",
        SYNCER_HTTP_HOST="127.0.0.1",
    )
    if syncer_path:
        env["PYTHONPATH"] = syncer_path
    return env


@dataclass
class Peaks:
    threads: int = 0
    conns: int = 0
    rss_mb: float = 0.0
    scrapes: list[float] = field(default_factory=list)

    def sample(self, pids: list[int], ports: list[int], conns: int) -> None:
        for pid, port in zip(pids, ports, strict=True):
            status = proc_status(pid)
            self.threads = max(self.threads, status.get("Threads", 0))
            self.rss_mb = max(self.rss_mb, status.get("VmRSS", 0) / 1024)
            started = time.monotonic()
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=60)
            self.scrapes.append(time.monotonic() - started)
        self.conns = max(self.conns, conns // len(pids))


def _measure(
    row: Row,
    url: str,
    database: str,
    pipe: Connection,
    port: int,
    tmp: Path,
    intervals: int,
    syncer_path: str | None,
) -> dict[str, Any]:
    env = _environment(row, url, port, tmp, syncer_path)
    # In a directory of its own: `python -m` puts the working directory first on the
    # path, which would shadow --syncer-path with this checkout.
    subprocess.run(
        [sys.executable, "-m", "syncer", "migrate"],
        env=env,
        cwd=tmp,
        check=True,
        capture_output=True,
    )
    ports = [free_port() for _ in range(row.replicas)]
    peaks = Peaks()
    with contextlib.ExitStack() as stack:
        replicas = [stack.enter_context(_replica(env, p, tmp / f"replica{p}.log")) for p in ports]
        window_start = time.monotonic() + row.warmup_intervals * row.interval
        with psycopg.connect(url, autocommit=True) as conn:
            while time.monotonic() < window_start:
                peaks.sample(replicas, ports, _connections(conn, database))
                time.sleep(1)
            pipe.send("counts")
            counts_at_start = pipe.recv()
            wall_start = _now(conn)
            window_end = time.monotonic() + intervals * row.interval
            while time.monotonic() < window_end:
                tick = time.monotonic()
                peaks.sample(replicas, ports, _connections(conn, database))
                time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
            pipe.send("counts")
            counts_at_end = pipe.recv()
            wall_end = _now(conn)
            ok_starts = conn.execute(
                "SELECT source, started_at FROM sync_runs WHERE outcome = 'ok'"
                " AND started_at BETWEEN %s - make_interval(secs => %s) AND %s",
                (wall_start, row.interval, wall_end),
            ).fetchall()
    healthy = [f"src{n}" for n in range(row.outage, row.sources)]
    measured = (wall_end - wall_start).total_seconds() / row.interval
    requests = sum(counts_at_end[n] - counts_at_start[n] for n in healthy)
    return {
        "on_time": _on_time(row, healthy, ok_starts, wall_start, wall_end),
        "requests": requests / len(healthy) / measured,
        "threads": peaks.threads,
        "conns": peaks.conns,
        "rss_mb": peaks.rss_mb,
        "scrape_p50": statistics.median(peaks.scrapes),
        "scrape_max": max(peaks.scrapes),
    }


@contextlib.contextmanager
def _replica(env: dict[str, str], port: int, log: Path) -> Iterator[int]:
    """One `syncer run`, its pid; SIGTERM (a graceful stop) at the end."""
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "syncer", "run", "--no-migrate"],
            env={**env, "SYNCER_HTTP_PORT": str(port)},
            cwd=log.parent,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            yield process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()


def _connections(conn: psycopg.Connection[Any], database: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'syncer'",
        (database,),
    ).fetchone()
    return int(row[0]) if row else 0


def _now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


def _on_time(
    row: Row,
    healthy: list[str],
    ok_starts: list[Any],
    wall_start: datetime,
    wall_end: datetime,
) -> float:
    """% of healthy sources whose ok runs never left a gap over interval + slack."""
    slack = max(2.0, 0.2 * row.interval)
    starts: dict[str, list[float]] = {name: [] for name in healthy}
    for source, at in ok_starts:
        if source in starts:
            starts[source].append(at.timestamp())
    on_time = 0
    for name in healthy:
        points = sorted([wall_start.timestamp(), *starts[name], wall_end.timestamp()])
        gaps = [b - a for a, b in itertools.pairwise(points)]
        on_time += max(gaps) <= row.interval + slack
    return 100.0 * on_time / len(healthy)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--intervals", type=int, default=2)
    parser.add_argument("--database-url", default=LOCAL_SERVER)
    parser.add_argument("--syncer-path", help="a checkout whose syncer to run (PYTHONPATH)")
    args = parser.parse_args()
    print(
        f"{'row':<12} {'sources':>7} {'interval':>8} {'workers':>7} {'on time':>8} "
        f"{'req/src/int':>11} {'threads':>7} {'conns':>5} {'RSS MB':>7} {'/metrics s':>10}",
        flush=True,
    )
    for name in args.rows.split(","):
        row = ROWS[name]
        result = run_row(row, args.database_url, args.intervals, args.syncer_path)
        print(
            f"{row.name:<12} {row.sources:>7} {row.interval:>7.0f}s {row.workers:>7} "
            f"{result['on_time']:>7.0f}% {result['requests']:>11.2f} {result['threads']:>7} "
            f"{result['conns']:>5} {result['rss_mb']:>7.0f} "
            f"{result['scrape_p50']:>10.2f} / {result['scrape_max']:>5.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
