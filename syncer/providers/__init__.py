"""Provider adapters: fetch one source's file listing.

    fetch_listing(source, policy) -> Listing

Each provider is one module of this package that declares a `PROVIDER` (spec.Provider:
endpoint, auth, pages, item fields, error taxonomy, limits, simulator personality);
`spec.registry()` finds them, and nothing outside a provider's module names it.
`http` holds the policy they share (time limits, retries, error messages that never
show the key); `paginator` walks cursor-style listings; `items` validates and
normalizes the listed items without any I/O.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from syncer.providers.http import ProviderClient, call_with_retries, fatal, open_client
from syncer.providers.spec import Provider, get_provider, provider_names, registry

if TYPE_CHECKING:
    from collections.abc import Mapping

    import httpx

    from syncer.config import HttpPolicy, SourceConfig
    from syncer.model import Listing

__all__ = ["Provider", "fetch_listing", "get_provider", "provider_names", "registry"]


def fetch_listing(
    source: SourceConfig,
    policy: HttpPolicy,
    *,
    transport: httpx.BaseTransport | None = None,
    known: Mapping[bytes, str] | None = None,
) -> Listing:
    """Fetch the whole listing of `source`, retrying what may succeed later.

    Retries (network errors, timeouts, 429, 5xx, cut-off bodies) happen within
    `policy.retry_budget`, honouring Retry-After. Raises FatalProviderError at once for
    what retrying cannot fix, and RetryableProviderError once the budget is spent; no
    other exception for network or protocol trouble. Messages name the source and
    never contain the API key. `transport` replaces the network (tests, simulator).
    `known` maps the digests of the source's stored items to their ids: an item listed
    exactly as stored is not parsed again, only named in `Listing.unchanged`.
    The whole fetch ends within `policy.retry_budget` plus one `request_deadline`,
    whatever the provider does.
    """
    provider = registry().get(source.provider)
    if provider is None:
        raise fatal(source.name, f"unknown provider {source.provider!r}")
    deadline = time.monotonic() + policy.retry_budget + policy.request_deadline
    with open_client(source, policy, transport, auth=provider.dialect.auth) as client:
        api = ProviderClient(
            client,
            source_name=source.name,
            policy=policy,
            dialect=provider.dialect,
            known=known,
            deadline=deadline,
        )

        def attempt() -> Listing:
            api.start_listing()  # each attempt's listing is counted against the caps anew
            return provider.list_files(api, source)

        return call_with_retries(attempt, policy)
