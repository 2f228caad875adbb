"""The benchmark commands that docs/performance.md tells people to run still run.

Small sizes only: what is checked is that each prints its table and that the figures
it reports hold together (a re-sync of an unchanged listing writes nothing), never
how fast anything was.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO_ROOT


def bench(script: str, *args: str, admin_url: str) -> list[str]:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / script),
            *args,
            "--database-url",
            admin_url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_sync_bench_prints_each_sync_and_its_floor(databases):
    lines = bench("sync_bench.py", "--sizes", "300", "--repeat", "1", admin_url=databases.admin_url)

    rows = {line.split()[1]: line.split() for line in lines if line.lstrip().startswith("300 ")}
    assert set(rows) == {"initial", "no", "1%", "floor"}
    *_, initial_rows, initial_events, _ = rows["initial"]
    *_, unchanged_rows, unchanged_events, _ = rows["no"]
    *_, churn_rows, churn_events, _ = rows["1%"]
    assert (initial_rows, initial_events) == ("300", "300")
    assert (unchanged_rows, unchanged_events) == ("0", "0")
    # 1% of 300 files changed status and another 1% were deleted: 3 + 3 rows and events.
    assert (churn_rows, churn_events) == ("6", "6")


def test_ingest_floor_prints_every_variant(databases):
    lines = bench(
        "ingest_floor.py", "--files", "300", "--repeat", "1", admin_url=databases.admin_url
    )

    assert lines[0].startswith("300 files: the initial load took")
    variants = lines[1:-1]
    assert len(variants) == 8
    assert all(line.split()[0] in {"files", "file_events"} for line in variants)
    assert lines[-1].lstrip().startswith("files + file_events as migrated:")
