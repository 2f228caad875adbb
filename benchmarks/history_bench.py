"""Years of history: how fast the views, reports and lookups stay, and what a prune leaves.

    uv run python benchmarks/history_bench.py [--sizes 1000000,10000000] [--repeat 5]
                                              [--sources N] [--no-prune] [--no-analyst]
                                              [--database-url postgresql://...]
                                              [--keep DATABASE]
    uv run python benchmarks/history_bench.py --year-at-interval [--year-sources 10]
                                              [--year-days 365] [--year-rates 1,4,12,48]

For each size (sync runs in total), a scratch database is migrated to head and filled
with synthetic history by generate_series: a year of runs of `sources` sources (50 at
1M runs, 1,000 at 10M), mostly `ok`, with `incomplete` and `held` runs, failure streaks
of 15 runs every few days, and one source in ten failing for its last 300 runs (a few
days at its interval); a change run every eighth run, whose events tell each file's
story (appeared, status changes, a third disappear); alerts, sent, dead and pending.
Rows go in with the secondary indexes dropped and rebuilt after, then ANALYZE.

Then, each the median of `--repeat` runs (wall clock, rows fetched to the client):

- every view, and every query of docs/reporting.md's cookbook (with a real source and
  file in place of the examples');
- the report commands' statements (`syncer files/events/runs` with typical options);
- the latest-ok and failure-streak lookups (`/metrics`' per-source query,
  `outbox.source_history`, `current_files` of one file) on a failing source;
- one /metrics collection (every gauge read from the database) for all sources;
- a no-change sync of a 1,000-file source (the simulator, in a child process), next
  to the same sync on an empty database;
- a prune pass at the default retention (unless --no-prune), then the views again;
- table sizes before and after.

`--sources` overrides the number of sources (at least 10, with 320 runs each; the
tests use a small history of few sources).

`--year-at-interval` measures (instead, unless `--sizes` is given too) what retention
leaves of a real year at the default interval (300 s): `--year-sources` sources (10)
of 105,120 runs each, whose runs are, per source:

- a change run (with one event; never a failed one) `--year-changes` times a day (4:
  say two uploads a day, each seen once as `appeared` and once as it becomes ready);
- an outage of an hour (12 failed runs) every two weeks, with the alerts a sync
  raises: `source_failing` on the third failed run, `source_recovered` on the run
  after the outage (both `sent`);
- an `incomplete` run once a week, and a `held` run (with its `run_held` alert)
  twice a year;
- every other run `ok` and unchanged.

One prune pass at the default retention (what a first `syncer prune` over a year
does), then a second (the next hourly one: it prunes the runs whose alerts the first
pass's alert retention removed), each followed by `sync_runs`' rows and, after
`VACUUM FULL`, bytes. Then the same year once per rate of `--year-rates` (one source
each, changes a day; the rest as above) with the share of runs each keeps: what stays
is the last 30 days (8%), the non-ok runs and the change runs, so it depends on how
often files change. The passes' durations are printed, but rows and bytes are the
figures here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.sql
import sqlalchemy as sa
from sync_bench import API_KEY, ScratchDatabase, SimulatorProcess, bench_setup

from syncer.config import HttpPolicy, SourceConfig, SyncRules
from syncer.db import outbox
from syncer.db.engine import create_db_engine
from syncer.db.migrate import upgrade_to_head
from syncer.metrics import DatabaseGauges
from syncer.model import EventKind, Outcome, StatusClass
from syncer.providers.moonshot import PROVIDER as MOONSHOT
from syncer.redaction import Secret
from syncer.reports import Filters, events_report, files_report, runs_report
from syncer.sync import sync_source

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

DOC = Path(__file__).resolve().parent.parent / "docs" / "reporting.md"
_BLOCK = re.compile(r"^### ([^\n]+)$|^```sql\n(.*?)^```", re.MULTILINE | re.DOTALL)
YEAR = timedelta(days=365)
LIVE_FILES = 1000
SECONDARY_INDEXES = sa.text(
    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
    " AND indexname LIKE 'ix\\_%' AND tablename IN ('sync_runs', 'file_events', 'files')"
)

# Run k (1..R) of source s (1..S) has id (k - 1) * S + s: ids in time order, as in life.
# A change run (k % 8 = 0) is never failed; failure streaks of 15 runs every 500, and
# the last 300 runs of every tenth source failed (a source that is failing right now).
FILL_RUNS = """
INSERT INTO sync_runs (id, source, provider, started_at, finished_at, outcome,
                       files_listed, appeared, status_changed, disappeared, error)
