"""The history the reporting tests query, made by real syncs, and its own sanity checks.

Three accounts on the simulator are synced by `sync_source` at fixed times: noon of
ten, eight, five and three days ago, and two minutes ago. Noon keeps every event far
from the day boundaries that queries such as "the last 7 days" draw relative to
now(), so their answers do not depend on the hour the suite runs.

    kimi (moonshot)                    sf (siliconflow)          kimi-b (moonshot)
    T10 k1 k3 processing, k2 k5 ok,    s1 s2 s3 appear           b1 appears ok
        k4 error
    T8  k1 ok, k3 error, k2 gone,      -                         401: failed
        k8 appears error
    T5  k1 processing, k3 gone,        s1 grows (changed),       401: failed
        k6 appears processing, k8 ok   s2 gone, s4 appears
    T3  k1 ok, k6 ok, k2 comes back,   -                         -
        k9 appears processing
    NOW k7 appears error               -                         401: failed

The database is seeded once per session in a database of its own; tests only read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from syncer.config import HttpPolicy, SourceConfig, SyncRules
from syncer.db.engine import create_db_engine
from syncer.db.migrate import upgrade_to_head
from syncer.model import Outcome
from syncer.redaction import Secret
from syncer.simulator import Account, Fault, Simulator
from syncer.sync import sync_source

ACCOUNTS = (
    Account("kimi", "moonshot", "sk-seed-kimi"),
    Account("kimi-b", "moonshot", "sk-seed-kimi-b"),
    Account("sf", "siliconflow", "sk-seed-sf"),
)
RULES = SyncRules(missing_grace=1, mass_disappear_fraction=0.5, mass_disappear_min=10)
POLICY = HttpPolicy(connect_timeout=2, read_timeout=5, request_deadline=10, retry_budget=1)


@dataclass(frozen=True)
class Seeded:
    """The seeded database and the times its syncs ran at."""

    url: str
    engine: sa.Engine
    t10: datetime
    t8: datetime
    t5: datetime
    t3: datetime
    now: datetime


class Script:
    """Scripting the simulator's accounts and syncing them at a given time."""

    def __init__(self, sim: Simulator, engine: sa.Engine) -> None:
        self.sim = sim
        self.engine = engine
        self.sources = {
            account.name: SourceConfig(
                name=account.name,
                provider=account.provider,
                api_key=Secret(account.api_key),
                base_url=sim.base_url(account.name),
            )
            for account in ACCOUNTS
        }

    def sync(self, name: str, at: datetime, expected: Outcome = Outcome.OK) -> None:
        source = self.sources[name]
        result = sync_source(self.engine, source, rules=RULES, policy=POLICY, clock=lambda: at)
        assert result.outcome is expected, result

    def moonshot(self, account: str, file_id: str, name: str, purpose: str, size: int,
                 created: datetime, status: str, details: str = "") -> None:  # fmt: skip
        self.sim.add_file(
            account,
            id=file_id,
            filename=name,
            purpose=purpose,
            bytes=size,
            created_at=int(created.timestamp()),
            status=status,
            status_details=details,
        )

    def siliconflow(self, file_id: str, name: str, lines: int, created: datetime) -> None:
        self.sim.add_file(
            "sf",
            id=file_id,
            filename=name,
            purpose="batch",
            bytes=lines * 1000,
            line_count=lines,
            created_at=int(created.timestamp()),
        )


HOUR = timedelta(hours=1)


