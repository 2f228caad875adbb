"""`syncer files`, `syncer events`, `syncer runs`: filters, formats and streaming.

Most tests run the click commands in-process against the seeded history of
test_reporting_seed.py; the end-to-end tests run `python -m syncer` against the
simulator, as a user would.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from test_reporting_seed import rows, seeded_database  # noqa: F401 - a fixture, used as `seeded`

from syncer.cli import cli
from syncer.reports import Filters, Format, files_report, parse_since, print_report, write_report
from syncer.simulator import Simulator

FILE_KEYS = [
    "source",
    "file_id",
    "provider",
    "filename",
    "purpose",
    "bytes",
    "line_count",
    "status",
    "status_details",
    "status_class",
    "created_at",
    "first_seen_at",
    "changed_at",
    "deleted_at",
    "expires_at",
]


@pytest.fixture
def report(seeded, monkeypatch, tmp_path):
    """Runs `syncer <args>` in-process against the seeded database; returns stdout."""
    for name in list(os.environ):
        if name.startswith(("SYNCER_", "SILICONFLOW_", "MOONSHOT_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("SYNCER_DATABASE_URL", seeded.url)
    monkeypatch.chdir(tmp_path)  # no stray .env
    # In-process, syncer's logging setup would replace pytest's handlers on the root logger.
    monkeypatch.setattr("syncer.cli.configure_logging", lambda *_: None)

    def run(*args: str, exit_code: int = 0) -> str:
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == exit_code, result.output
        # Not result.stdout: click turns its CRLF line ends, which CSV needs, into LF.
        return result.stdout_bytes.decode() if exit_code == 0 else result.stderr

    return run


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def ids(records: list[dict[str, Any]]) -> list[str]:
    return [record["file_id"] for record in records]


def test_files_as_json_lines_have_every_column_in_order_and_utc_iso_times(report, seeded):
    records = json_lines(report("files", "--source", "kimi", "--format", "json"))

    assert ids(records) == ["k1", "k2", "k4", "k5", "k6", "k7", "k8", "k9"]
    assert all(list(record) == FILE_KEYS for record in records)
    k4 = records[2]
    assert k4 == {
        "source": "kimi",
        "file_id": "k4",
        "provider": "moonshot",
        "filename": "big.pdf",
        "purpose": "file-extract",
        "bytes": 50_000_000,
        "line_count": None,
        "status": "error",
        "status_details": "file content is empty",
        "status_class": "failed",
        "created_at": (seeded.t10 - timedelta(hours=4)).isoformat(),
        "first_seen_at": seeded.t10.isoformat(),
        "changed_at": seeded.t10.isoformat(),
        "deleted_at": None,
        "expires_at": None,
    }
    assert k4["changed_at"].endswith("+00:00")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--status-class", "failed"), ["k4", "k7"]),
        (("--status-class", "failed", "--status-class", "pending"), ["k4", "k7", "k9"]),
        (("--provider", "siliconflow"), ["s1", "s3", "s4"]),
        (("--source", "sf", "--source", "kimi-b"), ["b1", "s1", "s3", "s4"]),
        (("--since", "4d"), ["k1", "k2", "k6", "k7", "k9"]),
        (("--source", "sf", "--include-deleted"), ["s1", "s2", "s3", "s4"]),
        (("--source", "kimi", "--include-deleted", "--status-class", "failed"), ["k3", "k4", "k7"]),
        (("--limit", "2"), ["k1", "k2"]),
    ],
)
def test_files_filters(report, args, expected):
    assert ids(json_lines(report("files", *args, "--format", "json"))) == expected


def test_files_since_an_iso_time_without_a_zone_is_utc(report, seeded):
    naive = (seeded.t3 - timedelta(minutes=1)).replace(tzinfo=None).isoformat()
    zoned = (seeded.t3 + timedelta(minutes=1)).astimezone(UTC).isoformat()

    assert ids(json_lines(report("files", "--since", naive, "--format", "json"))) == [
        "k1",
        "k2",
        "k6",
        "k7",
        "k9",
    ]
    assert ids(json_lines(report("files", "--since", zoned, "--format", "json"))) == ["k7"]


def test_files_as_csv_is_rfc_4180_with_a_header(report, seeded):
    text = report("files", "--source", "sf", "--include-deleted", "--format", "csv")

    assert text.endswith("\r\n")
    assert "\n" not in text.replace("\r\n", "")
    table = list(csv.reader(io.StringIO(text, newline="")))
    assert table[0] == FILE_KEYS
    assert [line[1] for line in table[1:]] == ["s1", "s2", "s3", "s4"]
    s2 = dict(zip(FILE_KEYS, table[2], strict=True))
    assert s2["deleted_at"] == seeded.t5.isoformat()
    assert s2["status"] == ""  # NULL
    assert s2["line_count"] == "20"


def test_piped_table_is_tab_separated_with_a_header(report):
    lines = report("files", "--source", "sf").splitlines()

    assert lines[0].split("\t") == [
        "source",
        "file_id",
        "filename",
        "purpose",
        "bytes",
        "status",
        "status_class",
        "changed_at",
    ]
    assert lines[1].split("\t")[:7] == ["sf", "s1", "batch-a.jsonl", "batch", "12000", "", "ready"]
    assert len(lines) == 4


def test_events_newest_first_with_kind_file_and_limit_filters(report):
    gone = json_lines(report("events", "--kind", "disappeared", "--format", "json"))
    assert [(e["source"], e["file_id"]) for e in gone] == [
        ("sf", "s2"),
        ("kimi", "k3"),
        ("kimi", "k2"),
    ]
    assert [e["id"] for e in gone] == sorted((e["id"] for e in gone), reverse=True)

    latest_two = json_lines(report("events", "--file", "k2", "--limit", "2", "--format", "json"))
    assert [e["kind"] for e in latest_two] == ["reappeared", "disappeared"]
    assert latest_two[1]["changes"] == {}


def test_events_by_the_status_class_they_left_the_file_in(report):
    failed = json_lines(report("events", "--status-class", "failed", "--format", "json"))

    assert [(e["file_id"], e["kind"]) for e in failed] == [
        ("k7", "appeared"),
        ("k8", "appeared"),
        ("k3", "status_changed"),
        ("k4", "appeared"),
    ]
    ready_sf = json_lines(
        report("events", "--provider", "siliconflow", "--status-class", "ready", "--format", "json")
    )
    assert [(e["file_id"], e["kind"]) for e in ready_sf] == [
        ("s4", "appeared"),
        ("s1", "changed"),
        ("s3", "appeared"),
        ("s2", "appeared"),
        ("s1", "appeared"),
    ]


def test_events_as_csv_carry_changes_as_json(report):
    text = report("events", "--kind", "changed", "--format", "csv")
    header, row = list(csv.reader(io.StringIO(text, newline="")))

    record = dict(zip(header, row, strict=True))
    assert record["file_id"] == "s1"
    assert json.loads(record["changes"]) == {"bytes": [10_000, 12_000], "line_count": [10, 12]}
    assert record["old_status"] == record["new_status"] == ""


def test_events_since_a_duration(report, seeded):
    recent = json_lines(report("events", "--since", "1h", "--format", "json"))

    assert [(e["file_id"], e["occurred_at"]) for e in recent] == [("k7", seeded.now.isoformat())]


def test_runs_with_outcome_source_since_and_limit(report, seeded):
    failed = json_lines(report("runs", "--outcome", "failed", "--format", "json"))
    assert [(r["source"], r["outcome"]) for r in failed] == [("kimi-b", "failed")] * 3
    assert "HTTP 401" in failed[0]["error"]

    (latest,) = json_lines(report("runs", "--source", "kimi", "--limit", "1", "--format", "json"))
    assert latest["started_at"] == seeded.now.isoformat()
    assert latest["appeared"] == 1

    today = json_lines(
        report("runs", "--since", "24h", "--provider", "moonshot", "--format", "json")
    )
    assert sorted(r["source"] for r in today) == ["kimi", "kimi-b"]


def test_runs_as_csv(report):
    text = report("runs", "--source", "sf", "--format", "csv")
    header, *table = list(csv.reader(io.StringIO(text, newline="")))

    assert header[:6] == ["id", "source", "provider", "started_at", "finished_at", "outcome"]
    assert [row[header.index("outcome")] for row in table] == ["ok"] * 5
    assert [row[header.index("appeared")] for row in table] == ["0", "0", "1", "0", "3"]


def test_an_empty_report_is_a_header_and_exit_0(report):
    header = "source\tfile_id\tfilename\tpurpose\tbytes\tstatus\tstatus_class\tchanged_at\n"
    assert report("files", "--source", "nobody") == header
    assert report("events", "--source", "nobody", "--format", "json") == ""
    assert report("runs", "--source", "nobody", "--format", "csv").count("\r\n") == 1


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("files", "--since", "yesterday"), "expected a duration like 30m, 24h, 7d"),
        (("files", "--status-class", "broken"), "'broken' is not one of"),
        (("events", "--kind", "deleted"), "'deleted' is not one of"),
        (("runs", "--limit", "0"), "0 is not in the range x>=1"),
        (("runs", "--format", "xml"), "'xml' is not one of"),
    ],
)
def test_bad_options_are_usage_errors(report, args, complaint):
    assert complaint in report(*args, exit_code=2)


def test_help_of_every_report(report):
    for command in ("files", "events", "runs"):
        text = report(command, "--help")
        assert f"Usage: cli {command}" in text or f"Usage: syncer {command}" in text
        assert "--format [table|json|csv]" in text


def test_since_parses_durations_and_iso_times():
    now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

    assert parse_since("24h", now=now) == now - timedelta(hours=24)
    assert parse_since(" 90s ", now=now) == now - timedelta(seconds=90)
    assert parse_since("2w", now=now) == now - timedelta(weeks=2)
    assert parse_since("2026-11-20", now=now) == datetime(2026, 11, 20, tzinfo=UTC)
    assert parse_since("2026-11-20T08:00+08:00", now=now) == datetime(2026, 11, 20, tzinfo=UTC)
    with pytest.raises(ValueError, match="expected a duration"):
        parse_since("-5m", now=now)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def wide(monkeypatch):
    """rich sizes a table by $COLUMNS when its file is no real terminal."""
    monkeypatch.setenv("COLUMNS", "200")


def test_on_a_terminal_a_table_shows_provider_text_literally_and_harmlessly(wide):
    report = files_report(Filters())
    row = [
        "kimi",
        "k1",
        "moonshot",
        "[bold red]x[/]\x1b[2J\tname",
        "file-extract",
        1234,
        None,
        "ok",
        "",
        "ready",
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        None,
    ]
    out = Terminal()

    write_report([row], report, Format.TABLE, out)

    text = out.getvalue()
    assert "file_id" in text
    assert "status_class" in text
    assert "[bold red]x[/]" in text  # not taken for rich markup
    assert "\x1b[2J" not in text  # not passed to the terminal
    assert "2026-01-02T03:04:05Z" in text
    assert "1234" in text


def test_a_long_table_on_a_terminal_is_printed_page_by_page(wide, monkeypatch):
    monkeypatch.setattr("syncer.reports.output.TABLE_PAGE", 3)
    report = files_report(Filters())
    row = ["s", "f", "p", "name", "batch", 1, None, None, None, "ready", None, None, None, None]
    out = Terminal()

    write_report([row] * 7, report, Format.TABLE, out)

    assert out.getvalue().count("status_class") == 3


def test_rows_stream_from_a_server_side_cursor(engine):
    """The first rows are written while the database still holds the rest."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO files (source, file_id, provider, filename, purpose, bytes,"
                " status_class, created_at, first_seen_at, changed_at, raw)"
                " SELECT 'big', lpad(n::text, 6, '0'), 'moonshot', 'f' || n, 'batch', n,"
                " 'ready', now(), now(), now(), '{}'"
                " FROM generate_series(1, 5000) AS n"
            )
        )
    seen: list[str] = []

    class Probe(io.StringIO):
        def write(self, text: str) -> int:
            if not seen:
                with engine.connect() as probe:
                    seen.extend(
                        probe.execute(
                            sa.text(
                                "SELECT query FROM pg_stat_activity"
                                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                                " AND state = 'idle in transaction'"
                            )
                        ).scalars()
                    )
            return super().write(text)

    out = Probe()
    print_report(engine, files_report(Filters()), Format.JSON, out)

    assert len(out.getvalue().splitlines()) == 5000
    assert any(query.startswith(("FETCH", "DECLARE")) for query in seen), seen


