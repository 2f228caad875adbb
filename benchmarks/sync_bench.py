"""How fast syncer syncs one large source, next to what the hardware allows.

    uv run python benchmarks/sync_bench.py [--sizes 1000,10000,100000] [--repeat 3]
                                           [--database-url postgresql://...]

For each size, a Moonshot-shaped account with that many files is served by the
provider simulator (a real HTTP server on loopback, in a child process so that its own
memory and CPU are not the syncer's), and `sync_source` runs three times against a
scratch database: the initial load, a re-sync of the unchanged listing, and a re-sync
after 1% of the files changed status and 1% were deleted. Per sync it reports:

- time: wall-clock seconds of `sync_source` (lock, fetch, parse, diff, write, commit),
  and `cpu s`, the CPU time this process spent in it (less sensitive to a busy machine;
  PostgreSQL's own work is not in it);
  `runs` is finished_at - started_at of the `sync_runs` row (from the start of the
  sync to the end of its writes, before the commit);
- rows: `files` rows the sync's transaction wrote (xmin = the run row's xmin: an
  unchanged row that was rewritten would count), and events: its `file_events`;
- RSS: the peak resident memory of this process during the sync (VmHWM, reset before
  each sync);
- x floor: the time as a multiple of the floor for the same data, which is a bare fetch
  and parse of the listing, a SELECT of the stored rows and a COPY of those rows into a
  scratch table.

Every measurement is repeated `--repeat` times (a round: fresh tables, the three syncs,
then the floor on the churned data); the table shows the best and the median.
The scratch database is created on the server and dropped at the end: the server at
127.0.0.1:5432 if it answers, else a throwaway embedded one.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import sqlalchemy as sa
from psycopg import sql

from syncer.config import HttpPolicy, SourceConfig, SyncRules
from syncer.db.engine import create_db_engine, start_embedded
from syncer.db.migrate import upgrade_to_head
from syncer.providers.http import parse_json
from syncer.redaction import Secret
from syncer.sync import sync_source

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from multiprocessing.connection import Connection

    from syncer.simulator import Simulator

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
ACCOUNT = "bench"
API_KEY = "sk-bench-0123456789abcdef0123456789"
CHURN_EVERY = 100  # 1% of the files change status, another 1% are deleted
TABLES = ("file_events", "alerts", "files", "sync_runs")
PHASES = ("initial", "no change", "1% churn")

# --- The simulator, in a child process ----------------------------------------------


def _serve(pipe: Connection) -> None:
    """Child process: run a simulator and obey the parent's commands until told to stop."""
    from syncer.simulator import Account, Simulator  # noqa: PLC0415

    sim: Simulator | None = None
    while True:
        command, argument = pipe.recv()
        if command == "load":
            if sim is not None:
                sim.stop()
            sim = Simulator([Account(ACCOUNT, "moonshot", API_KEY)], seed=1).start()
            sim.add_files(ACCOUNT, argument)
            _warm(sim)
            pipe.send(sim.base_url(ACCOUNT))
        elif command == "churn":
            assert sim is not None
            ids = [item["id"] for item in sim.files(ACCOUNT)]
            for file_id in ids[::CHURN_EVERY]:
                sim.set_status(ACCOUNT, file_id, "error", "file content is empty")
            for file_id in ids[CHURN_EVERY // 2 :: CHURN_EVERY]:
                sim.delete_file(ACCOUNT, file_id)
            _warm(sim)
            pipe.send(None)
        else:
            if sim is not None:
                sim.stop()
            pipe.send(None)
            return


def _warm(sim: Simulator) -> None:
    """Have the simulator serialize the listing now, not during the measured sync.

    A real provider's time to answer is no more syncer's than the simulator's is.
    """
    response = httpx.get(
        f"{sim.base_url(ACCOUNT)}/files", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    response.raise_for_status()


class SimulatorProcess:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), daemon=True)
        self._process.start()

    def _call(self, command: str, argument: object = None) -> object:
        self._pipe.send((command, argument))
        return self._pipe.recv()

    def load(self, files: int) -> str:
        """A fresh account with `files` files (the same ones every time); its base URL."""
        return str(self._call("load", files))

    def churn(self) -> None:
        self._call("churn")

    def stop(self) -> None:
        self._call("stop")
        self._process.join()


# --- Measuring ----------------------------------------------------------------------