OVERRIDING SYSTEM VALUE
SELECT (k - 1) * :sources + s, 's' || lpad(s::text, 4, '0'), 'moonshot',
       :start + (k * :step + s) * interval '1 second',
       :start + (k * :step + s) * interval '1 second'
              + (0.2 + (k * 7 + s) % 40 / 10.0) * interval '1 second',
       o.outcome, :files_per_source, c.n, c.n, c.n,
       CASE WHEN o.outcome = 'failed' THEN 'HTTP 503 from the provider' END
FROM generate_series(1, :runs_per_source) AS k
CROSS JOIN generate_series(1, :sources) AS s
CROSS JOIN LATERAL (SELECT CASE WHEN k % 8 = 0 THEN 1 ELSE 0 END AS n) AS c
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN k % 8 <> 0 AND s % 10 = 0 AND k > :runs_per_source - 300 THEN 'failed'
        WHEN k % 8 <> 0 AND (k + s * 37) % 500 < 15 THEN 'failed'
        WHEN k % 97 = 0 THEN 'incomplete'
        WHEN (k + s) % 1999 = 0 THEN 'held'
        ELSE 'ok' END AS outcome
) AS o
ORDER BY k, s
"""

# File j (1..F) of source s appears in change run a = 8 * (1 + j % (R/8 - 40)), changes
# status (j % 30) times, one change run apart, and a third of them disappear after.
# Each event's new_status_class is what syncer writes: the class of the new status by
# the provider's own rules (status_class_sql), null for a disappearance.
FILL_EVENTS = """
INSERT INTO file_events (sync_run_id, occurred_at, source, provider, file_id, kind,
                         old_status, new_status, changes, new_status_class)
SELECT r.id, r.started_at, r.source, 'moonshot', f.file_id, e.kind, e.old_status,
       e.new_status, e.changes, {status_class}
FROM generate_series(1, :sources) AS s
CROSS JOIN generate_series(1, :files_per_source) AS j
CROSS JOIN LATERAL (SELECT 's' || lpad(s::text, 4, '0') AS source,
                           's' || s || '-f' || j AS file_id,
                           8 * (1 + j % (:runs_per_source / 8 - 40)) AS appeared_k,
                           j % 30 AS changes) AS f
CROSS JOIN LATERAL (
    SELECT 0 AS step, 'appeared' AS kind, NULL AS old_status, 'processing' AS new_status,
           jsonb_build_object('filename', jsonb_build_array(NULL, 'file-' || j || '.pdf'),
                              'purpose', '[null, "file-extract"]'::jsonb,
                              'bytes', jsonb_build_array(NULL, j * 100),
                              'line_count', '[null, null]'::jsonb,
                              'status', '[null, "processing"]'::jsonb,
                              'status_details', '[null, ""]'::jsonb,
                              'created_at', '[null, "2025-01-01T00:00:00+00:00"]'::jsonb)
               AS changes
    UNION ALL
    SELECT n, 'status_changed',
           CASE WHEN n % 2 = 1 THEN 'processing' ELSE 'ok' END,
           CASE WHEN n % 2 = 1 THEN 'ok' ELSE 'processing' END,
           jsonb_build_object('status', CASE WHEN n % 2 = 1 THEN '["processing", "ok"]'::jsonb
                                             ELSE '["ok", "processing"]'::jsonb END)
    FROM generate_series(1, f.changes) AS n
    UNION ALL
    SELECT f.changes + 1, 'disappeared',
           CASE WHEN f.changes % 2 = 1 THEN 'ok' ELSE 'processing' END, NULL, '{}'::jsonb
    WHERE j % 3 = 0
) AS e
JOIN sync_runs AS r ON r.id = (f.appeared_k + 8 * e.step - 1) * :sources + s
ORDER BY r.id, f.file_id
"""


def status_class_sql(column: str) -> str:
    """The class of each status the simulated Moonshot reports, by its provider's rules."""
    whens = " ".join(
        f"WHEN '{status}' THEN '{MOONSHOT.items.classify(status).value}'"
        for status in MOONSHOT.personality.statuses
    )
    return f"CASE {column} {whens} END"


