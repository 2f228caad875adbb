"""/metrics: what a scrape says, read by Prometheus' own parser, and the counts behind it.

The exposition is written by syncer.metrics, not by prometheus_client's registry (too
slow at 1000 sources), so these tests hold it to what the registry would have said for
the same numbers, and `inventory_counts` (kept by triggers) to what adding up `files`
gives after every kind of write.
"""

from __future__ import annotations

import gzip
import logging
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from conftest import assert_inventory_counts_match_files, make_source
from fakes import ScriptedMoonshot
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from syncer.db import sources
from syncer.metrics import SKIP_REASONS, Metrics
from syncer.model import EventKind, Outcome, StatusClass
from syncer.sync import RunResult, sync_source
from syncer.web import make_app

KEY = "sk-metrics-test-key-0123456789abcdef"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(exposition: bytes | str) -> Samples:
    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(parsed: Samples, name: str, **labels: str) -> float:
    return parsed[name, frozenset(labels.items())]


def source_named(name: str) -> Any:
    return make_source(name, "moonshot", "https://api.moonshot.test/v1", KEY)


def run_result(source: str, outcome: Outcome, seconds: float, **counts: int) -> RunResult:
    return RunResult(source, outcome, run_id=None, seconds=seconds, counts=counts)


def test_process_counts_are_what_prometheus_client_would_expose(engine):
    """The same runs counted by prometheus_client's own Counter and Histogram (as the
    metrics were before) and by syncer: a scrape of each says the same."""
    names = ["kimi", "moon-2", "zeta"]
    metrics = Metrics(engine, [source_named(name) for name in names])
    registry = CollectorRegistry()
    runs = Counter("syncer_sync_runs", "", ["source", "outcome"], registry=registry)
    duration = Histogram(
        "syncer_sync_duration_seconds",
        "",
        ["source"],
        buckets=(0.25, 1, 5, 30, 120, float("inf")),
        registry=registry,
    )
    events = Counter("syncer_file_events", "", ["source", "kind"], registry=registry)
    skipped = Counter("syncer_sync_skipped", "", ["source", "reason"], registry=registry)
    for name in names:
        for outcome in Outcome:
            runs.labels(name, outcome.value)
        for kind in EventKind:
            events.labels(name, kind.value)
        for reason in SKIP_REASONS:
            skipped.labels(name, reason)
        duration.labels(name)
    results = [
        run_result("kimi", Outcome.OK, 0.2, appeared=3, status_changed=1),
        run_result("kimi", Outcome.OK, 0.25),
        run_result("kimi", Outcome.FAILED, 31.5),
        run_result("zeta", Outcome.HELD, 200.0, disappearances_held=12, files_listed=7),
        run_result("zeta", Outcome.INCOMPLETE, 4.99, expired=2),
    ]
    for result in results:
        metrics.record_run(result)
        runs.labels(result.source, result.outcome.value).inc()
        duration.labels(result.source).observe(result.seconds)
        for kind in EventKind:
            if result.counts.get(kind.value):
                events.labels(result.source, kind.value).inc(result.counts[kind.value])
    for source, reason in [("moon-2", "lease_lost"), ("moon-2", "lease_lost"), ("kimi", "error")]:
        metrics.record_skipped(source, reason)
        skipped.labels(source, reason).inc()

    ours = samples(metrics.exposition())
    theirs = {  # `_created` series: syncer leaves them out (1000 lines more per family)
        key: number
        for key, number in samples(generate_latest(registry)).items()
        if not key[0].endswith("_created")
    }

    assert {key: ours.get(key) for key in theirs} == theirs
    assert len(theirs) == 3 * (len(Outcome) + len(EventKind) + len(SKIP_REASONS) + 8)
    assert value(ours, "syncer_sync_skipped_total", source="moon-2", reason="lease_lost") == 2
    assert value(ours, "syncer_sync_duration_seconds_bucket", source="kimi", le="0.25") == 2
    assert value(ours, "syncer_sync_duration_seconds_count", source="zeta") == 2


