"""A stand-in for the providers' list-files APIs, served over real HTTP on loopback.

`syncer demo`, the end-to-end tests and the benchmarks point syncer's base URLs at a
`Simulator` instead of the real providers. One server serves several *accounts*, each
mounted at `/{account}/{api prefix}` (`/v1`, Gemini's `/v1beta`) with its own provider,
API key and files; by default one account per provider, named after it. How each
provider behaves (auth headers, ids, files, query, pages, error bodies, statuses,
expiry) is its *personality*, declared in its own module (`syncer.providers.*`); this
module knows no provider by name. Everything a test needs to script is a method call,
and thread-safe:

- state: `add_file`, `add_files`, `update_file`, `set_status`, `delete_file`, and
  `set_raw_items` to serve arbitrary (broken) items verbatim;
- churn: `step()` advances a deterministic scenario by one tick and returns the
  `Change`s it made, which are the events syncer should record at its next sync;
- faults: `inject()` queues `Fault`s consumed one per request, first in first out, and
  `set_persistent_fault()` fails every request until cleared. A queued fault wins over
  the persistent one. Faults apply before authentication, as a failing gateway would.

Listings are in the order files were added, oldest first, for every provider. So an
unpaged `limit` below the file count cuts off the newest files, and an `after` cursor
stays valid after its file is deleted. A file whose expiry (as its personality reads
it) has passed on the simulator's clock is no longer listed: the provider deleted it.

Run `python -m syncer.simulator --help` to serve one by hand.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
import zlib
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qs, urlsplit

from syncer.model import EventKind
from syncer.providers.spec import PageRequest, ServedPage, SimulatedError, registry

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence

    from syncer.providers.spec import Personality

RetryAfter = int | str | datetime
"""Seconds, an HTTP-date, or any string to send verbatim (for testing bad values)."""

_ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HOST = "127.0.0.1"
_JSON = "application/json; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Account:
    """One provider account, served at `/{name}/{api prefix}` and reached with `api_key`.

    `page_size` caps the files per page, whatever the request asks for (a server's
    own maximum). For a provider that takes no page size (Moonshot), it switches on
    OpenAI-style paging, which the real API never does but syncer must cope with. A
    provider that cannot page at all (SiliconFlow) refuses one.
    """

    name: str
    provider: str
    api_key: str
    page_size: int | None = None

    def __post_init__(self) -> None:
        if not _ACCOUNT_NAME.fullmatch(self.name):
            raise ValueError(f"account name {self.name!r} must be one URL path segment")
        providers = registry()
        if self.provider not in providers:
            raise ValueError(
                f"unknown provider {self.provider!r}; expected one of {', '.join(providers)}"
            )
        if self.page_size is not None and (
            not providers[self.provider].personality.pages or self.page_size < 1
        ):
            raise ValueError(
                f"page_size must be a positive number of files, and {self.provider} "
                f"{'pages' if providers[self.provider].personality.pages else 'cannot page'}"
            )

    @property
    def personality(self) -> Personality:
        """How the simulator plays this account's provider."""
        return registry()[self.provider].personality


def default_accounts() -> tuple[Account, ...]:
    """One account per provider, named after it, with the key `sk-sim-{provider}`."""
    return tuple(Account(name, name, f"sk-sim-{name}") for name in registry())


DEFAULT_ACCOUNTS = default_accounts()


@dataclass(frozen=True, slots=True)
class Change:
    """One change `Simulator.step` made, named by the event syncer should record for it.

    `kind` is `appeared`, `status_changed` or `disappeared` (`expired` when a file
    reaches its expiry: `Simulator.expire_due`).
    """

    kind: EventKind
    account: str
    file_id: str
    filename: str
    old_status: str | None = None
    new_status: str | None = None

    def __str__(self) -> str:
        if self.kind is EventKind.STATUS_CHANGED:
            what = f"{self.old_status} -> {self.new_status}"
        elif self.kind is EventKind.DISAPPEARED:
            what = "deleted"
        elif self.kind is EventKind.EXPIRED:
            what = "expired"
        else:
            what = "appeared" + (f" ({self.new_status})" if self.new_status else "")
        return f"{self.account}: {self.filename} [{self.file_id}] {what}"