# A file's row as the last sync that listed it left it: its last status and that
# status's class (a disappearance keeps both), deleted_at set if it disappeared.
FILL_FILES = """
INSERT INTO files (source, file_id, provider, filename, purpose, bytes, status,
                   status_class, created_at, first_seen_at, changed_at, deleted_at, raw)
SELECT source, file_id, 'moonshot', 'file-' || split_part(file_id, '-f', 2) || '.pdf',
       'file-extract', 100, status, status_class,
       '2025-01-01T00:00:00+00:00', first_seen_at, changed_at,
       CASE WHEN kind = 'disappeared' THEN changed_at END, '{}'
FROM (
    SELECT source, file_id, min(occurred_at) AS first_seen_at, max(occurred_at) AS changed_at,
           (array_agg(kind ORDER BY id DESC))[1] AS kind,
           (array_agg(new_status ORDER BY id DESC)
                FILTER (WHERE new_status_class IS NOT NULL))[1] AS status,
           (array_agg(new_status_class ORDER BY id DESC)
                FILTER (WHERE new_status_class IS NOT NULL))[1] AS status_class
    FROM file_events
    GROUP BY source, file_id
) AS last
"""

FILL_ALERTS = """
INSERT INTO alerts (alert_key, created_at, kind, source, provider, sync_run_id, payload,
                    state, attempts, next_attempt_at, sent_at)
SELECT 'source_failing/' || r.source || '/' || r.id, r.started_at, 'source_failing',
       r.source, r.provider, r.id, '{}',
       CASE WHEN r.id % 50 = 0 THEN 'dead' WHEN r.id % 333 = 0 THEN 'pending' ELSE 'sent' END,
       1, r.started_at, CASE WHEN r.id % 50 <> 0 AND r.id % 333 <> 0 THEN r.started_at END
FROM sync_runs AS r
WHERE r.outcome = 'failed' AND r.id % 5 = 0
"""


# --- A year at the default interval (--year-at-interval) ------------------------------

INTERVAL = 300  # seconds: SYNCER_INTERVAL's default
RUNS_PER_DAY = 86_400 // INTERVAL
OUTAGE_EVERY, OUTAGE_RUNS = 14 * RUNS_PER_DAY, 12  # an hour down every two weeks
INCOMPLETE_EVERY = 7 * RUNS_PER_DAY  # a truncated listing once a week
HELD_EVERY = RUNS_PER_DAY * 365 // 2  # the breaker trips twice a year

# Run k (1..R) of source s (1..S, the s-th of :names, whose files change :rates[s]
# times a day) has id (k - 1) * S + s and starts k intervals after :start. A change run
# is where k * rate / runs-a-day steps up: `rate` of them a day, evenly spaced. Each
# source's outages, incomplete and held runs fall at an offset of its own.
YEAR_RUNS = """
INSERT INTO sync_runs (id, source, provider, started_at, finished_at, outcome,
                       files_listed, appeared, status_changed, error)
OVERRIDING SYSTEM VALUE
SELECT (k - 1) * :sources + src.s, src.name, 'moonshot',
       :start + (k * :interval + src.s) * interval '1 second',
       :start + (k * :interval + src.s) * interval '1 second'
              + (0.2 + (k * 7 + src.s) % 40 / 10.0) * interval '1 second',
       o.outcome, 40,
       CASE WHEN o.outcome <> 'failed' AND c.change AND k % 2 = 0 THEN 1 ELSE 0 END,
       CASE WHEN o.outcome <> 'failed' AND c.change AND k % 2 = 1 THEN 1 ELSE 0 END,
       CASE WHEN o.outcome = 'failed' THEN 'HTTP 503 from the provider' END
FROM unnest(CAST(:names AS text[]), CAST(:rates AS integer[])) WITH ORDINALITY
     AS src (name, rate, s)
CROSS JOIN generate_series(1, :runs_per_source) AS k
CROSS JOIN LATERAL (
    SELECT (k + src.s * 3001) * src.rate / :per_day
           <> (k - 1 + src.s * 3001) * src.rate / :per_day AS change
) AS c
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN (k + src.s * 1009) % :outage_every < :outage_runs THEN 'failed'
        WHEN (k + src.s * 101) % :incomplete_every = 0 THEN 'incomplete'
        WHEN (k + src.s * 7919) % :held_every = 0 THEN 'held'
        ELSE 'ok' END AS outcome
) AS o
ORDER BY k, src.s
"""

# One event per change run, of a file of its own.
YEAR_EVENTS = """
INSERT INTO file_events (sync_run_id, occurred_at, source, provider, file_id, kind,
                         old_status, new_status, changes, new_status_class)
SELECT r.id, r.started_at, r.source, 'moonshot', 'f' || r.id,
       CASE WHEN r.appeared = 1 THEN 'appeared' ELSE 'status_changed' END,
       CASE WHEN r.appeared = 1 THEN NULL ELSE 'processing' END, 'ok',
       CASE WHEN r.appeared = 1 THEN '{"status": [null, "ok"]}'::jsonb
            ELSE '{"status": ["processing", "ok"]}'::jsonb END,
       'ready'
FROM sync_runs AS r
WHERE r.appeared + r.status_changed > 0
"""

