"""The `syncer` command. Each command is a few lines that call into the package."""

from __future__ import annotations

import sys
from concurrent.futures import as_completed
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, NoReturn

import click
import stamina
from sqlalchemy.exc import SQLAlchemyError

from syncer.alerts import TEST_MESSAGE
from syncer.config import Settings, load_database_settings, load_settings
from syncer.db import outbox
from syncer.db.engine import (
    CONTROL_CONNECTIONS,
    CONTROL_POOL_TIMEOUT,
    create_db_engine,
    database_url,
    describe_db_error,
    wait_for_database,
)
from syncer.db.migrate import (
    check_revision,
    pending_revision,
    schema_differences,
    upgrade_to_head,
)
from syncer.db.sources import process_owner
from syncer.delivery import build_targets, dispatch_due, send_test
from syncer.demo import run_demo
from syncer.errors import (
    ConfigError,
    DatabaseUnavailableError,
    LeaseLostError,
    ProviderError,
    SourceBusyError,
)
from syncer.logs import configure_logging
from syncer.model import EventKind, Outcome, StatusClass
from syncer.providers import fetch_listing, registry
from syncer.providers.http import log_retry
from syncer.redaction import redact
from syncer.reports import (
    Filters,
    Format,
    Report,
    events_report,
    files_report,
    print_report,
    runs_report,
)
from syncer.reports import options as report_options
from syncer.retention import prune as prune_history
from syncer.service import run_service
from syncer.workers import WorkerPool

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime

    import sqlalchemy as sa

    from syncer.config import SourceConfig
    from syncer.delivery import Target
    from syncer.model import Listing

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_CHECK_RETRY_BUDGET = 15.0


class _SyncerGroup(click.Group):
    """Turns syncer's own errors into one clear line and the documented exit code."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ConfigError as error:
            click.echo(f"syncer: configuration error: {redact(str(error))}", err=True)
            sys.exit(EXIT_USAGE)
        except DatabaseUnavailableError as error:
            click.echo(f"syncer: {redact(str(error))}", err=True)
            sys.exit(EXIT_FAILED)


@click.group(cls=_SyncerGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Keep an SQL inventory and audit trail of your files at LLM providers."""


@cli.command()
def migrate() -> None:
    """Migrate the database to the newest schema (alembic upgrade head).

    Reads only the database settings: provider keys and alert URLs are not needed.
    """
    with _engine(_settings(database_only=True)) as engine:
        upgrade_to_head(engine)
    click.echo("database schema is up to date")


@cli.command()
@click.option(
    "--source", "source_names", multiple=True, metavar="NAME", help="Only this source (repeatable)."
)
@click.option(
    "--allow-mass-disappear",
    is_flag=True,
    help="Apply disappearances even if the mass-disappearance breaker would hold them.",
)
@click.option("--no-migrate", is_flag=True, help="Do not migrate the database first.")
def sync(source_names: tuple[str, ...], *, allow_mass_disappear: bool, no_migrate: bool) -> None:
    """Sync every (or each chosen) source once now and print a line per source.

    Exits 0 when every source is `ok`, 1 when any is not, 2 on bad usage or settings.
    """
    settings = _settings(need_sources=True)
    chosen = [settings.source(name) for name in source_names] or list(settings.sources)
    workers = min(settings.workers, len(chosen))
    # One connection per worker, one for renewing their leases.
    with _engine(
        settings, migrate=not no_migrate, require_head=True, pool_size=workers + 1
    ) as engine:
        all_ok = sync_now(engine, replace(settings, workers=workers), chosen, allow_mass_disappear)
    sys.exit(EXIT_OK if all_ok else EXIT_FAILED)


def sync_now(
    engine: sa.Engine,
    settings: Settings,
    chosen: list[SourceConfig],
    allow_mass_disappear: bool,  # noqa: FBT001 - a command's flag, passed on
) -> bool:
    """One pass over `chosen`, SYNCER_WORKERS at a time; a line per source as it ends."""
    pool = WorkerPool(settings, engine=engine, lease_engine=engine, owner=process_owner("sync"))
    all_ok = True
    try:
        futures = {
            pool.submit_now(source, allow_mass_disappear=allow_mass_disappear): source
            for source in chosen
        }
        for future in as_completed(futures):
            name = futures[future].name
            try:
                result = future.result()
            except LeaseLostError as error:
                click.echo(f"{name}: skipped: {error}")
                all_ok = False
            except SourceBusyError as error:
                click.echo(f"{name}: busy: {error}")
                all_ok = False
            else:
                click.echo(result.summary())
                all_ok = all_ok and result.outcome is Outcome.OK
    finally:
        pool.close()
    return all_ok