# --- Faults -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fault(ABC):
    """Something that goes wrong with one request. Build them with the factories:

    `Fault.status(503)`, `Fault.rate_limited(retry_after=1)`, `Fault.response(...)`,
    `Fault.html()`, `Fault.truncated()`, `Fault.slow(2)`, `Fault.drip()`,
    `Fault.reset()`, `Fault.redirect()`, `Fault.broken_paginator()`.
    """

    @abstractmethod
    def serve(self, exchange: _Handler) -> None:
        """Answer one request the faulty way (called by the simulator's request handler)."""

    @staticmethod
    def status(
        http_status: int,
        *,
        error_type: str | None = None,
        message: str | None = None,
        retry_after: RetryAfter | None = None,
    ) -> ProviderError:
        """The account's provider's own error response for `http_status`.

        The error type (or code) defaults to the documented one for the status;
        `error_type` picks another (e.g. Moonshot's 429 `exceeded_current_quota_error`,
        OpenAI's `insufficient_quota`, Anthropic's `enforced_spend_limit_reached`).
        `message` replaces the default message (or SiliconFlow's plain-text body).
        """
        return ProviderError(http_status, error_type, message, retry_after)

    @staticmethod
    def rate_limited(
        retry_after: RetryAfter | None = None, *, error_type: str | None = None
    ) -> ProviderError:
        """A 429 in the provider's shape (its rate-limit type), with `Retry-After` if given."""
        return ProviderError(429, error_type, None, retry_after)

    @staticmethod
    def response(
        http_status: int,
        body: str | bytes = b"",
        *,
        content_type: str = _TEXT,
        headers: Mapping[str, str] | None = None,
    ) -> CustomResponse:
        """Any status, body and headers, sent as given."""
        raw = body.encode() if isinstance(body, str) else body
        return CustomResponse(http_status, raw, content_type, tuple((headers or {}).items()))

    @staticmethod
    def html(http_status: int = 200) -> CustomResponse:
        """An HTML page where JSON was expected, like a captive portal or a WAF block page."""
        return CustomResponse(http_status, _HTML_PAGE, "text/html; charset=utf-8", ())

    @staticmethod
    def truncated(keep: float = 0.5, *, chunked: bool = False) -> TruncatedBody:
        """The real listing cut after a `keep` fraction of its bytes, then the connection closes.

        With `chunked=False` the Content-Length announces the whole body; with
        `chunked=True` the terminating zero-length chunk never comes.
        """
        return TruncatedBody(keep, chunked=chunked)

    @staticmethod
    def slow(seconds: float) -> SlowResponse:
        """The real answer, after a pause of `seconds` before any byte is sent."""
        return SlowResponse(seconds)

    @staticmethod
    def drip(piece_size: int = 16, delay: float = 0.02, *, chunked: bool = False) -> SlowDrip:
        """The real answer, its body written `piece_size` bytes at a time, `delay` s apart."""
        return SlowDrip(piece_size, delay, chunked=chunked)

    @staticmethod
    def reset() -> ConnectionReset:
        """No response at all: the server resets the connection (TCP RST)."""
        return ConnectionReset()

    @staticmethod
    def redirect(location: str | None = None, *, http_status: int = 302) -> Redirect:
        """A redirect to `location`, by default this same URL on this simulator."""
        return Redirect(location, http_status)

    @staticmethod
    def broken_paginator() -> BrokenPaginator:
        """Ignore the cursor and always claim more follow (`has_more`, a next page token),
        like a buggy proxy."""
        return BrokenPaginator()


@dataclass(frozen=True, slots=True)
class ProviderError(Fault):
    """An error response in the provider's documented shape; see `Fault.status`."""

    http_status: int
    error_type: str | None = None
    message: str | None = None
    retry_after: RetryAfter | None = None

    def serve(self, exchange: _Handler) -> None:
        """Send the provider's error body."""
        personality = exchange.account.personality
        reply = _error_reply(personality, self.http_status, self.error_type, self.message)
        if self.retry_after is not None:
            reply = reply.with_header("Retry-After", _format_retry_after(self.retry_after))
        exchange.send(reply)


@dataclass(frozen=True, slots=True)
class CustomResponse(Fault):
    """A response sent exactly as given; see `Fault.response`."""

    http_status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...]

    def serve(self, exchange: _Handler) -> None:
        """Send the canned response."""
        exchange.send(_Reply(self.http_status, self.body, self.content_type, self.headers))


@dataclass(frozen=True, slots=True)
class TruncatedBody(Fault):
    """The real listing cut short; see `Fault.truncated`."""

    keep: float
    chunked: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.keep < 1:
            raise ValueError("keep is the fraction of the body to send, between 0 and 1")

    def serve(self, exchange: _Handler) -> None:
        """Send a prefix of the real answer, then close the connection."""
        reply = exchange.normal_reply()
        cut_at = min(max(1, int(len(reply.body) * self.keep)), len(reply.body) - 1)
        exchange.send(reply, chunked=self.chunked, cut_at=cut_at)