# --- End to end: the installed command, as a user runs it -----------------------------


def syncer(*args: str, env: dict[str, str], cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncer", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_three_reports_end_to_end(engine, database_url, tmp_path):
    with Simulator(seed=3) as sim:
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("SYNCER_", "SILICONFLOW_", "MOONSHOT_"))
            },
            "SYNCER_DATABASE_URL": database_url,
            "SYNCER_LOG_FORMAT": "json",
            "SILICONFLOW_API_KEY": sim.api_key("siliconflow"),
            "SILICONFLOW_BASE_URL": sim.base_url("siliconflow"),
            "MOONSHOT_API_KEY": sim.api_key("moonshot"),
            "MOONSHOT_BASE_URL": sim.base_url("moonshot"),
        }
        sim.add_files("siliconflow", 3)
        sim.add_files("moonshot", 4, status="processing")
        assert syncer("sync", env=env, cwd=tmp_path).returncode == 0
        changes = sim.step("moonshot")
        assert syncer("sync", "--source", "moonshot", env=env, cwd=tmp_path).returncode == 0
        listed = {(a, f["id"]) for a in ("siliconflow", "moonshot") for f in sim.files(a)}

    files = syncer("files", "--format", "json", env=env, cwd=tmp_path)
    events = syncer("events", "--since", "1h", "--format", "csv", env=env, cwd=tmp_path)
    runs = syncer("runs", env=env, cwd=tmp_path)

    assert files.returncode == 0, files.stderr
    assert {(r["source"], r["file_id"]) for r in json_lines(files.stdout)} == listed

    assert events.returncode == 0, events.stderr
    header, *table = list(csv.reader(io.StringIO(events.stdout, newline="")))
    recorded = [dict(zip(header, row, strict=True)) for row in table]
    assert len(recorded) == 7 + len(changes)
    assert [(e["file_id"], e["kind"]) for e in recorded[: len(changes)]] == sorted(
        ((c.file_id, c.kind.value) for c in changes), reverse=True
    )

    assert runs.returncode == 0, runs.stderr
    head, *lines = runs.stdout.splitlines()
    assert head.split("\t")[:4] == ["id", "started_at", "source", "outcome"]
    newest, *first_pass = [line.split("\t")[2:4] for line in lines]
    assert newest == ["moonshot", "ok"]
    # The first `syncer sync` synced both sources at once: their runs come in either order.
    assert sorted(first_pass) == [["moonshot", "ok"], ["siliconflow", "ok"]]


