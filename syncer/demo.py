"""`syncer demo`: the whole loop with no keys and no setup.

A simulator serves one account of every provider on loopback; files appear, finish
processing, fail and get deleted between rounds, and syncer syncs them all after each
round into a throwaway embedded PostgreSQL (or SYNCER_DATABASE_URL when set),
printing what the simulator did, what each sync recorded and the inventory at the end.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import sqlalchemy as sa

from syncer.config import SourceConfig
from syncer.db.engine import create_db_engine, start_embedded
from syncer.db.migrate import upgrade_to_head
from syncer.redaction import Secret
from syncer.simulator import Simulator
from syncer.sync import sync_source

if TYPE_CHECKING:
    from syncer.config import Settings

_SEED = 2026
_INITIAL_FILES = 3

_NEW_EVENTS = sa.text(
    "SELECT id, source, file_id, kind, old_status, new_status FROM file_events"
    " WHERE id > :after ORDER BY id"
)
_INVENTORY = sa.text(
    "SELECT source, file_id, filename, coalesce(status, '-') AS status, status_class"
    " FROM current_files ORDER BY source, first_seen_at, file_id"
)
_SUMMARY = sa.text(
    "SELECT source, status_class, files, bytes FROM inventory_summary ORDER BY source, status_class"
)
_GONE = sa.text("SELECT count(*) FROM files WHERE deleted_at IS NOT NULL")


def run_demo(settings: Settings, *, steps: int, pause: float) -> int:
    """Run the demo; returns the exit code (0)."""
    with Simulator(seed=_SEED) as simulator:
        sources = _demo_sources(simulator)
        url = settings.database_url or _throwaway_database()
        engine = create_db_engine(url, lock_timeout=settings.lock_timeout)
        try:
            upgrade_to_head(engine)
            click.echo(f"simulated providers at http://127.0.0.1:{simulator.port}/\n")
            last_event = 0
            for round_number in range(steps + 1):
                click.secho(f"--- round {round_number}", bold=True)
                changes = simulator.step() if round_number else []
                for change in changes:
                    click.echo(f"  simulator: {change}")
                for source in sources:
                    result = sync_source(engine, source, rules=settings.rules, policy=settings.http)
                    click.echo(f"  sync {result.summary()}")
                last_event = _print_events(engine, last_event)
                if round_number < steps:
                    time.sleep(pause)
            _print_inventory(engine)
        finally:
            engine.dispose()
    return 0


def _demo_sources(simulator: Simulator) -> tuple[SourceConfig, ...]:
    sources = []
    for account in simulator.accounts:
        simulator.add_files(account.name, _INITIAL_FILES)
        sources.append(
            SourceConfig(
                name=f"{account.name}-demo",
                provider=account.provider,
                api_key=Secret(account.api_key),
                base_url=simulator.base_url(account.name),
            )
        )
    return tuple(sources)


def _throwaway_database() -> Secret:
    data_dir = Path(tempfile.mkdtemp(prefix="syncer-demo-"))
    url = start_embedded(data_dir, throwaway=True)
    click.echo(f"embedded PostgreSQL in {data_dir} (deleted when the demo ends)")
    return url


def _print_events(engine: sa.Engine, after: int) -> int:
    with engine.connect() as conn:
        for event in conn.execute(_NEW_EVENTS, {"after": after}):
            statuses = f"{event.old_status or '-'} -> {event.new_status or '-'}"
            click.echo(
                f"  event #{event.id} {event.source} {event.file_id} {event.kind} {statuses}"
            )
            after = event.id
    return after


def _print_inventory(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        inventory = conn.execute(_INVENTORY).all()
        summary = conn.execute(_SUMMARY).all()
        gone = conn.execute(_GONE).scalar_one()
    click.secho("\n--- inventory (current_files)", bold=True)
    for row in inventory:
        click.echo(
            f"  {row.source:<18} {row.file_id:<22} {row.status:<11} {row.status_class:<8}"
            f" {row.filename}"
        )
    click.secho("\n--- summary (inventory_summary)", bold=True)
    for row in summary:
        click.echo(
            f"  {row.source:<18} {row.status_class:<8} {row.files:>4} files {row.bytes:>12} bytes"
        )
    click.echo(f"  and {gone} files that disappeared")