# The alerts a sync raises for these runs: on the third run of an outage, on the run
# after it, and on a held run. All sent when raised.
YEAR_ALERTS = """
INSERT INTO alerts (alert_key, created_at, kind, source, provider, sync_run_id, payload,
                    state, attempts, next_attempt_at, sent_at)
SELECT a.kind || '/' || r.source || '/' || r.id, r.started_at, a.kind, r.source,
       r.provider, r.id, '{}', 'sent', 1, r.started_at, r.started_at
FROM (
    SELECT r.*, lag(r.outcome, 1) OVER w AS previous, lag(r.outcome, 3) OVER w AS third_back,
           lag(r.outcome, 2) OVER w AS second_back
    FROM sync_runs AS r
    WINDOW w AS (PARTITION BY r.source ORDER BY r.id)
) AS r
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN r.outcome = 'failed' AND r.previous = 'failed' AND r.second_back = 'failed'
             AND r.third_back IS DISTINCT FROM 'failed' THEN 'source_failing'
        WHEN r.outcome <> 'failed' AND r.previous = 'failed' AND r.second_back = 'failed'
             AND r.third_back = 'failed' THEN 'source_recovered'
        WHEN r.outcome = 'held' THEN 'run_held'
        END AS kind
) AS a
WHERE a.kind IS NOT NULL
"""


# The shape of a grouped "last success per source" (what /metrics can ask in one query).
LATEST_OK_OF_ALL = """
WITH RECURSIVE sources (source) AS (
    SELECT min(source) FROM sync_runs
    UNION ALL
    SELECT (SELECT min(r.source) FROM sync_runs AS r WHERE r.source > s.source)
    FROM sources AS s WHERE s.source IS NOT NULL
)
SELECT s.source, ok.finished_at
FROM sources AS s
CROSS JOIN LATERAL (
    SELECT r.finished_at FROM sync_runs AS r
    WHERE r.source = s.source AND r.outcome = 'ok'
    ORDER BY r.id DESC LIMIT 1
) AS ok
"""


