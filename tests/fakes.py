"""The fakes tests share: one simulated account per provider, and what each provider's
error taxonomy should make of its own error answers.

Every provider is played by the simulator (its personality, declared in its module);
nothing here hand-writes an endpoint. The catalogue below is the tests' own statement of
each provider's documented error classes (shared/provider-apis/), so that the modules
are checked against it rather than against themselves.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from syncer.config import HttpPolicy, SourceConfig
from syncer.providers import get_provider
from syncer.redaction import Secret
from syncer.simulator import Account, Fault, Simulator

START = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
PAGE_SIZE = 3
FAST_RETRIES = HttpPolicy(
    connect_timeout=2,
    read_timeout=5,
    request_deadline=10,
    retry_budget=0.4,
    wait_initial=0.02,
    wait_max=0.05,
)


class Clock:
    """A settable clock shared by the simulator (Unix seconds) and syncs (datetimes)."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def unix(self) -> float:
        return self.now.timestamp()

    def __call__(self) -> datetime:
        return self.now


def paged_simulator(provider: str, clock: Clock, *, seed: int = 15) -> Simulator:
    """One account of `provider`, named after it, serving pages of PAGE_SIZE files when
    the provider pages at all."""
    pages = get_provider(provider).personality.pages
    account = Account(provider, provider, f"sk-sim-{provider}-key", PAGE_SIZE if pages else None)
    return Simulator([account], seed=seed, clock=clock.unix)


def source_for(sim: Simulator, account: str, **overrides: Any) -> SourceConfig:
    """A source polling `account` of `sim`; paged providers ask for PAGE_SIZE per page."""
    provider = get_provider(next(a.provider for a in sim.accounts if a.name == account))
    limit = PAGE_SIZE if provider.personality.pages else 10_000
    fields: dict[str, Any] = {
        "name": account,
        "provider": provider.name,
        "api_key": Secret(sim.api_key(account)),
        "base_url": sim.base_url(account),
        "list_limit": limit,
    }
    return SourceConfig(**(fields | overrides))


def a_good_item(provider: str, file_id: str | None = None) -> dict[str, Any]:
    """A realistic item of `provider`, as its simulator makes them."""
    personality = get_provider(provider).personality
    rng = random.Random(file_id or provider)
    return personality.new_file(rng, file_id or personality.new_id(rng), int(START.timestamp()))


@dataclass(frozen=True)
class ErrorCase:
    """An error answer and what syncer must make of it."""

    name: str
    fault: Fault
    retried: bool
    says: str


def error_cases(provider: str) -> list[ErrorCase]:
    """Every documented error class of `provider`: fatal, retryable, quota."""
    common = [
        ErrorCase("auth", Fault.status(401), retried=False, says="HTTP"),
        ErrorCase("forbidden", Fault.status(403), retried=False, says="HTTP 403"),
        ErrorCase("rate limit", Fault.rate_limited(), retried=True, says="HTTP 429"),
        ErrorCase("server error", Fault.status(500), retried=True, says="HTTP 500"),
    ]
    return common + _SPECIFIC.get(provider, [])


_SPECIFIC: dict[str, list[ErrorCase]] = {
    "gemini": [
        ErrorCase("bad key", Fault.status(401), retried=False, says="HTTP 400 API_KEY_INVALID"),
        ErrorCase(
            "daily quota",
            Fault.status(429, error_type="daily_quota"),
            retried=False,
            says="PerDay",
        ),
        ErrorCase("unavailable", Fault.status(503), retried=True, says="HTTP 503"),
    ],
    "siliconflow": [
        ErrorCase("overloaded", Fault.status(503), retried=True, says="code 50505"),
    ],
    "moonshot": [
        ErrorCase(
            "quota",
            Fault.status(429, error_type="exceeded_current_quota_error"),
            retried=False,
            says="exceeded_current_quota_error",
        ),
        ErrorCase(
            "overloaded",
            Fault.status(429, error_type="engine_overloaded_error"),
            retried=True,
            says="engine_overloaded_error",
        ),
    ],
    "openai": [
        ErrorCase(
            "quota",
            Fault.status(429, error_type="insufficient_quota"),
            retried=False,
            says="insufficient_quota",
        ),
        ErrorCase("overloaded", Fault.status(503), retried=True, says="HTTP 503"),
    ],
    "anthropic": [
        ErrorCase(
            "spend limit",
            Fault.status(429, error_type="enforced_spend_limit_reached"),
            retried=False,
            says="enforced_spend_limit_reached",
        ),
        ErrorCase("billing", Fault.status(402), retried=False, says="billing_error"),
        ErrorCase("overloaded", Fault.status(529), retried=True, says="overloaded_error"),
    ],
}


class ScriptedMoonshot:
    """A Moonshot list endpoint over httpx.MockTransport, for tests of one sync's logic
    that script the inventory item by item (`items`, `raw_items`, `fail_with`); tests of
    the wire use the simulator instead."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.items: dict[str, dict[str, Any]] = {}
        self.raw_items: list[Any] | None = None
        self.fail_with: int | None = None

    def add(self, file_id: str, status: str = "ok", **fields: Any) -> None:
        self.items[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": 1000,
            "created_at": 1_760_000_000,
            "filename": f"{file_id}.pdf",
            "purpose": "file-extract",
            "status": status,
            "status_details": "",
            **fields,
        }

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            body = {"error": {"type": "invalid_authentication_error", "message": "no"}}
            return httpx.Response(401, json=body)
        if self.fail_with is not None:
            body = {"error": {"type": "server_error", "message": "down"}}
            return httpx.Response(self.fail_with, json=body)
        items = self.raw_items if self.raw_items is not None else list(self.items.values())
        return httpx.Response(200, content=json.dumps({"object": "list", "data": items}))

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)