@dataclass(frozen=True, slots=True)
class SlowResponse(Fault):
    """The real answer, late; see `Fault.slow`."""

    seconds: float

    def serve(self, exchange: _Handler) -> None:
        """Wait, then answer normally."""
        time.sleep(self.seconds)
        exchange.send(exchange.normal_reply())


@dataclass(frozen=True, slots=True)
class SlowDrip(Fault):
    """The real answer, trickled out; see `Fault.drip`."""

    piece_size: int
    delay: float
    chunked: bool = False

    def __post_init__(self) -> None:
        if self.piece_size < 1:
            raise ValueError("piece_size must be at least one byte")

    def serve(self, exchange: _Handler) -> None:
        """Send the real answer a few bytes at a time."""
        reply = exchange.normal_reply()
        exchange.send(reply, chunked=self.chunked, piece_size=self.piece_size, delay=self.delay)


@dataclass(frozen=True, slots=True)
class ConnectionReset(Fault):
    """A connection reset with no response; see `Fault.reset`."""

    def serve(self, exchange: _Handler) -> None:
        """Reset the connection."""
        exchange.reset()


@dataclass(frozen=True, slots=True)
class Redirect(Fault):
    """A redirect; see `Fault.redirect`."""

    location: str | None
    http_status: int = 302

    def serve(self, exchange: _Handler) -> None:
        """Send the redirect, with an empty body."""
        location = self.location or exchange.own_url()
        exchange.send(_Reply(self.http_status, b"", _TEXT, (("Location", location),)))


@dataclass(frozen=True, slots=True)
class BrokenPaginator(Fault):
    """A listing that never ends; see `Fault.broken_paginator`."""

    def serve(self, exchange: _Handler) -> None:
        """Send the first page whatever `after` says, claiming there is more."""
        exchange.send(exchange.normal_reply(broken_paginator=True))


# --- Hostile faults -----------------------------------------------------------------
# What an attacker (or a badly broken gateway) could send, for the hardening tests:
# each is built directly, e.g. `sim.inject("moonshot", HeaderDrip(0.5))`.


@dataclass(frozen=True, slots=True)
class HeaderDrip(Fault):
    """A status line and headers sent one byte every `delay` seconds, never ending."""

    delay: float = 1.0

    def serve(self, exchange: _Handler) -> None:
        """Drip header bytes until the client hangs up (a write then fails)."""
        exchange.close_connection = True
        head = b"HTTP/1.1 200 OK\r\nX-Drip: "
        for index in range(1_000_000):
            exchange.wfile.write(head[index : index + 1] or b"a")
            exchange.wfile.flush()
            time.sleep(self.delay)


@dataclass(frozen=True, slots=True)
class Silent(Fault):
    """The connection is accepted and the request read, and nothing is ever answered."""

    def serve(self, exchange: _Handler) -> None:
        """Wait until the client hangs up or the simulator stops."""
        exchange.close_connection = True
        with contextlib.suppress(OSError):
            while exchange.connection.recv(4096):
                pass


@dataclass(frozen=True, slots=True)
class EndlessBody(Fault):
    """A 200 whose body is `size` bytes of JSON whitespace (2 GiB by default)."""

    size: int = 2 << 30

    def serve(self, exchange: _Handler) -> None:
        """Announce the size, then write it a megabyte at a time."""
        exchange.close_connection = True
        exchange.send_response(200)
        exchange.send_header("Content-Type", _JSON)
        exchange.send_header("Content-Length", str(self.size))
        exchange.end_headers()
        block = b" " * (1 << 20)
        for start in range(0, self.size, len(block)):
            exchange.wfile.write(block[: self.size - start])


@dataclass(frozen=True, slots=True)
class EndlessPages(Fault):
    """Moonshot: pages of `per_page` new files each, every one saying `has_more: true`.

    Each page follows its `after` cursor, so no page repeats an id: only a cap on the
    listing's size can stop the listing. Use it as a persistent fault.
    """

    per_page: int = 20_000

    def serve(self, exchange: _Handler) -> None:
        """Answer the page after the `after` cursor."""
        after = parse_qs(urlsplit(exchange.path).query).get("after", ["page-0-0"])[0]
        page = int(after.split("-")[1]) + 1
        items = [
            {
                "id": f"page-{page}-{index}",
                "object": "file",
                "bytes": 1000 + index,
                "created_at": 1_700_000_000 + index,
                "filename": f"endless-{page}-{index}.jsonl",
                "purpose": "batch",
                "status": "ok",
                "status_details": "",
            }
            for index in range(self.per_page)
        ]
        exchange.send(_json_reply(200, {"object": "list", "data": items, "has_more": True}))


