"""What a provider module declares, and the registry that finds every one of them.

A provider is one module of this package (apprise's plug-ins are the model): it
declares a `PROVIDER = Provider(...)` with everything that defines it, and nothing
outside the module names it. Config, the adapters, alerts, reports and the simulator
read providers from `registry()` only. Adding a provider is: its module, its tests,
its docs.

    Provider
    ├── name, default_base_url, list_limit (page size, or SiliconFlow's truncation)
    ├── dialect       how it authenticates and how its error bodies read (http.Dialect)
    ├── items         where each column is in a listed item (items.ItemFields)
    ├── list_files    one listing: a single request or the shared paginator
    └── personality   how the simulator plays it (Personality)
"""

from __future__ import annotations

import functools
import hmac
import importlib
import pkgutil
from dataclasses import dataclass
from http import HTTPStatus
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Mapping

    from syncer.config import SourceConfig
    from syncer.model import Listing
    from syncer.providers.http import Dialect, ProviderClient
    from syncer.providers.items import ItemFields


@dataclass(frozen=True, slots=True)
class PageRequest:
    """What the simulator understood of a list request.

    size: items per page (None: all); cursor: where the page starts (an id or a token,
    as the personality's `cursor` says); paged: whether the answer says if more follow.
    """

    size: int | None
    cursor: str | None = None
    paged: bool = True


@dataclass(frozen=True, slots=True)
class ServedPage:
    """A page the simulator serves: its items, whether more follow (None: the provider
    does not page), and the cursor of the next page (an id or a token), if any."""

    items: list[Any]
    has_more: bool | None = None
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class SimulatedError:
    """An error answer in the provider's own shape: a JSON document or plain text."""

    status: int
    body: object
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Personality:
    """How `syncer.simulator` plays a provider: ids, files, requests, pages, errors.

    Plain data and small pure functions: the simulator does the serving, paging and
    scripting; this says only what differs from one provider to another.
    """

    api_prefix: str
    """The path segment after the account, e.g. `v1` (the base URL ends with it)."""
    authorized: Callable[[Mapping[str, str], str], bool]
    """Whether the request's headers (lower-case names) carry `api_key` as this provider expects."""
    new_id: Callable[[random.Random], str]
    new_file: Callable[[random.Random, str, int], dict[str, Any]]
    """A realistic file: (rng, id, created_at in Unix seconds)."""
    read_query: Callable[[Mapping[str, list[str]], int | None], PageRequest | SimulatedError]
    """The page asked for, given the query and the account's page size (None: unpaged)."""
    envelope: Callable[[ServedPage], object]
    """A page's body."""
    error: Callable[[int, str | None, str | None], SimulatedError]
    """`status` in the provider's error shape; (status, error type, message)."""
    cursor: str = "id"
    """`id`: a page starts after the file with that id; `token`: an opaque page token."""
    pages: bool = True
    """False: the provider cannot page at all (an account page size is refused)."""
    id_field: str = "id"
    filename_field: str = "filename"
    trace_header: str | None = None
    status_field: str | None = None
    """The item field holding the raw status; None: the provider has no status."""
    statuses: tuple[str, str, str] | None = None
    """The raw (pending, ready, failed) values the churn uses."""
    status_fields: Callable[[str, str], dict[str, Any]] | None = None
    """The item fields that say (status, details); None: no status."""
    expires_at: Callable[[Mapping[str, Any]], float | None] | None = None
    """When a served item expires (Unix seconds): the simulator stops listing it then."""
    expiry_fields: Callable[[int], dict[str, Any]] | None = None
    """The item fields that say a file expires at the given Unix second (None: no expiry)."""
    failure_details: tuple[str, ...] = ("processing failed",)
    """What a file that fails processing says about it (status details)."""
    appearing: tuple[int, int] = (1, 3)
    """How many files appear per churn tick (inclusive range)."""


@dataclass(frozen=True, slots=True)
class Provider:
    """Everything that defines one provider; see the module docstring."""

    name: str
    default_base_url: str
    dialect: Dialect
    items: ItemFields
    list_files: Callable[[ProviderClient, SourceConfig], Listing]
    personality: Personality
    list_limit: int | None = None
    """Default `list_limit`: items asked for per page (None: the provider takes no limit)."""
    list_limit_setting: bool = False
    """Whether `{NAME}_LIST_LIMIT` sets it for the environment-defined source."""

    @property
    def env_prefix(self) -> str:
        return self.name.upper()


@functools.cache
def registry() -> Mapping[str, Provider]:
    """Every provider of this package, by name: each module with a `PROVIDER`."""
    package = importlib.import_module("syncer.providers")
    found: dict[str, Provider] = {}
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"syncer.providers.{module_info.name}")
        provider = getattr(module, "PROVIDER", None)
        if isinstance(provider, Provider):
            found[provider.name] = provider
    return MappingProxyType(dict(sorted(found.items())))


def provider_names() -> tuple[str, ...]:
    """The names of every provider, sorted."""
    return tuple(registry())


def get_provider(name: str) -> Provider:
    """The provider called `name`; KeyError naming the known ones otherwise."""
    try:
        return registry()[name]
    except KeyError:
        raise KeyError(
            f"unknown provider {name!r}; expected one of {', '.join(registry())}"
        ) from None


def bearer_authorized(headers: Mapping[str, str], api_key: str) -> bool:
    """Whether `Authorization: Bearer KEY` names `api_key` (compared in constant time)."""
    return header_is(headers, "authorization", f"Bearer {api_key}", scheme=True)


def header_is(
    headers: Mapping[str, str], name: str, expected: str, *, scheme: bool = False
) -> bool:
    """Whether header `name` equals `expected` (its auth scheme compared case-blind)."""
    value = headers.get(name) or ""
    if scheme:
        given_scheme, _, token = value.partition(" ")
        wanted_scheme, _, wanted = expected.partition(" ")
        return given_scheme.lower() == wanted_scheme.lower() and hmac.compare_digest(
            token.encode(), wanted.encode()
        )
    return hmac.compare_digest(value.encode(), expected.encode())


def query_value(query: Mapping[str, list[str]], name: str) -> str | None:
    """The last value of a query parameter, as a server framework would take it."""
    values = query.get(name)
    return values[-1] if values else None


def page_size(
    query: Mapping[str, list[str]], name: str, *, default: int, maximum: int
) -> int | None:
    """The page size asked for in `name`, defaulted and clamped; None if it is not a number."""
    text = query_value(query, name)
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        return None
    return min(int(text), maximum)


def status_phrase(status: int) -> str:
    """`Not Found` for 404; `HTTP 529` for a status the standard does not name."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