def fill(engine: sa.Engine, runs: int, sources: int) -> None:
    """Synthetic history of `runs` runs over a year, as the module docstring tells."""
    runs_per_source = runs // sources
    params = {
        "sources": sources,
        "runs_per_source": runs_per_source,
        "files_per_source": runs // (10 if runs <= 1_000_000 else 20) // sources,
        "start": datetime.now(UTC) - YEAR,
        "step": int(YEAR.total_seconds() // runs_per_source),
    }
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
        indexes = conn.execute(SECONDARY_INDEXES).all()
        for name, _ in indexes:
            conn.execute(sa.text(f'DROP INDEX "{name}"'))
        events = FILL_EVENTS.replace("{status_class}", status_class_sql("e.new_status"))
        for statement in (FILL_RUNS, events, FILL_FILES, FILL_ALERTS):
            conn.execute(sa.text(statement), params)
        for _, definition in indexes:
            conn.execute(sa.text(definition))
        conn.execute(
            sa.text("SELECT setval(pg_get_serial_sequence('sync_runs', 'id'), :n)"),
            {
                "n": runs_per_source * sources,
            },
        )
    vacuum(engine, "VACUUM ANALYZE")


# --- What is measured ---------------------------------------------------------------


def timed(run: Callable[[], object], repeat: int) -> float:
    """Median seconds of `repeat` calls (after one call that warms the cache).

    An analyst query that takes seconds is timed once, by that first call.
    """
    started = time.perf_counter()
    run()
    if time.perf_counter() - started > 2:
        return time.perf_counter() - started
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def fetch(
    engine: sa.Engine, statement: sa.Executable | str, params: dict[str, Any] | None = None
) -> Callable[[], int]:
    def run() -> int:
        with engine.connect() as conn:
            query = sa.text(statement) if isinstance(statement, str) else statement
            return len(conn.execute(query, params or {}).all())

    return run


def cookbook(source: str, file_id: str, gone_file_id: str) -> Iterator[tuple[str, str]]:
    """docs/reporting.md's queries, with a real source and files in place of the examples."""
    heading = ""
    for match in _BLOCK.finditer(DOC.read_text()):
        if match.group(1):
            heading = match.group(1)
            continue
        sql = match.group(2).replace("'kimi'", f"'{source}'")
        sql = sql.replace("'k1'", f"'{file_id}'").replace("'k2'", f"'{gone_file_id}'")
        yield heading, sql


def samples(engine: sa.Engine, sources: int) -> dict[str, str]:
    with engine.connect() as conn:
        failing = "s" + str(10).zfill(4)
        healthy = "s0001"
        file_id = conn.execute(
            sa.text("SELECT file_id FROM files WHERE source = :s AND deleted_at IS NULL LIMIT 1"),
            {"s": healthy},
        ).scalar_one()
        gone = conn.execute(
            sa.text(
                "SELECT file_id FROM files WHERE source = :s AND deleted_at IS NOT NULL LIMIT 1"
            ),
            {"s": healthy},
        ).scalar_one()
    return {
        "failing": failing,
        "healthy": healthy,
        "file": file_id,
        "gone": gone,
        "n": str(sources),
    }


def is_analyst_query(sql: str) -> bool:
    """Folds the events of every file: documented as costly, timed once (or skipped)."""
    return "files_as_of(" in sql or ("file_history" in sql and "file_id = '" not in sql)


def queries(
    engine: sa.Engine, s: dict[str, str], *, analyst: bool = True
) -> Iterator[tuple[str, Callable[[], object]]]:
    failing, healthy, file_id = s["failing"], s["healthy"], s["file"]
    yield "view source_health (all)", fetch(engine, "SELECT * FROM source_health")
    yield (
        "view source_health (one)",
        fetch(engine, "SELECT * FROM source_health WHERE source = :s", {"s": failing}),
    )
    yield (
        "view current_files (one source)",
        fetch(engine, "SELECT * FROM current_files WHERE source = :s", {"s": healthy}),
    )
    yield (
        "view current_files (all, count)",
        fetch(engine, "SELECT count(last_seen_at) FROM current_files"),
    )
    yield (
        "view current_files (one file)",
        fetch(
            engine,
            "SELECT * FROM current_files WHERE source = :s AND file_id = :f",
            {"s": healthy, "f": file_id},
        ),
    )
    yield "view failed_files", fetch(engine, "SELECT * FROM failed_files")
    yield "view inventory_summary", fetch(engine, "SELECT * FROM inventory_summary")
    yield (
        "view file_history (one file)",
        fetch(
            engine,
            "SELECT * FROM file_history WHERE source = :s AND file_id = :f",
            {"s": healthy, "f": file_id},
        ),
    )
    for heading, sql in cookbook(healthy, file_id, s["gone"]):
        if analyst or not is_analyst_query(sql):
            yield f"doc: {heading}", fetch(engine, sql)
    yield (
        "syncer files --status-class failed",
        fetch(engine, files_report(Filters(status_classes=(StatusClass.FAILED,))).statement),
    )
    yield (
        "syncer files --source X",
        fetch(engine, files_report(Filters(sources=(healthy,))).statement),
    )
    yield (
        "syncer events --file ID",
        fetch(engine, events_report(Filters(file_ids=(file_id,))).statement),
    )
    yield "syncer events --limit 20", fetch(engine, events_report(Filters(limit=20)).statement)
    yield (
        "syncer events --since 24h --kind disappeared",
        fetch(
            engine,
            events_report(
                Filters(
                    kinds=(EventKind.DISAPPEARED,), since=datetime.now(UTC) - timedelta(hours=24)
                )
            ).statement,
        ),
    )
    yield "syncer runs --limit 20", fetch(engine, runs_report(Filters(limit=20)).statement)
    yield (
        "syncer runs --source X --outcome failed --limit 5",
        fetch(
            engine,
            runs_report(Filters(sources=(failing,), outcomes=(Outcome.FAILED,), limit=5)).statement,
        ),
    )
    yield (
        "syncer runs --since 24h",
        fetch(
            engine, runs_report(Filters(since=datetime.now(UTC) - timedelta(hours=24))).statement
        ),
    )
    yield (
        "latest ok run (failing source)",
        fetch(
            engine,
            "SELECT finished_at FROM sync_runs WHERE source = :s AND outcome = 'ok'"
            " ORDER BY id DESC LIMIT 1",
            {"s": failing},
        ),
    )

    yield "latest ok run of every source, one query", fetch(engine, LATEST_OK_OF_ALL)

    def history() -> object:
        with engine.connect() as conn:
            return outbox.source_history(conn, failing)

    yield "outbox.source_history (failing source)", history


def metrics_collection(engine: sa.Engine, sources: int) -> Callable[[], object]:
    configs = [
        SourceConfig(f"s{n:04d}", "moonshot", Secret("sk-none"), "http://127.0.0.1:9")
        for n in range(1, sources + 1)
    ]
    gauges = DatabaseGauges(engine, configs)
    return gauges.lines


NO_CHANGE_REPEAT = 15  # the two medians differ by a millisecond or two: more samples


def no_change_syncs(
    empty: sa.Engine, history: sa.Engine, sim: SimulatorProcess, name: str
) -> tuple[float, float]:
    """Median seconds of a no-change re-sync of a 1,000-file source named `name`, on an
    empty database and on the history, taken in turns so that both see the same load."""
    base_url = sim.load(LIVE_FILES)
    source = SourceConfig(
        name=name, provider="moonshot", api_key=Secret(API_KEY), base_url=base_url
    )
    times: dict[sa.Engine, list[float]] = {empty: [], history: []}
    for engine in times:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM files WHERE source = :s"), {"s": name})
        sync_source(engine, source, rules=SyncRules(), policy=HttpPolicy())
    for _ in range(NO_CHANGE_REPEAT):
        for engine, taken in times.items():
            started = time.perf_counter()
            result = sync_source(engine, source, rules=SyncRules(), policy=HttpPolicy())
            taken.append(time.perf_counter() - started)
            if result.counts.get("appeared") or result.error:
                raise RuntimeError(result.summary())
    return statistics.median(times[empty]), statistics.median(times[history])


def sizes(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> 'alembic_version'"
                " ORDER BY c.relname"
            )
        ).all()
        counts = {
            f"{name} rows": conn.execute(sa.text(f'SELECT count(*) FROM "{name}"')).scalar_one()
            for name, _ in rows
        }
    return {**{f"{name} bytes": size for name, size in rows}, **counts}


