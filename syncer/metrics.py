"""Prometheus metrics: what this process did, and the inventory as the database has it.

Counters and the duration histogram describe this process (sum them across
replicas). Everything about the inventory, the last successful sync and the alert
outbox is read from the database at scrape time, so it is right after a restart and
identical on every replica.

The exposition (Prometheus' text format 0.0.4) is written here, not by
prometheus_client's registry: at 1000 sources a scrape has about 30,000 series, and
the registry builds a sample object, a label dict and an escaped label string for
each of them at every scrape (0.21 s at 1000 sources, plus 60 ms of gzip at level 9),
over the 0.2 s a whole scrape may take. Here each series' line up to its value is
built once, and a scrape formats only the numbers (docs/performance.md, "The
scheduler"). prometheus_client still formats every number, and its parser checks the
output in the tests.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

import sqlalchemy as sa
from prometheus_client import utils as prometheus_utils
from sqlalchemy.exc import SQLAlchemyError

from syncer.db import outbox
from syncer.db.engine import describe_db_error
from syncer.db.sources import Schedule
from syncer.db.sources import schedules as read_schedules
from syncer.model import EventKind, Outcome, StatusClass

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from syncer.config import SourceConfig
    from syncer.sync import RunResult

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SCRAPE_STATEMENT_TIMEOUT = "5s"
# Why a due sync did not run or could not record its run (syncer_sync_skipped_total):
# its lease passed to another replica during the fetch (the listing was dropped); even
# its failed run could not be written (the database was away); a bug.
SKIP_REASONS = ("lease_lost", "unrecorded", "error")
# Few buckets: with 1000 sources every line per source is 1000 lines of every scrape.
_DURATION_BUCKETS = (0.25, 1.0, 5.0, 30.0, 120.0, float("inf"))
_OUTCOMES = tuple(outcome.value for outcome in Outcome)
_KINDS = tuple(kind.value for kind in EventKind)
_CLASSES = tuple(status_class.value for status_class in StatusClass)

Labels = tuple[tuple[str, str], ...]
# How Prometheus writes a number (1.0, +Inf, 1.7e+09); untyped in prometheus_client.
_number = cast("Callable[[float], str]", prometheus_utils.floatToGoString)
_BOUNDS = tuple(_number(bound) for bound in _DURATION_BUCKETS)  # the `le` labels


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Family:
    """One metric family: its header, and every series' line up to its value, built once.

    Label values are the keys of the cache: sources, outcomes, classes and states,
    a few thousand lines' beginnings however long the process runs.
    """

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        escaped_help = help_text.replace("\\", r"\\").replace("\n", r"\n")
        self.header = f"# HELP {name} {escaped_help}\n# TYPE {name} {kind}\n"
        self._starts: dict[tuple[str, Labels], str] = {}

    def line(self, labels: Labels, value: float, suffix: str = "") -> str:
        start = self._starts.get((suffix, labels))
        if start is None:
            # Label names sorted, as prometheus_client writes them.
            pairs = ",".join(f'{name}="{_escape(text)}"' for name, text in sorted(labels))
            start = f"{self.name}{suffix}{{{pairs}}} " if pairs else f"{self.name}{suffix} "
            self._starts[suffix, labels] = start
        return f"{start}{_number(value)}\n"


_RUNS = _Family(
    "syncer_sync_runs_total", "counter", "Syncs this process ran, by source and outcome."
)
_DURATION = _Family(
    "syncer_sync_duration_seconds", "histogram", "How long one sync took, fetch and write together."
)
_EVENTS = _Family(
    "syncer_file_events_total", "counter", "File events this process recorded, by source and kind."
)
_SKIPPED = _Family(
    "syncer_sync_skipped_total",
    "counter",
    "Due syncs that did not run or could not record their run, by reason.",
)
_INTERVAL = _Family(
    "syncer_source_interval_seconds", "gauge", "Configured seconds between syncs of a source."
)
_DATABASE_UP = _Family(
    "syncer_database_up", "gauge", "1 if the database answered this scrape, else 0."
)
_FILES = _Family("syncer_files", "gauge", "Files present at the provider.")
_BYTES = _Family("syncer_file_bytes", "gauge", "Bytes of the files present at the provider.")
_LAST_SUCCESS = _Family(
    "syncer_last_success_timestamp_seconds",
    "gauge",
    "When the source's last `ok` sync finished (Unix time).",
)
_LAG = _Family(
    "syncer_source_lag_seconds",
    "gauge",
    "How far past its due time a source is (0 when not due yet); a sync in "
    "progress counts as late until it is written.",
)
_ALERTS = _Family("syncer_alerts", "gauge", "Alerts in the outbox, by state.")
_OLDEST_PENDING = _Family(
    "syncer_alerts_oldest_pending_age_seconds",
    "gauge",
    "Age of the oldest undelivered (pending) alert; 0 when there is none.",
)


class _SourceCounts:
    """What this process counted for one source."""

    __slots__ = ("buckets", "duration_sum", "events", "runs", "skipped")

    def __init__(self) -> None:
        self.runs = dict.fromkeys(_OUTCOMES, 0)
        self.events = dict.fromkeys(_KINDS, 0)
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.buckets = [0] * len(_DURATION_BUCKETS)  # cumulative: observations <= bound
        self.duration_sum = 0.0

    def copy(self) -> _SourceCounts:
        copied = _SourceCounts()
        copied.runs = self.runs.copy()
        copied.events = self.events.copy()
        copied.skipped = self.skipped.copy()
        copied.buckets = self.buckets.copy()
        copied.duration_sum = self.duration_sum
        return copied


class Metrics:
    """The metrics `syncer run` serves on /metrics."""

    def __init__(self, engine: sa.Engine, sources: Sequence[SourceConfig]) -> None:
        self._lock = threading.Lock()
        # Every configured source's series exist from the start at 0, so rate() and
        # increase() see the first sync, and `== 0` queries work.
        self._counts = {source.name: _SourceCounts() for source in sources}
        self._database = DatabaseGauges(engine, sources)

    def record_run(self, result: RunResult) -> None:
        with self._lock:
            counts = self._source(result.source)
            counts.runs[result.outcome.value] += 1
            counts.duration_sum += result.seconds
            for index, bound in enumerate(_DURATION_BUCKETS):
                if result.seconds <= bound:
                    counts.buckets[index] += 1
            for kind, count in result.counts.items():
                if kind in counts.events:
                    counts.events[kind] += count

    def record_skipped(self, source: str, reason: str) -> None:
        """A due sync that did not run, or ran and could not be recorded (SKIP_REASONS)."""
        with self._lock:
            self._source(source).skipped[reason] += 1

    def _source(self, name: str) -> _SourceCounts:
        counts = self._counts.get(name)
        if counts is None:
            counts = self._counts[name] = _SourceCounts()
        return counts

    def exposition(self) -> bytes:
        """The text a scrape returns: the database's gauges, then this process' counts."""
        with self._lock:
            counts = sorted((name, source.copy()) for name, source in self._counts.items())
        lines = self._database.lines()
        lines.extend(_count_lines(counts))
        return "".join(lines).encode()


def _count_lines(counts: Sequence[tuple[str, _SourceCounts]]) -> list[str]:
    lines = _labelled_lines(_RUNS, "outcome", [(name, source.runs) for name, source in counts])
    lines.append(_DURATION.header)
    for name, source in counts:
        lines.extend(
            _DURATION.line((("source", name), ("le", bound)), observed, "_bucket")
            for bound, observed in zip(_BOUNDS, source.buckets, strict=True)
        )
        lines.append(_DURATION.line((("source", name),), source.buckets[-1], "_count"))
        lines.append(_DURATION.line((("source", name),), source.duration_sum, "_sum"))
    lines += _labelled_lines(_EVENTS, "kind", [(name, source.events) for name, source in counts])
    lines += _labelled_lines(
        _SKIPPED, "reason", [(name, source.skipped) for name, source in counts]
    )
    return lines


def _labelled_lines(
    family: _Family, label: str, totals: Sequence[tuple[str, dict[str, int]]]
) -> list[str]:
    """A counter per source and `label` value: its header, then every source's series."""
    lines = [family.header]
    for name, by_value in totals:
        lines.extend(
            family.line((("source", name), (label, value)), total)
            for value, total in by_value.items()
        )
    return lines