def seed(url: str) -> Seeded:
    """Run the scenario of the module docstring against the database at `url`."""
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    t10, t8, t5, t3 = (midnight - timedelta(days=d) + 12 * HOUR for d in (10, 8, 5, 3))
    engine = create_db_engine(Secret(url), lock_timeout=5)
    upgrade_to_head(engine)
    with Simulator(ACCOUNTS, seed=5) as sim:
        run = Script(sim, engine)
        run.moonshot("kimi", "k1", "report.pdf", "file-extract", 1000, t10 - HOUR, "processing")
        run.moonshot("kimi", "k2", "notes.txt", "file-extract", 2000, t10 - 2 * HOUR, "ok")
        run.moonshot("kimi", "k3", "scan.png", "image", 3000, t10 - 3 * HOUR, "processing")
        run.moonshot("kimi", "k4", "big.pdf", "file-extract", 50_000_000, t10 - 4 * HOUR,
                     "error", "file content is empty")  # fmt: skip
        run.moonshot("kimi", "k5", "talk.mp4", "video", 900_000_000, t10 - 5 * HOUR, "ok")
        run.siliconflow("s1", "batch-a.jsonl", 10, t10 - 24 * HOUR)
        run.siliconflow("s2", "batch-b.jsonl", 20, t10 - 24 * HOUR)
        run.siliconflow("s3", "batch-c.jsonl", 30, t10 - 24 * HOUR)
        run.moonshot("kimi-b", "b1", "b.pdf", "file-extract", 100, t10 - 6 * HOUR, "ok")
        for name in ("kimi", "sf", "kimi-b"):
            run.sync(name, t10)

        sim.set_status("kimi", "k1", "ok")
        sim.set_status("kimi", "k3", "error", "file is corrupted and cannot be parsed")
        sim.delete_file("kimi", "k2")
        run.moonshot("kimi", "k8", "retry.pdf", "file-extract", 800, t8 - HOUR, "error",
                     "file is corrupted")  # fmt: skip
        sim.set_persistent_fault("kimi-b", Fault.status(401))
        run.sync("kimi", t8)
        run.sync("sf", t8)
        run.sync("kimi-b", t8, Outcome.FAILED)

        sim.set_status("kimi", "k1", "processing")
        sim.delete_file("kimi", "k3")
        run.moonshot("kimi", "k6", "batch.jsonl", "batch", 40_000, t5 - HOUR / 2, "processing")
        sim.set_status("kimi", "k8", "ok")
        sim.update_file("sf", "s1", bytes=12_000, line_count=12)
        sim.delete_file("sf", "s2")
        run.siliconflow("s4", "batch-d.jsonl", 5, t5 - HOUR)
        run.sync("kimi", t5)
        run.sync("sf", t5)
        run.sync("kimi-b", t5, Outcome.FAILED)

        sim.set_status("kimi", "k1", "ok")
        sim.set_status("kimi", "k6", "ok")
        run.moonshot("kimi", "k2", "notes.txt", "file-extract", 2000, t10 - 2 * HOUR, "ok")
        run.moonshot("kimi", "k9", "slow.pdf", "file-extract", 700, t3 - HOUR, "processing")
        run.sync("kimi", t3)
        run.sync("sf", t3)

        run.moonshot("kimi", "k7", "bad.pdf", "file-extract", 500, now - HOUR, "error",
                     "file is corrupted and cannot be parsed")  # fmt: skip
        run.sync("kimi", now)
        run.sync("sf", now)
        run.sync("kimi-b", now, Outcome.FAILED)
    return Seeded(url, engine, t10, t8, t5, t3, now)


@pytest.fixture(scope="session", name="seeded")
def seeded_database(databases):
    """The scenario, seeded once into a database of its own. Read it, never write it."""
    state = seed(databases.create())
    yield state
    state.engine.dispose()


def rows(engine: sa.Engine, query: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        conn.execute(sa.text("SET TIME ZONE 'UTC'"))
        return [tuple(row) for row in conn.execute(sa.text(query), params)]


FILE_COLUMNS = (
    "source, file_id, provider, filename, purpose, bytes, line_count, status,"
    " status_details, status_class, created_at, first_seen_at, changed_at"
)


def test_the_scenario_leaves_the_inventory_it_describes(seeded):
    present = rows(seeded.engine, "SELECT source, file_id, status FROM current_files ORDER BY 1, 2")

    assert present == [
        ("kimi", "k1", "ok"),
        ("kimi", "k2", "ok"),
        ("kimi", "k4", "error"),
        ("kimi", "k5", "ok"),
        ("kimi", "k6", "ok"),
        ("kimi", "k7", "error"),
        ("kimi", "k8", "ok"),
        ("kimi", "k9", "processing"),
        ("kimi-b", "b1", "ok"),
        ("sf", "s1", None),
        ("sf", "s3", None),
        ("sf", "s4", None),
    ]


def test_files_as_of_now_rebuilds_every_present_file_from_events_alone(seeded):
    rebuilt = rows(seeded.engine, f"SELECT {FILE_COLUMNS} FROM files_as_of(now())")
    stored = rows(seeded.engine, f"SELECT {FILE_COLUMNS} FROM current_files ORDER BY 1, 2")

    assert rebuilt == stored


def test_file_history_ends_each_version_where_the_next_event_begins(seeded):
    history = rows(
        seeded.engine,
        "SELECT version, started_by, valid_from, valid_to, ended_by, status, status_class"
        " FROM file_history WHERE source = 'kimi' AND file_id = 'k2' ORDER BY version",
    )

    assert history == [
        (1, "appeared", seeded.t10, seeded.t8, "disappeared", "ok", "ready"),
        (2, "reappeared", seeded.t3, None, None, "ok", "ready"),
    ]