def prune_pass(engine: sa.Engine) -> tuple[float, str]:
    """One pass at the default retention (imported late: `--no-prune` runs on old code)."""
    retention = importlib.import_module("syncer.retention")
    policy = retention.RetentionPolicy()
    started = time.perf_counter()
    report = retention.prune(engine, policy)
    return time.perf_counter() - started, report.summary()


def bench_size(runs: int, args: argparse.Namespace, sim: SimulatorProcess, empty: sa.Engine,
               engine: sa.Engine) -> None:  # fmt: skip
    sources = args.sources or (50 if runs <= 1_000_000 else 1000)
    if sources < 10 or runs // sources < 320:
        raise SystemExit(f"--sizes {runs}, --sources {sources}: 10 sources, 320 runs each at least")
    started = time.perf_counter()
    with engine.connect() as conn:
        filled = conn.execute(sa.text("SELECT coalesce(max(id), 0) FROM sync_runs")).scalar_one()
    if filled >= runs:  # a database kept (--keep) from an earlier run
        print(f"\n== {runs:,} runs, {sources} sources: filled by an earlier run (--keep)")
    else:
        fill(engine, runs, sources)
        print(
            f"\n== {runs:,} runs, {sources} sources: filled in {time.perf_counter() - started:.0f}s"
        )
    before = sizes(engine)
    s = samples(engine, sources)
    results: dict[str, list[float]] = {}
    for name, run in queries(engine, s, analyst=not args.no_analyst):
        results[name] = [timed(run, args.repeat)]
    results["/metrics collection"] = [timed(metrics_collection(engine, sources), args.repeat)]
    # Printed now too: a prune of a big history under load can take long.
    for name, times in results.items():
        print(f"unpruned: {name[:62]:<62} {times[0] * 1000:>10.2f} ms")
    if not args.no_prune:
        seconds, summary = prune_pass(engine)
        print(f"prune pass: {seconds:.1f}s: {summary}")
        # Analyst queries read file_events, which run retention leaves alone.
        for name, run in queries(engine, s, analyst=False):
            results[name].append(timed(run, args.repeat))
        results["/metrics collection"].append(
            timed(metrics_collection(engine, sources), args.repeat)
        )
    empty_sync, sync = no_change_syncs(empty, engine, sim, "s0002")  # keeps s0001's files
    change = sync / empty_sync - 1
    print(
        f"no-change sync of {LIVE_FILES} files, median of {NO_CHANGE_REPEAT}:"
        f" {sync * 1000:.1f} ms (empty database, in turns: {empty_sync * 1000:.1f} ms,"
        f" {change:+.0%})"
    )
    head = f"{'ms, median of ' + str(args.repeat):<62} {'before':>10} {'pruned':>10}"
    print(head)
    print("-" * len(head))
    for name, times in results.items():
        cells = " ".join(f"{t * 1000:>10.2f}" for t in times)
        print(f"{name[:62]:<62} {cells}")
    print_sizes(engine, before, pruned=not args.no_prune)


