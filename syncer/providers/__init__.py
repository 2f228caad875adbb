"""Provider adapters: fetch one source's file listing.

    fetch_listing(source, policy) -> Listing

One module per provider knows its endpoint, body shape and error bodies; `http`
holds the policy they share (time limits, retries, error messages that never show
the key); `items` validates and normalizes the listed items without any I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from syncer.providers import moonshot, siliconflow
from syncer.providers.http import ProviderClient, call_with_retries, fatal, open_client

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import httpx

    from syncer.config import HttpPolicy, SourceConfig
    from syncer.model import Listing
    from syncer.providers.http import Dialect

__all__ = ["fetch_listing"]


@dataclass(frozen=True, slots=True)
class _Adapter:
    dialect: Dialect
    list_files: Callable[[ProviderClient, SourceConfig], Listing]


_ADAPTERS: Final = {
    "siliconflow": _Adapter(siliconflow.DIALECT, siliconflow.list_files),
    "moonshot": _Adapter(moonshot.DIALECT, moonshot.list_files),
}


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
    adapter = _ADAPTERS.get(source.provider)
    if adapter is None:
        raise fatal(source.name, f"unknown provider {source.provider!r}")
    deadline = time.monotonic() + policy.retry_budget + policy.request_deadline
    with open_client(source, policy, transport) as client:
        api = ProviderClient(
            client,
            source_name=source.name,
            policy=policy,
            dialect=adapter.dialect,
            known=known,
            deadline=deadline,
        )

        def attempt() -> Listing:
            api.start_listing()  # each attempt's listing is counted against the caps anew
            return adapter.list_files(api, source)

        return call_with_retries(attempt, policy)