def gzip_bomb(size: int = 2 << 30, layers: int = 2) -> bytes:
    """A valid `gzip` body, gzipped again `layers - 1` times, that decodes to `size` zeros.

    2 GiB in two layers is about 5 KB. Serve it with
    `Fault.response(200, gzip_bomb(), headers={"Content-Encoding": "gzip, gzip"})`.
    """
    return _gzip_bomb(size, layers)


@functools.cache
def _gzip_bomb(size: int, layers: int) -> bytes:
    # After a full flush, deflate starts afresh, so every further megabyte of zeros
    # compresses to the same bytes: the body is built by repeating them, and only
    # the trailer (CRC and size of the whole) has to be computed over 2 GiB.
    block = bytes(1 << 20)
    blocks = max(size >> 20, 2)
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    head = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    final_block = compressor.flush()[:-8]
    crc = 0
    for _ in range(blocks):
        crc = zlib.crc32(block, crc)
    total = blocks << 20
    body = (
        head + repeated * (blocks - 1) + final_block + struct.pack("<II", crc, total & 0xFFFFFFFF)
    )
    for _ in range(layers - 1):
        compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
        body = compressor.compress(body) + compressor.flush()
    return body


# --- The wire formats ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reply:
    """A complete HTTP response, before it is written (perhaps faultily)."""

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()

    def with_header(self, name: str, value: str) -> _Reply:
        return replace(self, headers=(*self.headers, (name, value)))


_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Access denied</title></head>"
    b"<body><h1>Access denied</h1><p>Please sign in to the network to continue.</p>"
    b"</body></html>\n"
)


def _json_reply(status: int, payload: object) -> _Reply:
    # One dumps call for the whole document: the C encoder does 100,000 files in ~0.1 s.
    return _Reply(status, json.dumps(payload, separators=(",", ":")).encode(), _JSON)


def _error_reply(
    personality: Personality,
    status: int,
    error_type: str | None = None,
    message: str | None = None,
) -> _Reply:
    """`status` in the provider's own error shape (see shared/provider-apis/)."""
    return _simulated_reply(personality.error(status, error_type, message))


def _simulated_reply(error: SimulatedError) -> _Reply:
    if isinstance(error.body, str):
        reply = _Reply(error.status, error.body.encode(), _TEXT, error.headers)
    else:
        reply = replace(_json_reply(error.status, error.body), headers=error.headers)
    return reply


def _format_retry_after(value: RetryAfter) -> str:
    if isinstance(value, datetime):
        return format_datetime(value.astimezone(UTC), usegmt=True)
    return str(value)


def _listing(
    store: _AccountStore, query: dict[str, list[str]], *, broken_paginator: bool
) -> _Reply:
    """The page the query asks for, in the provider's shape (see Personality)."""
    personality = store.account.personality
    request = personality.read_query(query, store.account.page_size)
    if isinstance(request, SimulatedError):
        return _simulated_reply(request)
    if broken_paginator:
        request = replace(request, cursor=None)

    def build() -> _Reply:
        try:
            page = store.page(request, by_token=personality.cursor == "token")
        except KeyError:
            return _error_reply(personality, 400, message=f"invalid cursor: {request.cursor}")
        if broken_paginator:
            page = replace(page, has_more=True, next_cursor=page.next_cursor or "again")
        return _json_reply(200, personality.envelope(page))

    return store.cached_reply(("page", request, broken_paginator), build)


def _token(position: int) -> str:
    """An opaque page token for the page after `position` (urlsafe base64, as Google's)."""
    return base64.urlsafe_b64encode(f"after:{position}".encode()).decode().rstrip("=")