@cli.command()
def check() -> None:
    """Check the settings, the database and every source; say what is wrong."""
    settings = _settings()
    problems = 0
    targets = build_targets(settings.alert_urls)
    click.echo(f"settings: ok ({len(settings.sources)} sources, {len(targets)} alert targets)")
    if not settings.sources:
        keys = ", ".join(f"{provider.env_prefix}_API_KEY" for provider in registry().values())
        click.echo(f"sources: none configured (set {keys} or SYNCER_CONFIG)")
        problems += 1
    try:
        with _engine(settings, check_schema=False) as engine:
            pending = pending_revision(engine)
            differences = [] if pending else schema_differences(engine)
        if differences:
            pending = f"schema differs from this release's models: {'; '.join(differences)}"
        click.echo(f"database: {pending or 'ok'}")
        if pending:
            problems += 1
    except DatabaseUnavailableError as error:
        click.echo(f"database: {redact(str(error))}")
        problems += 1
    policy = replace(
        settings.http, retry_budget=min(settings.http.retry_budget, _CHECK_RETRY_BUDGET)
    )
    for source in settings.sources:
        try:
            listing = fetch_listing(source, policy)
            state = "ok" if listing.complete else f"incomplete: {_why_incomplete(listing)}"
            click.echo(f"source {source.name}: {state} ({listing.items_listed} files listed)")
        except ProviderError as error:
            click.echo(f"source {source.name}: {redact(str(error))}")
            problems += 1
    sys.exit(EXIT_OK if problems == 0 else EXIT_FAILED)


def _why_incomplete(listing: Listing) -> str:
    if listing.early_end:
        return listing.early_end
    if listing.skipped:
        return f"{listing.skipped} unusable items"
    return "the listing may be cut off at its limit"


@cli.command()
@click.option("--no-migrate", is_flag=True, help="Do not migrate the database at start.")
def run(*, no_migrate: bool) -> None:
    """Run the service: sync every source now and then every interval, until SIGTERM."""
    settings = _settings(need_sources=True)
    targets = build_targets(settings.alert_urls)
    with _engine(
        settings, migrate=not no_migrate, require_head=True, pool_size=settings.workers
    ) as engine:
        control = create_db_engine(
            database_url(settings),
            lock_timeout=settings.lock_timeout,
            pool_size=CONTROL_CONNECTIONS,
            max_overflow=0,
            pool_timeout=CONTROL_POOL_TIMEOUT,
        )
        try:
            code = run_service(settings, engine, control_engine=control, targets=targets)
        finally:
            control.dispose()
    sys.exit(code)


@cli.command()
def prune() -> None:
    """Apply the retention settings once now (what `syncer run` does every hour).

    Rolls old unchanged ok runs up into sync_run_daily and removes them, removes old
    sent and dead alerts and, with SYNCER_EVENT_RETENTION, old gone files and their
    events; prints what it did. Another process pruning at the time makes it a no-op.
    """
    settings = _settings()
    with _engine(settings, require_head=True) as engine:
        report = prune_history(engine, settings.retention)
    click.echo(f"prune: {report.summary()}")


@cli.group()
def alerts() -> None:
    """Alert delivery: test the targets, list recent alerts, deliver due ones now."""


@alerts.command("test")
def alerts_test() -> None:
    """Send a test notification to every SYNCER_ALERT_URLS target; report each."""
    targets = _targets(_settings())
    deliveries = send_test(targets, TEST_MESSAGE)
    for delivery in deliveries:
        click.echo(f"{delivery.target}: {'ok' if delivery.ok else delivery.error}")
    sys.exit(EXIT_OK if all(d.ok for d in deliveries) else EXIT_FAILED)


@alerts.command("list")
@report_options.limit_with_default(20, "How many, newest first.")
@click.option("--state", type=click.Choice(outbox.STATES), help="Only alerts in this state.")
def alerts_list(limit: int, state: str | None) -> None:
    """Show recent alerts and their delivery state."""
    with _engine(_settings()) as engine, engine.connect() as conn:
        rows = outbox.recent(conn, limit=limit, state=state)
    for alert in rows:
        line = (
            f"{alert.created_at:%Y-%m-%d %H:%M:%S%z} {alert.state:<7} "
            f"attempts={alert.attempts} {alert.alert_key}"
        )
        if alert.last_error:
            line += f"  last error: {alert.last_error}"
        click.echo(line)
    if not rows:
        click.echo("no alerts")


@alerts.command("dispatch")
def alerts_dispatch() -> None:
    """Deliver every due pending alert once now (what `syncer run` does every few seconds).

    Exits 0 when everything due was delivered, 1 when something is still pending or
    dead.
    """
    settings = _settings()
    targets = _targets(settings)
    with _engine(settings) as engine:
        report = dispatch_due(engine, targets, settings.alerts)
    click.echo(f"alerts: {report.sent} sent, {report.retrying} to retry, {report.dead} dead")
    sys.exit(EXIT_OK if report.delivered_everything else EXIT_FAILED)