def test_every_configured_source_has_every_series_from_the_first_scrape(engine):
    metrics = Metrics(engine, [source_named("kimi")])

    parsed = samples(metrics.exposition())

    for outcome in Outcome:
        assert value(parsed, "syncer_sync_runs_total", source="kimi", outcome=outcome) == 0
    for kind in EventKind:
        assert value(parsed, "syncer_file_events_total", source="kimi", kind=kind) == 0
    for reason in SKIP_REASONS:
        assert value(parsed, "syncer_sync_skipped_total", source="kimi", reason=reason) == 0
    for status_class in StatusClass:
        labels = {"source": "kimi", "provider": "moonshot", "status_class": status_class}
        assert value(parsed, "syncer_files", **labels) == 0
        assert value(parsed, "syncer_file_bytes", **labels) == 0
    assert value(parsed, "syncer_source_interval_seconds", source="kimi") == 300
    assert value(parsed, "syncer_database_up") == 1


def test_inventory_gauges_follow_syncs_and_lag_and_last_success_come_from_the_database(
    engine, rules, policy
):
    fake = ScriptedMoonshot(KEY)
    kimi = source_named("kimi")
    with engine.begin() as conn:
        sources.register(conn, [kimi])
    metrics = Metrics(engine, [kimi])

    def sync() -> RunResult:
        return sync_source(
            engine, kimi, rules=rules, policy=policy, transport=httpx.MockTransport(fake.handler)
        )

    fake.add("a", "ok", bytes=100)
    fake.add("b", "error", bytes=20)
    fake.add("c", "processing", bytes=3)
    assert sync().outcome is Outcome.OK
    first = samples(metrics.exposition())
    fake.items["c"]["status"] = "ok"
    del fake.items["b"]
    fake.add("d", "ok", bytes=4000)
    assert sync().outcome is Outcome.OK
    second = samples(metrics.exposition())

    def inventory(parsed: Samples, status_class: str) -> tuple[float, float]:
        labels = {"source": "kimi", "provider": "moonshot", "status_class": status_class}
        return value(parsed, "syncer_files", **labels), value(parsed, "syncer_file_bytes", **labels)

    assert [inventory(first, c) for c in ("ready", "failed", "pending")] == [
        (1, 100),
        (1, 20),
        (1, 3),
    ]
    assert [inventory(second, c) for c in ("ready", "failed", "pending")] == [
        (3, 4103),
        (0, 0),
        (0, 0),
    ]
    with engine.connect() as conn:
        finished_at = conn.execute(
            sa.text("SELECT max(finished_at) FROM sync_runs WHERE outcome = 'ok'")
        ).scalar_one()
    assert value(second, "syncer_last_success_timestamp_seconds", source="kimi") == (
        pytest.approx(finished_at.timestamp())
    )
    assert value(second, "syncer_source_lag_seconds", source="kimi") >= 0


def test_a_scrape_without_the_database_still_serves_what_the_process_counted(caplog):
    engine = sa.create_engine("postgresql+psycopg://syncer:hunter2-secret@127.0.0.1:9/none")
    metrics = Metrics(engine, [source_named("kimi")])
    metrics.record_run(run_result("kimi", Outcome.OK, 0.5))

    with caplog.at_level(logging.WARNING):
        parsed = samples(metrics.exposition())

    assert value(parsed, "syncer_database_up") == 0
    assert value(parsed, "syncer_sync_runs_total", source="kimi", outcome="ok") == 1
    assert not any(name == "syncer_files" for name, _ in parsed)
    assert [record.getMessage() for record in caplog.records if "metrics" in record.name] != []
    assert "hunter2-secret" not in caplog.text
    assert all(record.exc_info is None for record in caplog.records)


def test_label_values_are_escaped_as_the_text_format_requires(engine):
    """A source name is the operator's text: quotes, backslashes and newlines in it
    must not break the exposition (only the parser can tell)."""
    with engine.begin() as conn:
        insert_file(conn, 'odd "name"\\ with\nnewline', "f", "ready", 5)

    parsed = samples(Metrics(engine, []).exposition())

    labels = {"source": 'odd "name"\\ with\nnewline', "provider": "moonshot"}
    assert value(parsed, "syncer_files", status_class="ready", **labels) == 1
    assert value(parsed, "syncer_file_bytes", status_class="ready", **labels) == 5


