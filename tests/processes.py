"""`syncer run` for tests that let it run a while: its log goes to a file, not a pipe.

A pipe that nobody reads until the end holds 64 KiB; a service that logs a line per
sync fills it within a minute or two, then blocks on its next log line, and with it
the sync that logs. test_cli.start_service is fine for short runs.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import TYPE_CHECKING

from receiver import TOKEN
from test_cli import assert_no_secret

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


class LoggedService:
    """`syncer run` syncing every second, its stderr in `log`."""

    def __init__(self, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        with log.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "syncer", "run"],
                env={**env, "SYNCER_INTERVAL": "1s"},
                cwd=cwd,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> str:
        """SIGTERM; it must exit 0 with no secret in its log. Returns the log."""
        self.process.send_signal(signal.SIGTERM)
        returncode = self.process.wait(timeout=60)
        output = self.output()
        assert returncode == 0, output[-5000:]
        assert_no_secret(output)
        assert TOKEN not in output
        return output


def stop_all(services: Sequence[LoggedService]) -> list[str]:
    """`stop()` each of them, even after one fails its check; then raise that failure.

    A list comprehension of `stop()` left the others running when the first raised.
    """
    outputs, failures = [], []
    for service in services:
        try:
            outputs.append(service.stop())
        except Exception as failure:  # noqa: BLE001 - raised below, once all are stopped
            if service.alive():
                service.process.kill()
                service.process.wait()
            failures.append(failure)
    if failures:
        raise failures[0]
    return outputs