def _token_position(token: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    prefix, _, number = text.partition(":")
    if prefix != "after" or not number.lstrip("-").isdigit():
        return None
    return int(number)


# --- One account's state ------------------------------------------------------------

# Scripted churn, per tick: a few files appear (as many as the personality says),
# every third tick one is deleted, and every fourth file that finishes processing
# fails, starting with the second. So from tick 3 on every kind of change has
# happened, whatever the seed.
_DELETE_EVERY = 3
_FAIL_EVERY = 4


class _AccountStore:
    """One account's files, faults and counters. Every method takes the lock.

    Stored file dicts are never mutated, only replaced, so a request can serialize a
    snapshot of them outside the lock while scripts keep changing the account.
    """

    def __init__(self, account: Account, rng: random.Random, clock: Callable[[], float]) -> None:
        self.account = account
        # Reentrant because step() is built from add() and delete().
        self.lock = threading.RLock()
        self.requests = 0
        self.persistent_fault: Fault | None = None
        self._rng = rng
        self._clock = clock
        self._files: dict[str, dict[str, Any]] = {}
        # Position of every id ever added, deleted ones included, so that a Moonshot
        # `after` cursor naming a file deleted meanwhile still says where to go on.
        self._positions: dict[str, int] = {}
        self._next_position = 0
        self._ordered: tuple[list[str], list[int]] | None = None
        self._faults: deque[Fault] = deque()
        self._raw_items: list[Any] | None = None
        self._ticks = 0
        self._settled = 0
        # Bumped by every change of what a listing shows; see cached_reply.
        self._version = 0
        self._reply_cache: tuple[tuple[int, Hashable], _Reply] | None = None

    # Files.

    def add(self, fields: Mapping[str, object], created_at: int | None = None) -> str:
        with self.lock:
            file_id = self._unused_id()
            item = self.account.personality.new_file(
                self._rng, file_id, int(self._clock()) if created_at is None else created_at
            )
            item.update(fields)
            file_id = item[self.account.personality.id_field]
            if not isinstance(file_id, str) or file_id in self._files:
                raise ValueError(f"{self.account.name}: id {file_id!r} is taken or not a string")
            self._files[file_id] = item
            self._positions[file_id] = self._next_position
            self._next_position += 1
            self._ordered = None
            self._version += 1
            return file_id

    def add_many(self, count: int, fields: Mapping[str, object]) -> list[str]:
        with self.lock:
            # Backdate bulk files a minute apart, so they look like a long-lived account.
            now = int(self._clock())
            return [self.add(fields, now - (count - i) * 60) for i in range(count)]

    def update(self, file_id: str, fields: Mapping[str, object]) -> None:
        with self.lock:
            if fields.get("id", file_id) != file_id:
                raise ValueError("a file's id cannot change; delete it and add another")
            self._files[self._known(file_id)] = {**self._files[file_id], **fields}
            self._version += 1

    def delete(self, file_id: str) -> dict[str, Any]:
        with self.lock:
            self._ordered = None
            self._version += 1
            return self._files.pop(self._known(file_id))

    def copies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(item) for item in self._files.values()]

    def set_raw_items(self, items: list[Any] | None) -> None:
        # A JSON round trip detaches the caller's objects and fails early on what
        # cannot be sent.
        raw = None if items is None else json.loads(json.dumps(items))
        with self.lock:
            self._raw_items = raw
            self._version += 1

    def set_page_size(self, size: int | None) -> None:
        with self.lock:
            self.account = replace(self.account, page_size=size)  # validates it
            self._version += 1

    def cached_reply(self, key: Hashable, build: Callable[[], _Reply]) -> _Reply:
        """`build()`, or its reply to the same `key` when the account has not changed since.

        Serializing 100,000 files takes a third of a second; the benchmarks list one
        unchanged account again and again.
        """
        with self.lock:
            version, cached = self._version, self._reply_cache
            if cached is not None and cached[0] == (version, key):
                return cached[1]
        reply = build()
        with self.lock:
            if self._version == version:
                self._reply_cache = ((version, key), reply)
        return reply

    # Listings: lists of references to the stored (never mutated) dicts.

    def page(self, request: PageRequest, *, by_token: bool) -> ServedPage:
        """The page `request` asks for: raw items whole, or up to `size` files from the
        cursor on, with whether more follow (None when unpaged) and the next cursor.

        Raises KeyError for a cursor this account never handed out.
        """
        with self.lock:
            if self._raw_items is not None:
                return ServedPage(list(self._raw_items), False if request.paged else None)
            self._expire_due()
            if not request.paged:
                files = self._files.values()
                return ServedPage(
                    list(files if request.size is None else islice(files, request.size))
                )
            ids, positions = self._order()
            start = 0
            if request.cursor is not None and by_token:
                start = self._token_start(request.cursor, positions)
            elif request.cursor is not None:
                start = bisect_right(positions, self._positions[request.cursor])
            size = len(ids) if request.size is None else request.size
            chunk = ids[start : start + size]
            more = start + size < len(ids)
            if not more:
                cursor = None
            elif by_token:
                cursor = _token(self._positions[chunk[-1]] if chunk else -1)
            else:
                cursor = chunk[-1] if chunk else None
            return ServedPage([self._files[file_id] for file_id in chunk], more, cursor)

    def _token_start(self, token: str, positions: list[int]) -> int:
        position = _token_position(token)
        if position is None:
            raise KeyError(token)
        return bisect_right(positions, position)

    def _expire_due(self) -> list[Change]:
        """Delete the files whose expiry has passed on the clock, as the provider would."""
        expires_at = self.account.personality.expires_at
        if expires_at is None:
            return []
        now = self._clock()
        due = [
            item
            for item in self._files.values()
            if (at := expires_at(item)) is not None and at <= now
        ]
        for item in due:
            self.delete(item[self.account.personality.id_field])
        return [self._change(EventKind.EXPIRED, item, self._status(item), None) for item in due]

    def expire_due(self) -> list[Change]:
        with self.lock:
            return self._expire_due()

    # Faults.

    def queue(self, fault: Fault, times: int) -> None:
        with self.lock:
            self._faults.extend([fault] * times)

    def admit(self) -> Fault | None:
        """Count a request and say how it must fail, if it must."""
        with self.lock:
            self.requests += 1
            return self._faults.popleft() if self._faults else self.persistent_fault

    # Churn.

    def step(self) -> list[Change]:
        with self.lock:
            self._ticks += 1
            personality = self.account.personality
            changes = self._settle()
            if self._ticks % _DELETE_EVERY == 0 and self._files:
                changes.append(self._delete_one())
            changes.extend(self._appear(self._rng.randint(*personality.appearing)))
            return changes

    def _settle(self) -> list[Change]:
        personality = self.account.personality
        if personality.statuses is None or personality.status_fields is None:
            return []
        pending, ready, failure = personality.statuses
        processing = [f for f in self._files.values() if self._status(f) == pending]
        changes = []
        for item in processing:
            failed = self._settled % _FAIL_EVERY == 1
            self._settled += 1
            status = failure if failed else ready
            details = self._rng.choice(personality.failure_details) if failed else ""
            self.update(item[personality.id_field], personality.status_fields(status, details))
            changes.append(self._change(EventKind.STATUS_CHANGED, item, pending, status))
        return changes

    def _delete_one(self) -> Change:
        victim = self.delete(self._rng.choice(list(self._files)))
        return self._change(EventKind.DISAPPEARED, victim, self._status(victim), None)

    def _appear(self, count: int) -> list[Change]:
        personality = self.account.personality
        fields: dict[str, Any] = {}
        if personality.statuses is not None and personality.status_fields is not None:
            fields = personality.status_fields(personality.statuses[0], "")
        new = [self._files[self.add(fields)] for _ in range(count)]
        return [self._change(EventKind.APPEARED, item, None, self._status(item)) for item in new]

    def _status(self, item: Mapping[str, Any]) -> str | None:
        field = self.account.personality.status_field
        status = item.get(field) if field is not None else None
        return status if isinstance(status, str) else None

    def _change(
        self, kind: EventKind, item: Mapping[str, Any], old: str | None, new: str | None
    ) -> Change:
        personality = self.account.personality
        return Change(
            kind,
            self.account.name,
            item[personality.id_field],
            str(item.get(personality.filename_field, "")),
            old,
            new,
        )

    # Helpers.

    def _unused_id(self) -> str:
        while True:
            file_id = self.account.personality.new_id(self._rng)
            if file_id not in self._positions:
                return file_id

    def _known(self, file_id: str) -> str:
        if file_id not in self._files:
            raise KeyError(f"{self.account.name} has no file {file_id!r}")
        return file_id

    def _order(self) -> tuple[list[str], list[int]]:
        # Cached between additions and deletions so that paging through 100,000 files
        # does not rebuild the order for every page.
        if self._ordered is None:
            ids = list(self._files)
            self._ordered = ids, [self._positions[file_id] for file_id in ids]
        return self._ordered