def reset_peak_rss() -> None:
    """Start a new VmHWM period (Linux >= 4.0); without it the peak is the process's."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Sync:
    seconds: float
    cpu: float
    recorded: float
    rows: int
    events: int
    rss_mb: float
    outcome: str


@dataclass
class Cell:
    syncs: list[Sync] = field(default_factory=list)

    def best(self, name: str) -> float:
        return min(getattr(s, name) for s in self.syncs)

    def median(self, name: str) -> float:
        return statistics.median(getattr(s, name) for s in self.syncs)


@dataclass
class Floor:
    fetch: list[float] = field(default_factory=list)
    select: list[float] = field(default_factory=list)
    copy: list[float] = field(default_factory=list)

    def totals(self) -> list[float]:
        return [a + b + c for a, b, c in zip(self.fetch, self.select, self.copy, strict=True)]


def run_sync(engine: sa.Engine, source: SourceConfig) -> Sync:
    reset_peak_rss()
    started, cpu_started = time.perf_counter(), time.process_time()
    result = sync_source(engine, source, rules=SyncRules(), policy=HttpPolicy())
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    rss = peak_rss_mb()
    if result.run_id is None or result.error:
        raise RuntimeError(f"the sync failed: {result.summary()}")
    with engine.connect() as conn:
        recorded, rows, events = conn.execute(
            sa.text("""
                SELECT extract(epoch FROM r.finished_at - r.started_at)::float8,
                       (SELECT count(*) FROM files f
                         WHERE f.source = r.source AND f.xmin = r.xmin),
                       (SELECT count(*) FROM file_events e WHERE e.sync_run_id = r.id)
                FROM sync_runs r WHERE r.id = :id
            """),
            {"id": result.run_id},
        ).one()
    return Sync(seconds, cpu, recorded, rows, events, rss, result.outcome.value)


def measure_floor(floor: Floor, base_url: str, database_url: str) -> None:
    """The same data, moved the cheapest way: fetch + parse, SELECT, COPY."""
    started = time.perf_counter()
    # verify=False: plain HTTP on loopback, and loading a CA bundle is not part of a fetch.
    with httpx.Client(headers={"Authorization": f"Bearer {API_KEY}"}, verify=False) as client:
        response = client.get(f"{base_url}/files")
        response.raise_for_status()
        parse_json(response.content)
    floor.fetch.append(time.perf_counter() - started)

    url = sa.make_url(database_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False)) as conn:
        conn.adapters.register_loader("jsonb", psycopg.types.string.TextLoader)
        started = time.perf_counter()
        rows = conn.execute("SELECT * FROM files WHERE source = %s", (ACCOUNT,)).fetchall()
        floor.select.append(time.perf_counter() - started)
        conn.execute("CREATE TEMP TABLE floor_copy (LIKE files)")
        started = time.perf_counter()
        with conn.cursor().copy("COPY floor_copy FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        floor.copy.append(time.perf_counter() - started)
        conn.rollback()


# --- The scratch database -----------------------------------------------------------


def admin_url(configured: str | None, data_dir: Path) -> str:
    if configured:
        return configured
    try:
        psycopg.connect(LOCAL_SERVER, connect_timeout=3).close()
    except psycopg.OperationalError:
        return start_embedded(data_dir, throwaway=True).reveal()
    return LOCAL_SERVER


class ScratchDatabase:
    def __init__(self, admin: str) -> None:
        self._admin = sa.make_url(admin).set(drivername="postgresql")
        self.name = f"syncer_bench_{uuid.uuid4().hex[:12]}"

    def _admin_conn(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._admin.render_as_string(hide_password=False), autocommit=True)

    def __enter__(self) -> str:
        with self._admin_conn() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        return self._admin.set(database=self.name).render_as_string(hide_password=False)

    def __exit__(self, *_: object) -> None:
        with self._admin_conn() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )


@contextlib.contextmanager
def bench_setup(configured: str | None) -> Iterator[tuple[sa.Engine, str, SimulatorProcess]]:
    """A migrated scratch database (its engine and URL) and a simulator process."""
    sim = SimulatorProcess()
    with (
        tempfile.TemporaryDirectory(prefix="syncer-bench-") as data_dir,
        ScratchDatabase(admin_url(configured, Path(data_dir))) as database_url,
    ):
        engine = create_db_engine(Secret(database_url), lock_timeout=5)
        try:
            upgrade_to_head(engine)
            yield engine, database_url, sim
        finally:
            engine.dispose()
            sim.stop()


# --- The run ------------------------------------------------------------------------


def bench_size(
    size: int, repeat: int, engine: sa.Engine, database_url: str, sim: SimulatorProcess
) -> tuple[dict[str, Cell], Floor]:
    cells = {phase: Cell() for phase in PHASES}
    floor = Floor()
    for _ in range(repeat):
        with engine.begin() as conn:
            conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY"))
        base_url = sim.load(size)
        source = SourceConfig(
            name=ACCOUNT, provider="moonshot", api_key=Secret(API_KEY), base_url=base_url
        )
        cells["initial"].syncs.append(run_sync(engine, source))
        cells["no change"].syncs.append(run_sync(engine, source))
        sim.churn()
        cells["1% churn"].syncs.append(run_sync(engine, source))
        # Last: its SELECT of whole rows would raise the memory the syncs start from.
        measure_floor(floor, base_url, database_url)
    return cells, floor


def table(results: dict[int, tuple[dict[str, Cell], Floor]], repeat: int) -> Iterator[str]:
    head = (
        f"{'files':>7} {'sync':<9} {'time s':>13} {'cpu s':>6} {'runs s':>6} {'x floor':>11} "
        f"{'us/file':>7} {'rows':>7} {'events':>7} {'RSS MB':>7}"
    )
    yield f"best / median of {repeat}; floor = fetch+parse + SELECT + COPY of the same rows"
    yield head
    yield "-" * len(head)
    for size, (cells, floor) in results.items():
        floor_best = min(floor.totals())
        floor_median = statistics.median(floor.totals())
        for phase, cell in cells.items():
            best, median = cell.best("seconds"), cell.median("seconds")
            last = cell.syncs[-1]
            yield (
                f"{size:>7} {phase:<9} {best:>6.3f}/{median:<6.3f} {cell.best('cpu'):>6.3f} "
                f"{cell.best('recorded'):>6.3f} "
                f"{best / floor_best:>5.2f}/{median / floor_median:<5.2f} "
                f"{best / size * 1e6:>7.2f} {last.rows:>7} {last.events:>7} "
                f"{cell.best('rss_mb'):>7.0f}"
            )
        yield (
            f"{size:>7} {'floor':<9} {floor_best:>6.3f}/{floor_median:<6.3f} "
            f"(fetch+parse {min(floor.fetch):.3f}, SELECT {min(floor.select):.3f}, "
            f"COPY {min(floor.copy):.3f})"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per size")
    parser.add_argument("--database-url", help="a server to create the scratch database on")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]

    with bench_setup(args.database_url) as (engine, database_url, sim):
        results = {size: bench_size(size, args.repeat, engine, database_url, sim) for size in sizes}
    for line in table(results, args.repeat):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