def test_a_reader_that_stops_early_ends_the_report_quietly(engine, database_url, tmp_path):
    with engine.begin() as conn:
        run_id = conn.execute(
            sa.text(
                "INSERT INTO sync_runs (source, provider, started_at, outcome)"
                " VALUES ('big', 'moonshot', now(), 'ok') RETURNING id"
            )
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO file_events (sync_run_id, occurred_at, source, provider, file_id,"
                " kind) SELECT :run, now(), 'big', 'moonshot', 'f' || n, 'appeared'"
                " FROM generate_series(1, 50000) AS n"
            ),
            {"run": run_id},
        )
    env = {**os.environ, "SYNCER_DATABASE_URL": database_url, "SYNCER_LOG_FORMAT": "json"}
    process = subprocess.Popen(
        [sys.executable, "-m", "syncer", "events", "--format", "json"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    first = json.loads(process.stdout.readline())
    process.stdout.close()  # like `| head -1`
    errors = process.stderr.read()
    process.stderr.close()
    process.wait(timeout=60)

    assert first["kind"] == "appeared"
    assert process.returncode == 0
    assert "Traceback" not in errors
    assert "Broken pipe" not in errors


def test_json_output_round_trips_through_rows(seeded):
    """Each JSON line is the row PostgreSQL has: nothing lost in translation."""
    out = io.StringIO()
    print_report(seeded.engine, files_report(Filters(sources=("sf",))), Format.JSON, out)
    from_db = rows(
        seeded.engine,
        "SELECT file_id, bytes, line_count FROM files WHERE source = 'sf'"
        " AND deleted_at IS NULL ORDER BY file_id",
    )

    assert [(r["file_id"], r["bytes"], r["line_count"]) for r in json_lines(out.getvalue())] == (
        from_db
    )