@dataclass(frozen=True)
class _DatabaseReading:
    inventory: Sequence[tuple[str, str, str, int, int]]
    last_ok: Sequence[tuple[str, datetime]]
    schedules: Sequence[Schedule]
    alerts: dict[str, int]
    oldest_pending: datetime | None


class DatabaseGauges:
    """Gauges read from the database at every scrape: a handful of statements, none per source."""

    def __init__(self, engine: sa.Engine, sources: Sequence[SourceConfig]) -> None:
        self._engine = engine
        self._sources = tuple(sources)

    def lines(self) -> list[str]:
        lines = [_INTERVAL.header]
        lines.extend(
            _INTERVAL.line((("source", source.name),), source.interval) for source in self._sources
        )
        lines.append(_DATABASE_UP.header)
        try:
            reading = self.read()
        except SQLAlchemyError as error:
            log.warning("metrics: database unavailable: %s", describe_db_error(error))
            lines.append(_DATABASE_UP.line((), 0))
            return lines
        lines.append(_DATABASE_UP.line((), 1))
        lines.extend(self._reading_lines(reading))
        return lines

    def read(self) -> _DatabaseReading:
        with self._engine.begin() as conn:
            conn.execute(
                sa.select(
                    sa.func.set_config("statement_timeout", _SCRAPE_STATEMENT_TIMEOUT, sa.true())
                )
            )
            inventory = conn.execute(
                sa.text(
                    "SELECT source, provider, status_class, files, bytes FROM inventory_summary"
                )
            )
            return _DatabaseReading(
                inventory=[tuple(row) for row in inventory],
                last_ok=_last_ok(conn, [source.name for source in self._sources]),
                schedules=read_schedules(conn),
                alerts=outbox.count_by_state(conn),
                oldest_pending=outbox.oldest_pending_created_at(conn),
            )

    def _reading_lines(self, reading: _DatabaseReading) -> Iterable[str]:
        # Configured sources report every class, 0 included, so `== 0` queries work.
        inventory: dict[tuple[str, str, str], tuple[int, int]] = {
            (source.name, source.provider, status_class): (0, 0)
            for source in self._sources
            for status_class in _CLASSES
        }
        for source, provider, status_class, files, size in reading.inventory:
            inventory[source, provider, status_class] = (files, size)
        groups = sorted(inventory.items())
        labelled = [
            ((("source", s), ("provider", p), ("status_class", c)), totals)
            for (s, p, c), totals in groups
        ]
        yield _FILES.header
        yield from (_FILES.line(labels, files) for labels, (files, _) in labelled)
        yield _BYTES.header
        yield from (_BYTES.line(labels, size) for labels, (_, size) in labelled)
        yield _LAST_SUCCESS.header
        for name, finished_at in reading.last_ok:
            yield _LAST_SUCCESS.line((("source", name),), finished_at.timestamp())
        yield _LAG.header
        for schedule in reading.schedules:
            yield _LAG.line((("source", schedule.name),), schedule.lag_seconds)
        yield _ALERTS.header
        for state, count in reading.alerts.items():
            yield _ALERTS.line((("state", state),), count)
        yield _OLDEST_PENDING.header
        oldest = reading.oldest_pending
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0
        yield _OLDEST_PENDING.line((), age)


# One statement for every source: per source, newest first along the (source, id)
# index, stopping at its first ok run.
_LAST_OK = sa.text(
    """
    SELECT wanted.source, last.finished_at
    FROM unnest(CAST(:sources AS text[])) AS wanted (source)
    CROSS JOIN LATERAL (
        SELECT finished_at FROM sync_runs
        WHERE sync_runs.source = wanted.source AND outcome = 'ok'
        ORDER BY id DESC LIMIT 1
    ) AS last
    """
)


def _last_ok(conn: sa.Connection, names: Sequence[str]) -> list[tuple[str, datetime]]:
    rows = conn.execute(_LAST_OK, {"sources": list(names)})
    return [(row.source, row.finished_at) for row in rows if row.finished_at is not None]
