"""Settings: the only module that reads the environment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from syncer.redaction import Secret

PROVIDERS = ("siliconflow", "moonshot")


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """One provider account that syncer polls."""

    name: str
    provider: str
    api_key: Secret
    base_url: str
    interval: float = 300.0
    list_limit: int = 10_000


@dataclass(frozen=True, slots=True)
class HttpPolicy:
    """Time limits for talking to providers.

    `request_deadline` bounds one request from connect to the last byte (a slow-drip
    body cannot hold a sync forever); `retry_budget` bounds all attempts and waits of
    one sync together.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    request_deadline: float = 60.0
    retry_budget: float = 120.0
    wait_initial: float = 0.5
    wait_max: float = 10.0
    max_body_bytes: int = 256 * 1024 * 1024