def print_sizes(engine: sa.Engine, before: dict[str, int], *, pruned: bool) -> None:
    if not pruned:  # nothing to reclaim: the sizes as they were
        for key in sorted(before):
            print(f"{key:<32} {before[key]:>14,}")
        return
    vacuum(engine, "VACUUM ANALYZE")
    after = sizes(engine)
    vacuum(engine, "VACUUM FULL sync_runs, sync_run_daily, alerts")
    compacted = sizes(engine)
    print(f"{'table':<32} {'before':>14} {'pruned+VACUUM':>14} {'VACUUM FULL':>14}")
    for key in sorted(before.keys() | after.keys()):
        print(
            f"{key:<32} {before.get(key, 0):>14,} {after.get(key, 0):>14,}"
            f" {compacted.get(key, 0):>14,}"
        )


def fill_year(engine: sa.Engine, rates: Sequence[int], days: int) -> None:
    """A year (`days`) of runs at the default interval, one source per rate in `rates`."""
    runs_per_source = days * RUNS_PER_DAY
    params = {
        "names": [f"y{n:02d}-{rate}a-day" for n, rate in enumerate(rates, 1)],
        "rates": list(rates),
        "sources": len(rates),
        "runs_per_source": runs_per_source,
        "start": datetime.now(UTC) - timedelta(days=days),
        "interval": INTERVAL,
        "per_day": RUNS_PER_DAY,
        "outage_every": OUTAGE_EVERY,
        "outage_runs": OUTAGE_RUNS,
        "incomplete_every": INCOMPLETE_EVERY,
        "held_every": HELD_EVERY,
    }
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
        conn.execute(sa.text("TRUNCATE file_events, alerts, files, sync_runs, sync_run_daily"))
        indexes = conn.execute(SECONDARY_INDEXES).all()
        for name, _ in indexes:
            conn.execute(sa.text(f'DROP INDEX "{name}"'))
        for statement in (YEAR_RUNS, YEAR_EVENTS, YEAR_ALERTS):
            conn.execute(sa.text(statement), params)
        for _, definition in indexes:
            conn.execute(sa.text(definition))
        conn.execute(
            sa.text("SELECT setval(pg_get_serial_sequence('sync_runs', 'id'), :n)"),
            {"n": runs_per_source * len(rates)},
        )
    vacuum(engine, "VACUUM ANALYZE")


