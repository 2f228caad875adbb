r"""Streaming a report's rows out as a table, JSON lines or CSV.

Rows come from a server-side cursor in batches and are written as they arrive, so a
report of a million events needs the memory of one batch, not of the whole result.

- `table`: on a terminal, rich tables of up to `TABLE_PAGE` rows each (the header
  repeats per page: column widths need a page's rows, never the whole result); when
  piped, tab-separated lines with a header, one row per line.
- `json`: JSON Lines, one object per row with every column in a fixed order;
  timestamps are ISO 8601 in UTC, `changes` a nested object, NULL `null`.
- `csv`: RFC 4180 (CRLF line ends, quotes where needed) with a header row; timestamps
  as in JSON, `changes` as JSON text, NULL an empty field.

Provider text is hostile until shown otherwise (a filename is whatever was uploaded):
in tables and CSV, control characters (C0, DEL, C1) and the invisible characters that
reorder or break lines (bidi controls, U+2028/U+2029) are shown as escapes (`\x1b`,
`\u202e`); a CSV cell that a spreadsheet would run as a formula (starting with `=`,
`+`, `-`, `@`, tab or CR) gets a leading `'`, as OWASP recommends; JSON carries them
all as `\uXXXX` escapes, so its text holds no raw control character.
"""

from __future__ import annotations

import csv
import json
import os
from datetime import UTC, datetime
from enum import StrEnum
from itertools import islice
from typing import TYPE_CHECKING, Any, TextIO

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from syncer.reports.queries import Report

BATCH = 1000
TABLE_PAGE = 500

# Characters that must not reach a terminal or a spreadsheet as they are: C0, DEL and
# C1 controls move the cursor, set colours, ring the bell or start an OSC sequence;
# bidi controls make text read in another order than it is stored (a `.exe` shown as
# `.txt`); line and paragraph separators break lines in some viewers.
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_UNSAFE = (*range(0x20), *range(0x7F, 0xA0), *_BIDI, 0x2028, 0x2029)
_NAMED = {ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"}
_ESCAPED = str.maketrans(
    {
        code: _NAMED.get(code, f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        for code in _UNSAFE
    }
)
# JSON escapes C0 itself; the rest become \uXXXX escapes, which mean the same to a
# JSON reader.
_JSON_ESCAPED = str.maketrans({code: f"\\u{code:04x}" for code in _UNSAFE if code >= 0x7F})
# OWASP's "CSV injection": a cell starting with one of these is a formula to a
# spreadsheet; a leading quote makes it text.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"


def print_report(engine: sa.Engine, report: Report, output_format: Format, out: TextIO) -> None:
    """Run the report and write its rows to `out` as they are fetched.

    A reader that stops early (`| head`) ends the report quietly: that is not an error.
    """
    try:
        with engine.connect() as conn:
            rows = conn.execution_options(yield_per=BATCH).execute(report.statement)
            write_report(rows, report, output_format, out)
        out.flush()
    except BrokenPipeError:
        # Point the stream at /dev/null so that the interpreter's final flush of the
        # buffered rest does not fail a second time at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)


def write_report(
    rows: Iterable[Sequence[Any]], report: Report, output_format: Format, out: TextIO
) -> None:
    """Write `rows` (in the order of `report.columns`) to `out` in `output_format`."""
    if output_format is Format.JSON:
        _write_json(rows, report.columns, out)
    elif output_format is Format.CSV:
        _write_csv(rows, report.columns, out)
    elif out.isatty():
        _write_rich(rows, report, out)
    else:
        _write_plain(rows, report, out)


def _write_json(rows: Iterable[Sequence[Any]], columns: Sequence[str], out: TextIO) -> None:
    for row in rows:
        record = {name: _json_value(value) for name, value in zip(columns, row, strict=True)}
        out.write(_json_text(record) + "\n")


def _write_csv(rows: Iterable[Sequence[Any]], columns: Sequence[str], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(value) for value in row])


def _write_plain(rows: Iterable[Sequence[Any]], report: Report, out: TextIO) -> None:
    positions = _positions(report)
    out.write("\t".join(report.table_columns) + "\n")
    out.writelines("\t".join(_text_value(row[i]) for i in positions) + "\n" for row in rows)


def _write_rich(rows: Iterable[Sequence[Any]], report: Report, out: TextIO) -> None:
    console = Console(file=out, highlight=False)
    positions = _positions(report)
    numeric = {
        name
        for name, column in report.statement.selected_columns.items()
        if isinstance(column.type, sa.Integer)
    }
    for page in _pages(iter(rows), TABLE_PAGE):
        table = Table(show_edge=False, pad_edge=False)
        for name in report.table_columns:
            table.add_column(name, justify="right" if name in numeric else "left")
        for row in page:
            table.add_row(*(Text(_text_value(row[i])) for i in positions))
        console.print(table)


def _pages(rows: Iterator[Sequence[Any]], size: int) -> Iterator[list[Sequence[Any]]]:
    """Consecutive pages of up to `size` rows; no rows is one empty page, with a header."""
    page = list(islice(rows, size))
    yield page
    while len(page) == size:
        page = list(islice(rows, size))
        if page:
            yield page


def _positions(report: Report) -> list[int]:
    return [report.columns.index(name) for name in report.table_columns]


def _json_value(value: object) -> object:
    if isinstance(value, datetime):
        return _iso(value)
    return value


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False).translate(_JSON_ESCAPED)


def _csv_value(value: object) -> object:
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, dict | list):
        return _json_text(value)
    if isinstance(value, str):
        return neutralize_cell(value)
    return "" if value is None else value


def neutralize_cell(text: str) -> str:
    """A CSV cell that shows `text` and runs nothing: controls escaped, a formula
    start quoted."""
    text = text.translate(_ESCAPED)
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def _text_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, dict | list):
        value = _json_text(value)
    return str(value).translate(_ESCAPED)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()
