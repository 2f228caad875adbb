"""Every error syncer raises on purpose, and what the caller should do about it.

    SyncerError
    ├── ConfigError                 a setting is wrong: stop at start, exit code 2
    ├── ProviderError               a listing could not be fetched: the run fails,
    │   │                           nothing about files changes
    │   ├── RetryableProviderError  may succeed later (network, timeout, 429, 5xx,
    │   │                           a cut-off body): retried within the sync's budget
    │   └── FatalProviderError      will not succeed by retrying (bad key, quota,
    │                               4xx, a response that breaks the protocol)
    ├── SourceBusyError             another process holds the source's lease: try later
    │   └── LeaseLostError          the lease passed to another process during the
    │                               fetch: the listing was not applied (nothing changed)
    └── DatabaseUnavailableError    PostgreSQL cannot be reached or refused us

Messages name the source and the cause and never contain an API key: they are
written to logs, to the terminal and to `sync_runs.error`.
"""

from __future__ import annotations


class SyncerError(Exception):
    """Base of all errors syncer raises deliberately."""


class ConfigError(SyncerError):
    """A setting is missing or invalid. The message names the setting."""


class ProviderError(SyncerError):
    """Fetching a source's listing failed."""


class RetryableProviderError(ProviderError):
    """A failure that may go away: worth another attempt after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FatalProviderError(ProviderError):
    """A failure that retrying cannot fix; the run fails at once."""


class SourceBusyError(SyncerError):
    """Another sync of this source (maybe in another replica) holds its lease."""


class LeaseLostError(SourceBusyError):
    """The source's lease expired and was taken over while this sync fetched.

    The other holder syncs the source; this listing is dropped unapplied.
    """


class DatabaseUnavailableError(SyncerError):
    """The database could not be reached, or failed in a way worth retrying later."""