def runs_by_source(engine: sa.Engine) -> dict[str, tuple[int, int]]:
    """Runs of each source: all of them, and those that are not `ok`."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT source, count(*), count(*) FILTER (WHERE outcome <> 'ok')"
                " FROM sync_runs GROUP BY source ORDER BY source"
            )
        ).all()
    return {source: (total, not_ok) for source, total, not_ok in rows}


def runs_table_bytes(engine: sa.Engine) -> int:
    """`sync_runs` with its indexes, compacted (what the rows need, not what was freed)."""
    vacuum(engine, "VACUUM FULL sync_runs")
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT pg_total_relation_size('sync_runs')")).scalar_one())


def year_at_interval(engine: sa.Engine, args: argparse.Namespace) -> None:
    """What retention leaves of a year at the default interval; see the module docstring."""
    days, changes = args.year_days, args.year_changes
    sources = args.year_sources
    print(
        f"\n== a year at the default interval: {sources} sources x {days * RUNS_PER_DAY:,} runs"
        f" ({days} days, one run per {INTERVAL}s)\n"
        f"per source: {changes} change runs a day, an outage of {OUTAGE_RUNS} failed runs"
        f" (1 h) every {OUTAGE_EVERY // RUNS_PER_DAY} days, an incomplete run every"
        f" {INCOMPLETE_EVERY // RUNS_PER_DAY} days, a held run every"
        f" {HELD_EVERY // RUNS_PER_DAY} days; alerts on outages and held runs"
    )
    fill_year(engine, [changes] * sources, days)
    before = runs_by_source(engine)
    total = sum(n for n, _ in before.values())
    not_ok = sum(n for _, n in before.values())
    with engine.connect() as conn:
        events, alerts = conn.execute(
            sa.text("SELECT (SELECT count(*) FROM file_events), (SELECT count(*) FROM alerts)")
        ).one()
    bytes_before = runs_table_bytes(engine)
    print(
        f"filled: {total:,} runs ({not_ok:,} not ok), {events:,} events, {alerts:,} alerts;"
        f" sync_runs {bytes_before:,} bytes"
    )
    head = (
        f"{'after':<22} {'sync_runs rows':>15} {'kept':>7} {'bytes (VACUUM FULL)':>20} {'kept':>7}"
    )
    lines = [
        head,
        "-" * len(head),
        f"{'unpruned':<22} {total:>15,} {'100.0%':>7} {bytes_before:>20,} {'100.0%':>7}",
    ]
    for name in ("prune pass 1", "prune pass 2"):
        seconds, summary = prune_pass(engine)
        print(f"{name}: {seconds:.1f}s: {summary}")
        rows = sum(n for n, _ in runs_by_source(engine).values())
        size = runs_table_bytes(engine)
        lines.append(
            f"{name:<22} {rows:>15,} {rows / total:>7.1%} {size:>20,} {size / bytes_before:>7.1%}"
        )
    print("\n".join(lines))
    rates = [int(rate) for rate in args.year_rates.split(",") if rate]
    if not rates:
        return
    fill_year(engine, rates, days)
    before = runs_by_source(engine)
    prune_pass(engine)
    prune_pass(engine)
    after = runs_by_source(engine)
    head = f"{'change runs a day':>17} {'runs':>9} {'not ok':>7} {'kept':>9} {'kept %':>7}"
    print(f"\none source per rate, two prune passes\n{head}\n{'-' * len(head)}")
    for (source, (runs, failed)), rate in zip(before.items(), rates, strict=True):
        kept = after.get(source, (0, 0))[0]
        print(f"{rate:>17} {runs:>9,} {failed:>7,} {kept:>9,} {kept / runs:>7.1%}")


def vacuum(engine: sa.Engine, command: str) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("SET statement_timeout = 0"))
        conn.execute(sa.text(command))


@contextlib.contextmanager
def history_database(scratch_url: str, kept: str | None) -> Iterator[sa.Engine]:
    """A database for the history beside the (empty) scratch one, at head: `kept`,
    created if missing and left in place, or a scratch database dropped after."""
    server = sa.make_url(scratch_url).set(drivername="postgresql")
    admin = server.render_as_string(hide_password=False)
    with contextlib.ExitStack() as stack:
        if kept is None:
            url = stack.enter_context(ScratchDatabase(admin))
        else:
            with psycopg.connect(admin, autocommit=True) as conn:
                exists = "SELECT 1 FROM pg_database WHERE datname = %s"
                if conn.execute(exists, (kept,)).fetchone() is None:
                    create = psycopg.sql.SQL("CREATE DATABASE {}")
                    conn.execute(create.format(psycopg.sql.Identifier(kept)))
            url = server.set(database=kept).render_as_string(hide_password=False)
        engine = create_db_engine(Secret(url), lock_timeout=5)
        try:
            upgrade_to_head(engine)
            yield engine
        finally:
            engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        help="runs, comma-separated (default 1000000,10000000 without --year-at-interval)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement")
    parser.add_argument(
        "--sources", type=int, help="sources (default 50 up to 1M runs, 1,000 above)"
    )
    parser.add_argument("--no-prune", action="store_true", help="measure without pruning")
    parser.add_argument(
        "--no-analyst", action="store_true", help="skip the queries that fold every event"
    )
    parser.add_argument(
        "--year-at-interval",
        action="store_true",
        help="what retention leaves of a year at the default interval",
    )
    parser.add_argument("--year-sources", type=int, default=10, help="sources of that year")
    parser.add_argument("--year-days", type=int, default=365, help="its length in days")
    parser.add_argument(
        "--year-changes", type=int, default=4, help="change runs a day of each source"
    )
    parser.add_argument(
        "--year-rates",
        default="1,4,12,48",
        help="change runs a day, one source each, for the sensitivity table ('' skips it)",
    )
    parser.add_argument("--database-url", help="a server to create the scratch databases on")
    parser.add_argument(
        "--keep",
        metavar="DATABASE",
        help="fill this database (created on that server if missing) and keep it: a later"
        " run with the same name measures it without filling it again (one size only)",
    )
    args = parser.parse_args(argv)
    sizes = args.sizes or ("" if args.year_at_interval else "1000000,10000000")
    for runs in (int(size) for size in sizes.split(",") if size):
        with (
            bench_setup(args.database_url) as (empty, url, sim),
            history_database(url, args.keep) as history,
        ):
            bench_size(runs, args, sim, empty, history)
    if args.year_at_interval:
        with bench_setup(args.database_url) as (engine, _, _sim):
            year_at_interval(engine, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