@cli.command()
@click.option("--steps", default=8, show_default=True, help="Simulated rounds of changes.")
@click.option("--pause", default=1.0, show_default=True, help="Seconds between rounds.")
def demo(steps: int, pause: float) -> None:
    """The whole loop with no keys and no setup: a simulated provider and a database."""
    # The demo prints every sync's summary itself; logs would only repeat them.
    settings = _settings(log_level="WARNING")
    sys.exit(run_demo(settings, steps=steps, pause=pause))


def _targets(settings: Settings) -> tuple[Target, ...]:
    targets = build_targets(settings.alert_urls)
    if not targets:
        raise ConfigError("SYNCER_ALERT_URLS is not set: there is no alert target")
    return targets


@cli.command()
@report_options.sources
@report_options.providers
@report_options.status_classes("Only files in this status class")
@report_options.since("changed_at")
@report_options.include_deleted
@report_options.limit
@report_options.output_format
def files(
    sources: tuple[str, ...],
    providers: tuple[str, ...],
    status_classes: tuple[StatusClass, ...],
    since: datetime | None,
    limit: int | None,
    output_format: Format,
    *,
    include_deleted: bool,
) -> None:
    """The inventory: one row per present file (or every file), by source and file id."""
    filters = Filters(
        sources=sources,
        providers=providers,
        status_classes=status_classes,
        since=since,
        include_deleted=include_deleted,
        limit=limit,
    )
    _print_report(files_report(filters), output_format)


@cli.command()
@report_options.sources
@report_options.providers
@report_options.kinds
@report_options.status_classes("Only events after which the file was in this status class")
@report_options.file_ids
@report_options.since("occurred_at")
@report_options.limit
@report_options.output_format
def events(
    sources: tuple[str, ...],
    providers: tuple[str, ...],
    kinds: tuple[EventKind, ...],
    status_classes: tuple[StatusClass, ...],
    file_ids: tuple[str, ...],
    since: datetime | None,
    limit: int | None,
    output_format: Format,
) -> None:
    """The audit trail: what happened to which file, newest first."""
    filters = Filters(
        sources=sources,
        providers=providers,
        kinds=kinds,
        status_classes=status_classes,
        file_ids=file_ids,
        since=since,
        limit=limit,
    )
    _print_report(events_report(filters), output_format)


@cli.command()
@report_options.sources
@report_options.providers
@report_options.outcomes
@report_options.since("started_at")
@report_options.limit
@report_options.output_format
def runs(
    sources: tuple[str, ...],
    providers: tuple[str, ...],
    outcomes: tuple[Outcome, ...],
    since: datetime | None,
    limit: int | None,
    output_format: Format,
) -> None:
    """Sync runs with their outcome and counts, newest first."""
    filters = Filters(
        sources=sources, providers=providers, outcomes=outcomes, since=since, limit=limit
    )
    _print_report(runs_report(filters), output_format)


def _print_report(report: Report, output_format: Format) -> None:
    with _engine(_settings()) as engine:
        print_report(engine, report, output_format, sys.stdout)


def _settings(
    *, need_sources: bool = False, log_level: str | None = None, database_only: bool = False
) -> Settings:
    settings = load_database_settings() if database_only else load_settings()
    configure_logging(settings.log_format, log_level or settings.log_level)
    stamina.instrumentation.set_on_retry_hooks([log_retry])
    if need_sources and not settings.sources:
        raise ConfigError(
            "no sources configured: set SILICONFLOW_API_KEY, MOONSHOT_API_KEY or SYNCER_CONFIG"
        )
    return settings


@contextmanager
def _engine(
    settings: Settings,
    *,
    migrate: bool = False,
    require_head: bool = False,
    check_schema: bool = True,
    pool_size: int | None = None,
) -> Iterator[sa.Engine]:
    """The database, reachable and (unless `check_schema` is off) at a schema this
    release knows; migrated first with `migrate`, at the newest with `require_head`;
    with `pool_size`, a fixed pool of that many connections."""
    sizing = {} if pool_size is None else {"pool_size": pool_size, "max_overflow": 0}
    engine = create_db_engine(database_url(settings), lock_timeout=settings.lock_timeout, **sizing)
    try:
        wait_for_database(engine, timeout=settings.db_wait)
        if migrate:
            upgrade_to_head(engine)
        elif check_schema:
            check_revision(engine, require_head=require_head)
        yield engine
    except SQLAlchemyError as error:
        raise DatabaseUnavailableError(
            f"database unavailable: {describe_db_error(error)}"
        ) from None
    finally:
        engine.dispose()


def main() -> NoReturn:
    """Console-script entry point."""
    cli.main(prog_name="syncer")
