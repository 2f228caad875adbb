"""Prometheus metrics: what this process did, and the inventory as the database has it.

Counters and the duration histogram describe this process (sum them across
replicas). Everything about the inventory, the last successful sync and the alert
outbox is read from the database at scrape time, so it is right after a restart and
identical on every replica.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from syncer.db import outbox
from syncer.db.engine import describe_db_error
from syncer.db.sources import schedules as read_schedules
from syncer.model import EventKind, Outcome, StatusClass

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from syncer.config import SourceConfig
    from syncer.sync import RunResult

log = logging.getLogger(__name__)

_SCRAPE_STATEMENT_TIMEOUT = "5s"
# Why a due sync did not run or could not record its run (syncer_sync_skipped_total):
# its lease passed to another replica during the fetch (the listing was dropped); even
# its failed run could not be written (the database was away); a bug.
SKIP_REASONS = ("lease_lost", "unrecorded", "error")
# Few buckets and no `_created` series: with 1000 sources every line per source is
# 1000 lines of every scrape (docs/performance.md, "The scheduler").
_DURATION_BUCKETS = (0.25, 1, 5, 30, 120, float("inf"))


class Metrics:
    """The metrics `syncer run` serves on /metrics."""

    def __init__(self, engine: sa.Engine, sources: Sequence[SourceConfig]) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call] # untyped in prometheus_client
        self.registry = CollectorRegistry()
        self._sync_runs = Counter(
            "syncer_sync_runs",
            "Syncs this process ran, by source and outcome.",
            ["source", "outcome"],
            registry=self.registry,
        )
        self._sync_duration = Histogram(
            "syncer_sync_duration_seconds",
            "How long one sync took, fetch and write together.",
            ["source"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self._file_events = Counter(
            "syncer_file_events",
            "File events this process recorded, by source and kind.",
            ["source", "kind"],
            registry=self.registry,
        )
        self._sync_skipped = Counter(
            "syncer_sync_skipped",
            "Due syncs that did not run or could not record their run, by reason.",
            ["source", "reason"],
            registry=self.registry,
        )
        # Every series exists from the start at 0, so rate() and absent() behave.
        for source in sources:
            for reason in SKIP_REASONS:
                self._sync_skipped.labels(source.name, reason)
            for outcome in Outcome:
                self._sync_runs.labels(source.name, outcome.value)
            for kind in EventKind:
                self._file_events.labels(source.name, kind.value)
            self._sync_duration.labels(source.name)
        self.registry.register(DatabaseCollector(engine, sources))

    def record_run(self, result: RunResult) -> None:
        self._sync_runs.labels(result.source, result.outcome.value).inc()
        self._sync_duration.labels(result.source).observe(result.seconds)
        for kind in EventKind:
            count = result.counts.get(kind.value, 0)
            if count:
                self._file_events.labels(result.source, kind.value).inc(count)

    def record_skipped(self, source: str, reason: str) -> None:
        """A due sync that did not run, or ran and could not be recorded (SKIP_REASONS)."""
        self._sync_skipped.labels(source, reason).inc()


class DatabaseCollector(Collector):
    """Gauges read from the database at every scrape."""

    def __init__(self, engine: sa.Engine, sources: Sequence[SourceConfig]) -> None:
        self._engine = engine
        self._sources = tuple(sources)

    def collect(self) -> Iterator[Metric]:
        interval = GaugeMetricFamily(
            "syncer_source_interval_seconds",
            "Configured seconds between syncs of a source.",
            labels=["source"],
        )
        for source in self._sources:
            interval.add_metric([source.name], source.interval)
        yield interval
        up = GaugeMetricFamily(
            "syncer_database_up", "1 if the database answered this scrape, else 0."
        )
        try:
            gauges = list(self._read_database())
        except SQLAlchemyError as error:
            log.warning("metrics: database unavailable: %s", describe_db_error(error))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from gauges

    def _read_database(self) -> Iterator[Metric]:
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
            ).all()
            last_ok = _last_ok(conn, [source.name for source in self._sources])
            schedules = read_schedules(conn)
            alert_counts = outbox.count_by_state(conn)
            oldest_pending = outbox.oldest_pending_created_at(conn)
        yield from _inventory_gauges(inventory, self._sources)
        success = GaugeMetricFamily(
            "syncer_last_success_timestamp_seconds",
            "When the source's last `ok` sync finished (Unix time).",
            labels=["source"],
        )
        for name, finished_at in last_ok:
            success.add_metric([name], finished_at.timestamp())
        yield success
        lag = GaugeMetricFamily(
            "syncer_source_lag_seconds",
            "How far past its due time a source is (0 when not due yet); a sync in "
            "progress counts as late until it is written.",
            labels=["source"],
        )
        for schedule in schedules:
            lag.add_metric([schedule.name], schedule.lag_seconds)
        yield lag
        alerts = GaugeMetricFamily(
            "syncer_alerts", "Alerts in the outbox, by state.", labels=["state"]
        )
        for state, count in alert_counts.items():
            alerts.add_metric([state], count)
        yield alerts
        age = GaugeMetricFamily(
            "syncer_alerts_oldest_pending_age_seconds",
            "Age of the oldest undelivered (pending) alert; 0 when there is none.",
        )
        age.add_metric(
            [], (datetime.now(UTC) - oldest_pending).total_seconds() if oldest_pending else 0
        )
        yield age


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


def _inventory_gauges(
    inventory: Sequence[sa.Row[Any]],
    sources: Sequence[SourceConfig],
) -> Iterator[Metric]:
    labels = ["source", "provider", "status_class"]
    files = GaugeMetricFamily("syncer_files", "Files present at the provider.", labels=labels)
    size = GaugeMetricFamily(
        "syncer_file_bytes", "Bytes of the files present at the provider.", labels=labels
    )
    # Configured sources report every class, 0 included, so `== 0` queries work.
    counts: dict[tuple[str, str, str], tuple[int, int]] = {
        (source.name, source.provider, status_class.value): (0, 0)
        for source in sources
        for status_class in StatusClass
    }
    for row in inventory:
        counts[row.source, row.provider, row.status_class] = (row.files, row.bytes)
    for key, (file_count, byte_count) in sorted(counts.items()):
        files.add_metric(list(key), file_count)
        size.add_metric(list(key), byte_count)
    yield files
    yield size
