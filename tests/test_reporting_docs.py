"""docs/reporting.md cannot rot: its queries run here, and its reference matches the schema.

Every ```sql block in the document is executed against the seeded history of
test_reporting_seed.py and must return the rows expected below, keyed by the heading
the block sits under. A query added to the document without expected rows fails, and
so does a table, view, column, value or index the document does not describe.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import REPO_ROOT
from test_reporting_seed import Seeded, rows, seeded_database  # noqa: F401 - a fixture, used as `seeded`

from syncer.model import EventKind, Outcome, StatusClass

DOC = (REPO_ROOT / "docs" / "reporting.md").read_text()
_BLOCK = re.compile(r"^### ([^\n]+)$|^```sql\n(.*?)^```", re.MULTILINE | re.DOTALL)
_RELATION = re.compile(r"^### `(\w+)(?:\([^)]*\))?`$")
_COLUMN_ROW = re.compile(r"^\| `(\w+)` \|")


def sql_blocks(text: str) -> list[tuple[str, str]]:
    """(heading, sql) for every ```sql block, named by the ### heading above it."""
    found, heading = [], ""
    for match in _BLOCK.finditer(text):
        if match.group(1):
            heading = match.group(1)
        else:
            found.append((heading, match.group(2)))
    return found


def documented_columns(text: str) -> dict[str, list[str]]:
    """Relation name -> the columns its ### `name` section lists, in order."""
    columns: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("#"):
            match = _RELATION.match(line)
            current = match.group(1) if match else None
            if current:
                columns[current] = []
        elif current and (row := _COLUMN_ROW.match(line)):
            columns[current].append(row.group(1))
    return columns


def section(text: str, title: str) -> str:
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


QUERIES = sql_blocks(DOC)


def expected_rows(s: Seeded) -> dict[str, list[tuple[Any, ...]]]:
    day = timedelta(days=1)
    hour = timedelta(hours=1)
    t10, t8, t5, t3, now = s.t10, s.t8, s.t5, s.t3, s.now
    return {
        "Failed files per source, right now": [("kimi", 2, 50_000_500)],
        "Failed files with their reason": [
            ("kimi", "k7", "bad.pdf", "error", "file is corrupted and cannot be parsed", now),
            ("kimi", "k4", "big.pdf", "error", "file content is empty", t10),
        ],
        "Files that failed at some point and were never deleted": [
            ("kimi", "k4", "big.pdf", "failed"),
            ("kimi", "k7", "bad.pdf", "failed"),
            ("kimi", "k8", "retry.pdf", "ready"),
        ],
        "Storage by provider and purpose": [
            ("moonshot", "batch", 1, 40_000, "39 kB"),
            ("moonshot", "file-extract", 7, 50_005_100, "48 MB"),
            ("moonshot", "video", 1, 900_000_000, "858 MB"),
            ("siliconflow", "batch", 3, 47_000, "46 kB"),
        ],
        "The inventory summary": [
            ("kimi", "moonshot", "failed", 2, 50_000_500),
            ("kimi", "moonshot", "pending", 1, 700),
            ("kimi", "moonshot", "ready", 5, 900_043_800),
            ("kimi-b", "moonshot", "ready", 1, 100),
            ("sf", "siliconflow", "ready", 3, 47_000),
        ],
        "Largest files": [
            ("kimi", "k5", "talk.mp4", 900_000_000, "858 MB"),
            ("kimi", "k4", "big.pdf", 50_000_000, "48 MB"),
            ("kimi", "k6", "batch.jsonl", 40_000, "39 kB"),
            ("sf", "s3", "batch-c.jsonl", 30_000, "29 kB"),
            ("sf", "s1", "batch-a.jsonl", 12_000, "12 kB"),
        ],
        "Churn per day and kind, last 30 days": [
            (t10.date(), "appeared", 9),
            (t8.date(), "appeared", 1),
            (t8.date(), "disappeared", 1),
            (t8.date(), "status_changed", 2),
            (t5.date(), "appeared", 2),
            (t5.date(), "changed", 1),
            (t5.date(), "disappeared", 2),
            (t5.date(), "status_changed", 2),
            (t3.date(), "appeared", 1),
            (t3.date(), "reappeared", 1),
            (t3.date(), "status_changed", 2),
            (now.date(), "appeared", 1),
        ],
        "Time from upload to ready": [
            ("kimi", "k8", 3 * day + hour),
            ("kimi", "k1", 2 * day + hour),
            ("kimi", "k6", 2 * day + hour / 2),
            ("kimi-b", "b1", 6 * hour),
            ("kimi", "k5", 5 * hour),
            ("kimi", "k2", 2 * hour),
        ],
        "Files stuck in pending for more than a day": [
            ("kimi", "k9", "slow.pdf", "processing", t3),
        ],
        "Status flapping: files whose class changed three times or more in 30 days": [
            ("kimi", "k1", 3),
        ],
        "Files gone in the last 7 days": [
            (t5, "kimi", "k3", "scan.png", "error", False),
            (t5, "sf", "s2", "batch-b.jsonl", None, False),
        ],
        "Sources whose last ok sync is older than three intervals": [
            ("kimi-b", "moonshot", t10, now, "failed", 3),
        ],
        "Runs per day, pruned or not": [
            ("kimi-b", t10.date(), 1, 1, 0),
            ("kimi-b", t8.date(), 1, 0, 1),
            ("kimi-b", t5.date(), 1, 0, 1),
            ("kimi-b", now.date(), 1, 0, 1),
        ],
        "Runs in the last 24 hours by outcome": [
            ("kimi", "ok", 1, now),
            ("kimi-b", "failed", 1, now),
            ("sf", "ok", 1, now),
        ],
        "The inventory a week ago": [
            ("kimi", "failed", 3, 50_003_800),
            ("kimi", "ready", 2, 900_001_000),
            ("kimi-b", "ready", 1, 100),
            ("sf", "ready", 3, 60_000),
        ],
        "What changed between a week ago and now": [
            ("kimi", "k2", None, "ready"),
            ("kimi", "k3", "failed", None),
            ("kimi", "k6", None, "ready"),
            ("kimi", "k7", None, "failed"),
            ("kimi", "k8", "failed", "ready"),
            ("kimi", "k9", None, "pending"),
            ("sf", "s2", "ready", None),
            ("sf", "s4", None, "ready"),
        ],
        "The versions of one file": [
            (1, "appeared", t10, t8, "status_changed", "processing", "pending"),
            (2, "status_changed", t8, t5, "status_changed", "ok", "ready"),
            (3, "status_changed", t5, t3, "status_changed", "processing", "pending"),
            (4, "status_changed", t3, None, None, "ok", "ready"),
        ],
        "What happened to one file": [
            (
                t10,
                "appeared",
                None,
                "ok",
                {
                    "filename": [None, "notes.txt"],
                    "purpose": [None, "file-extract"],
                    "bytes": [None, 2000],
                    "line_count": [None, None],
                    "status": [None, "ok"],
                    "status_details": [None, ""],
                    "created_at": [None, (t10 - 2 * hour).isoformat()],
                },
            ),
            (t8, "disappeared", "ok", None, {}),
            (t3, "reappeared", "ok", "ok", {}),
        ],
    }


def plain(value: object) -> object:
    """Sums of bigint are numeric in PostgreSQL; compare whole numbers as ints."""
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return value


def test_the_cookbook_has_a_dozen_queries_each_with_expected_rows(seeded):
    headings = [heading for heading, _ in QUERIES]

    assert len(headings) >= 12
    assert len(set(headings)) == len(headings), "two queries under one heading"
    assert set(headings) == set(expected_rows(seeded))


@pytest.mark.parametrize(("heading", "sql"), QUERIES, ids=[heading for heading, _ in QUERIES])
def test_each_documented_query_returns_its_expected_rows(seeded, heading, sql):
    expected = expected_rows(seeded).get(heading)
    assert expected is not None, f"no expected rows for the query under {heading!r}"

    result = [tuple(plain(value) for value in row) for row in rows(seeded.engine, sql)]

    assert result == expected


def test_every_table_view_and_function_is_documented_with_exactly_its_columns(seeded):
    documented = documented_columns(DOC)
    with seeded.engine.connect() as conn:
        relations = conn.execute(
            sa.text(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'public' AND table_name <> 'alembic_version'"
            )
        ).scalars()
        actual = {
            name: list(conn.execute(sa.text(f"SELECT * FROM {name} LIMIT 0")).keys())
            for name in relations
        }
        actual["files_as_of"] = list(
            conn.execute(sa.text("SELECT * FROM files_as_of(now()) LIMIT 0")).keys()
        )

    with_columns = {name: columns for name, columns in documented.items() if columns}
    assert with_columns == actual
    assert "syncer_jsonb_merge" in documented
    assert "syncer_status_class" not in documented  # dropped: no SQL names a provider


def test_every_value_is_documented():
    values = section(DOC, "Values")
    for enum_values in (StatusClass, EventKind, Outcome, ("pending", "sent", "dead")):
        for value in enum_values:
            assert f"| `{value}` |" in values, value


def test_every_index_is_documented(seeded):
    with seeded.engine.connect() as conn:
        indexes = conn.execute(
            sa.text(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
                " AND indexname LIKE 'ix\\_%'"
            )
        ).scalars()
        names = set(indexes)
    documented = set(re.findall(r"^\| `(ix_\w+)`", section(DOC, "Indexes"), re.MULTILINE))

    assert names == documented
