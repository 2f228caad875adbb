"""Keeping API keys and alert URLs out of logs, errors, reprs and the database.

Secrets are wrapped in `Secret` as soon as they are read, so a stray `repr()` or
f-string shows `'***'`. Every secret value is also registered here, and
`redact()` (used by the log filter and before any error text is stored) replaces
any registered value that still slipped into a string: as given, and in the forms
other code writes it in (Python `repr` and JSON escapes, percent-encoding, as an
HTTP library or a log formatter quotes it).
"""

from __future__ import annotations

import json
import logging
import threading
import unicodedata
from typing import Final
from urllib.parse import quote, quote_plus

from syncer.errors import ConfigError

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
    """Remember a value so that `redact` masks it wherever it turns up, in any form."""
    forms = {form for form in _forms(value) if len(form) >= _MIN_SECRET_LENGTH}
    if forms:
        with _lock:
            _registered.update(forms)


def _forms(value: str) -> set[str]:
    """`value` as it may appear in text: raw, escaped, quoted, percent-encoded."""
    escaped = {
        value,
        repr(value)[1:-1],  # how httpx and Python errors quote a header: 'sk-...\\n'
        json.dumps(value)[1:-1],  # a JSON log line or payload
        json.dumps(value, ensure_ascii=False)[1:-1],
        value.encode("unicode_escape").decode("ascii"),
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
    }
    # A value with its surrounding whitespace stripped is the secret too.
    escaped |= {form.strip() for form in set(escaped)}
    return escaped


def check_api_key(setting: str, key: str) -> None:
    """Refuse a key holding whitespace or a control character, naming only `setting`.

    Surrounding whitespace is stripped when keys are read; what is left inside would
    make the HTTP library refuse the header with a message that quotes the key.
    """
    for char in key:
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            raise ConfigError(
                f"{setting}: the key contains whitespace or a control character "
                f"(U+{ord(char):04X}); check how it was copied"
            )


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