def call(app: Any, **environ: str) -> tuple[str, dict[str, str], bytes]:
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer.update(status=status, headers=dict(headers))

    body = b"".join(app({"PATH_INFO": "/metrics", **environ}, start_response))
    return answer["status"], answer["headers"], body


def test_metrics_are_gzipped_only_for_a_client_that_asks(engine):
    metrics = Metrics(engine, [source_named("kimi")])
    app = make_app(alive=lambda: None, ready=lambda: None, metrics=metrics.exposition)

    status, headers, plain = call(app)
    _, zipped_headers, zipped = call(app, HTTP_ACCEPT_ENCODING="gzip, deflate")

    assert status == "200 OK"
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "Content-Encoding" not in headers
    assert zipped_headers["Content-Encoding"] == "gzip"
    assert samples(gzip.decompress(zipped)) == samples(plain)


def count_rows(engine) -> dict[tuple[str, str], tuple[int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT source, status_class, files, bytes FROM inventory_summary")
        )
        return {(r.source, r.status_class): (r.files, r.bytes) for r in rows}


def insert_file(conn: sa.Connection, source: str, file_id: str, status_class: str, size: int):
    conn.execute(
        sa.text(
            "INSERT INTO files (source, file_id, provider, filename, purpose, bytes, status_class,"
            " created_at, first_seen_at, changed_at, raw)"
            " VALUES (:s, :f, 'moonshot', :f, 'p', :b, :c, now(), now(), now(), '{}')"
            " ON CONFLICT (source, file_id) DO UPDATE"
            " SET status_class = excluded.status_class, bytes = excluded.bytes"
        ),
        {"s": source, "f": file_id, "c": status_class, "b": size},
    )


def test_inventory_counts_follow_every_kind_of_write_to_files(engine):
    steps: list[tuple[str, dict[tuple[str, str], tuple[int, int]]]] = []
    with engine.begin() as conn:
        insert_file(conn, "a", "1", "ready", 10)
        insert_file(conn, "a", "2", "ready", 5)
        insert_file(conn, "b", "1", "failed", 7)
    steps.append(("insert", count_rows(engine)))
    with engine.begin() as conn:
        insert_file(conn, "a", "2", "failed", 6)  # upsert: class and size change
        conn.execute(sa.text("UPDATE files SET missing_count = 1 WHERE source = 'a'"))
    steps.append(("upsert", count_rows(engine)))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE files SET deleted_at = now() WHERE file_id = '1'"))
    steps.append(("gone", count_rows(engine)))
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM files WHERE deleted_at IS NOT NULL"))
        conn.execute(sa.text("DELETE FROM files WHERE source = 'a'"))
    steps.append(("delete", count_rows(engine)))
    with engine.begin() as conn:
        insert_file(conn, "c", "1", "pending", 1)
        conn.execute(sa.text("TRUNCATE files"))
    steps.append(("truncate", count_rows(engine)))
    with engine.begin() as conn:
        insert_file(conn, "d", "1", "unknown", 2)
        conn.execute(sa.text("UPDATE files SET bytes = 0"))
    with engine.connect() as conn:  # one more file, then a statement that fails: rolled back
        insert_file(conn, "d", "2", "ready", 9)
        with pytest.raises(sa.exc.IntegrityError):
            conn.execute(sa.text("INSERT INTO files SELECT * FROM files"))
        conn.rollback()
    steps.append(("rolled back", count_rows(engine)))

    assert steps == [
        ("insert", {("a", "ready"): (2, 15), ("b", "failed"): (1, 7)}),
        ("upsert", {("a", "ready"): (1, 10), ("a", "failed"): (1, 6), ("b", "failed"): (1, 7)}),
        ("gone", {("a", "failed"): (1, 6)}),
        ("delete", {}),
        ("truncate", {}),
        ("rolled back", {("d", "unknown"): (1, 0)}),
    ]
    assert_inventory_counts_match_files(engine)
