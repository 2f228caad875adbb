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


def number(text: str) -> int:
    return int(text.replace(",", ""))


def test_history_bench_prunes_a_small_history_and_a_year_at_the_interval(databases):
    lines = bench(
        "history_bench.py",
        *("--sizes", "4000", "--sources", "10", "--repeat", "1", "--no-analyst"),
        *("--year-at-interval", "--year-sources", "2", "--year-days", "35"),
        *("--year-rates", "1,48"),
        admin_url=databases.admin_url,
    )

    assert lines[1].startswith("== 4,000 runs, 10 sources: filled in")
    # Every query is timed before and after the prune, all of them but the analyst ones.
    table = lines.index(next(line for line in lines if line.startswith("ms, median of 1")))
    rows = {line[:62].strip(): line[62:].split() for line in lines[table + 2 :]}
    assert len(rows["view source_health (all)"]) == 2
    assert len(rows["syncer events --file ID"]) == 2
    assert len(rows["/metrics collection"]) == 2
    assert not any("The inventory a week ago" in line for line in lines)
    [prune] = [line for line in lines if line.startswith("prune pass: ")]
    pruned = number(prune.split("rolled up ")[1].split()[0])
    assert pruned > 0
    assert any(line.startswith("no-change sync of 1000 files, median of 15: ") for line in lines)
    sizes = {line[:32].strip(): line[32:].split() for line in lines if " rows " in line}
    before, after, compacted = (number(n) for n in sizes["sync_runs rows"])
    # What the prune left, plus the no-change measurement's syncs (the first, then 15).
    assert before == 4000
    assert after == compacted == before - pruned + 16
    assert number(sizes["sync_run_daily rows"][1]) > 0

    year = lines.index(next(line for line in lines if line.startswith("== a year at")))
    assert "2 sources x 10,080 runs (35 days, one run per 300s)" in lines[year]
    filled = next(line for line in lines[year:] if line.startswith("filled: "))
    assert filled.startswith("filled: 20,160 runs")
    unpruned, first, second = (
        next(line for line in lines[year:] if line.startswith(name)).split()[-4:]
        for name in ("unpruned", "prune pass 1  ", "prune pass 2  ")
    )
    assert number(unpruned[0]) == 20_160
    # 30 days of 35 stay whole: about 6/7 of the runs, and more than 30/35 of them.
    assert 30 / 35 < number(first[0]) / 20_160 < 0.95
    assert number(second[0]) <= number(first[0])
    rates = lines.index(next(line for line in lines if line.startswith("one source per rate")))
    one_a_day, many_a_day = (line.split() for line in lines[rates + 3 : rates + 5])
    assert (one_a_day[0], many_a_day[0]) == ("1", "48")
    # Sources that change more often keep more of their runs.
    assert number(one_a_day[3]) < number(many_a_day[3]) < number(many_a_day[1])
