"""Keeping API keys and alert URLs out of logs, errors, reprs and the database.

Secrets are wrapped in `Secret` as soon as they are read, so a stray `repr()` or
f-string shows `'***'`. Every secret value is also registered here, and
`redact()` (used by the log filter and before any error text is stored) replaces
any registered value that still slipped into a string.
"""

from __future__ import annotations

import logging
import threading
from typing import Final

MASK: Final = "***"
_MIN_SECRET_LENGTH: Final = 4  # shorter values would mask ordinary words

_lock = threading.Lock()
_registered: set[str] = set()


class Secret:
    """A secret string that never shows itself by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def register_secret(value: str) -> None:
    """Remember a value so that `redact` masks it wherever it turns up."""
    if len(value) >= _MIN_SECRET_LENGTH:
        with _lock:
            _registered.add(value)


def redact(text: str) -> str:
    """Replace every registered secret in `text`, longest first."""
    with _lock:
        secrets = sorted(_registered, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Masks registered secrets in a record's final message and traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