# --- HTTP ---------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, stores: Mapping[str, _AccountStore]) -> None:
        self.stores = stores
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: tuple[str, int]
    ) -> None:
        # Clients hanging up mid-answer (timeouts, slow faults, stop()) are part of the
        # job. Anything else is a bug in the simulator and should be seen.
        if not isinstance(sys.exception(), OSError):
            super().handle_error(request, client_address)

    def opened(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def closed(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def hang_up_all(self) -> None:
        """End every open connection, so idle keep-alive handler threads exit now."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """Serves one connection; `do_GET` routes, then a fault or the listing answers."""

    # HTTP/1.1 keeps connections alive, as the real APIs do; every reply is delimited
    # by Content-Length or chunking.
    protocol_version = "HTTP/1.1"
    server_version = "syncer-simulator"
    sys_version = ""
    # Each drip piece must leave as its own TCP segment, not be coalesced by Nagle.
    disable_nagle_algorithm = True

    # Set by do_GET for each request; one handler serves a whole keep-alive connection.
    account: Account
    _store: _AccountStore
    _route: str
    _query: dict[str, list[str]]
    _trace_header: str | None = None

    def setup(self) -> None:
        super().setup()
        self._server.opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._server.closed(self.connection)

    # The parameter names are the base class's.
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Stay silent: tests run many requests and must keep stderr clean."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        name, _, self._route = url.path.lstrip("/").partition("/")
        store = self._server.stores.get(name)
        self._trace_header = store.account.personality.trace_header if store else None
        if store is None:
            self.send(_Reply(404, b"404 page not found", _TEXT))
            return
        self._store, self._query = store, parse_qs(url.query)
        self.account = store.account
        fault = store.admit()
        if fault is None:
            self.send(self.normal_reply())
        else:
            fault.serve(self)

    def normal_reply(self, *, broken_paginator: bool = False) -> _Reply:
        """What the provider would answer to this request."""
        personality = self.account.personality
        headers = {name.lower(): value for name, value in self.headers.items()}
        if not personality.authorized(headers, self.account.api_key):
            return _error_reply(personality, 401)
        if self._route != f"{personality.api_prefix}/files":
            return _error_reply(personality, 404)
        return _listing(self._store, self._query, broken_paginator=broken_paginator)

    def send(
        self,
        reply: _Reply,
        *,
        chunked: bool = False,
        piece_size: int = 0,
        delay: float = 0.0,
        cut_at: int | None = None,
    ) -> None:
        """Write `reply`: in pieces `delay` s apart if asked, and cut after `cut_at` bytes.

        A cut body still announces its full length (or never ends its chunking), and
        the connection then closes, as when a proxy dies mid-response.
        """
        self.send_response(reply.status)
        for header, value in (("Content-Type", reply.content_type), *reply.headers):
            self.send_header(header, value)
        if self._trace_header:
            self.send_header(self._trace_header, uuid.uuid4().hex)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        for index, piece in enumerate(_pieces(reply.body[:cut_at], piece_size)):
            if index and delay:
                time.sleep(delay)
            self.wfile.write(b"%X\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if cut_at is not None:
            self.close_connection = True
        elif chunked:
            self.wfile.write(b"0\r\n\r\n")

    def reset(self) -> None:
        """Drop the connection with a TCP RST instead of answering."""
        # A zero linger time makes close() reset the connection rather than end it with
        # a FIN. The socket is really closed when finish() closes the request's files.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def own_url(self) -> str:
        """This request's URL on this simulator."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{self.path}"

    @property
    def _server(self) -> _Server:
        assert isinstance(self.server, _Server)
        return self.server


def _pieces(body: bytes, size: int) -> Iterator[bytes]:
    step = size if size > 0 else max(len(body), 1)
    for start in range(0, len(body), step):
        yield body[start : start + step]


# --- The public handle --------------------------------------------------------------


class Simulator:
    """Every provider's list API on `127.0.0.1`, scriptable from Python.

    `with Simulator(seed=1) as sim:` serves until the block ends. Scripting methods
    work before `start()` too. With a `seed`, generated ids, files and churn are the
    same on every run; `clock` (Unix seconds) sets the files' `created_at`.
    Unknown account names and file ids raise KeyError. `host` is the address to serve
    on: another local address (a container bridge's gateway) lets containers reach it.
    """

    def __init__(
        self,
        accounts: Iterable[Account] = DEFAULT_ACCOUNTS,
        *,
        seed: int | None = None,
        port: int = 0,
        host: str = _HOST,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stores: dict[str, _AccountStore] = {}
        for account in accounts:
            if account.name in self._stores:
                raise ValueError(f"two accounts are named {account.name!r}")
            # One generator per account, so stepping one account leaves the others'
            # scenario unchanged. Fake data, so a non-cryptographic generator is right.
            rng = random.Random(None if seed is None else f"{seed}/{account.name}")  # noqa: S311
            self._stores[account.name] = _AccountStore(account, rng, clock)
        self._host, self._requested_port = host, port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle.

    def start(self) -> Self:
        """Bind and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        self._server = _Server(self._host, self._requested_port, self._stores)
        # stop() waits up to one poll interval, and tests start many simulators; 100
        # idle wake-ups a second cost next to nothing.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="syncer-simulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, hang up open connections and release the port."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.hang_up_all()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # Where to reach it.

    @property
    def port(self) -> int:
        """The TCP port being served."""
        if self._server is None:
            raise RuntimeError("the simulator is not running; call start() first")
        return self._server.server_port

    @property
    def accounts(self) -> tuple[Account, ...]:
        """The accounts served, in the order given."""
        return tuple(store.account for store in self._stores.values())

    def base_url(self, account: str) -> str:
        """The base URL to configure syncer with, e.g. `http://127.0.0.1:PORT/moonshot/v1`."""
        prefix = self._store(account).account.personality.api_prefix
        return f"http://{self._host}:{self.port}/{account}/{prefix}"

    def api_key(self, account: str) -> str:
        """The key `account` accepts (in its provider's auth header)."""
        return self._store(account).account.api_key

    # Files.

    def add_file(self, account: str, **fields: object) -> str:
        """Add one file and return its id; missing fields get realistic random values.

        Given fields override the generated ones, and may be odd on purpose. Files of
        providers with a status are generated ready (Moonshot `ok`, Gemini `ACTIVE`).
        """
        return self._store(account).add(fields)

    def add_files(self, account: str, count: int, **fields: object) -> list[str]:
        """Add `count` files at once (created a minute apart, in the past); return their ids."""
        return self._store(account).add_many(count, fields)

    def update_file(self, account: str, file_id: str, **fields: object) -> None:
        """Change fields of a file; it keeps its place in the listing."""
        self._store(account).update(file_id, fields)

    def set_status(self, account: str, file_id: str, status: str, details: str = "") -> None:
        """Set a file's raw status and its details, in the fields its provider uses."""
        store = self._store(account)
        status_fields = store.account.personality.status_fields
        if status_fields is None:
            raise ValueError(
                f"{account} is a {store.account.provider} account: files have no status"
            )
        store.update(file_id, status_fields(status, details))

    def delete_file(self, account: str, file_id: str) -> None:
        """Remove a file from the account."""
        self._store(account).delete(file_id)

    def files(self, account: str) -> list[dict[str, Any]]:
        """Copies of the account's files, in listing order."""
        return self._store(account).copies()

    def set_raw_items(self, account: str, items: list[Any] | None) -> None:
        """Serve `items` verbatim as the listing's `data` (None: back to the files).

        Raw items are sent whole on one page that says no more follow, ignoring any
        limit or paging: they are for testing how syncer copes with bad items, not with
        listing sizes.
        """
        self._store(account).set_raw_items(items)

    def set_page_size(self, account: str, size: int | None) -> None:
        """Serve pages of at most `size` files (None: as many as the request asks for)."""
        self._store(account).set_page_size(size)

    def expire_due(self, account: str | None = None) -> list[Change]:
        """Delete the files whose expiry has passed on the clock, as their provider
        does (listings do it too), and return them as `expired` changes."""
        names = list(self._stores) if account is None else [account]
        return [change for name in names for change in self._store(name).expire_due()]

    def request_count(self, account: str) -> int:
        """Requests made to `account` so far, faulty ones included."""
        store = self._store(account)
        with store.lock:
            return store.requests

    # Churn and faults.

    def step(self, account: str | None = None) -> list[Change]:
        """Advance the churn scenario one tick for `account`, or for every account.

        New files appear (pending, for providers with a status); files pending since the
        last tick become ready or, one in four, failed with details; every third tick
        one file is deleted. Each kind happens by the third tick.
        """
        names = list(self._stores) if account is None else [account]
        return [change for name in names for change in self._store(name).step()]

    def inject(self, account: str, fault: Fault, times: int = 1) -> None:
        """Queue `fault` for the next `times` requests to `account` (after those queued)."""
        if times < 1:
            raise ValueError("times must be at least 1")
        self._store(account).queue(fault, times)

    def set_persistent_fault(self, account: str, fault: Fault | None) -> None:
        """Fail every request to `account` with `fault` until set back to None."""
        store = self._store(account)
        with store.lock:
            store.persistent_fault = fault

    def _store(self, account: str) -> _AccountStore:
        try:
            return self._stores[account]
        except KeyError:
            raise KeyError(f"no account {account!r}; have {list(self._stores)}") from None


# --- Manual use ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the default accounts until interrupted, stepping the churn now and then."""
    parser = argparse.ArgumentParser(
        prog="python -m syncer.simulator", description="Serve fake provider list APIs."
    )
    parser.add_argument("--port", type=int, default=8999, help="0 picks a free port")
    parser.add_argument("--files", type=int, default=100, help="files per account at start")
    parser.add_argument("--step-seconds", type=float, default=10.0, help="0 never steps")
    parser.add_argument("--seed", type=int, help="make ids and churn repeatable")
    args = parser.parse_args(argv)
    with Simulator(port=args.port, seed=args.seed) as sim:
        for account in sim.accounts:
            sim.add_files(account.name, args.files)
            prefix = account.name.upper().replace("-", "_").replace(".", "_")
            _say(f"{prefix}_BASE_URL={sim.base_url(account.name)}")
            _say(f"{prefix}_API_KEY={account.api_key}")
        try:
            _churn_forever(sim, args.step_seconds)
        except KeyboardInterrupt:
            _say("stopped")
    return 0


def _churn_forever(sim: Simulator, step_seconds: float) -> None:
    while step_seconds > 0:
        time.sleep(step_seconds)
        for change in sim.step():
            _say(str(change))
    threading.Event().wait()  # no churn: just serve


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
