"""A stand-in for the providers' list-files APIs, served over real HTTP on loopback.

`syncer demo`, the end-to-end tests and the benchmarks point syncer's base URLs at a
`Simulator` instead of SiliconFlow or Moonshot. One server serves several *accounts*,
each mounted at `/{account}/v1` with its own provider, API key and files; by default
`siliconflow` and `moonshot`, one of each provider. Everything a test needs to script is
a method call, and thread-safe:

- state: `add_file`, `add_files`, `update_file`, `set_status`, `delete_file`, and
  `set_raw_items` to serve arbitrary (broken) items verbatim;
- churn: `step()` advances a deterministic scenario by one tick and returns the
  `Change`s it made, which are the events syncer should record at its next sync;
- faults: `inject()` queues `Fault`s consumed one per request, first in first out, and
  `set_persistent_fault()` fails every request until cleared. A queued fault wins over
  the persistent one. Faults apply before authentication, as a failing gateway would.

Listings are in the order files were added, oldest first, for both providers. So a
SiliconFlow `limit` below the file count cuts off the newest files, and a Moonshot
`after` cursor stays valid after its file is deleted.

Run `python -m syncer.simulator --help` to serve one by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import secrets
import socket
import string
import struct
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal, Self, get_args
from urllib.parse import parse_qs, urlsplit

from syncer.model import EventKind

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence

Provider = Literal["siliconflow", "moonshot"]
RetryAfter = int | str | datetime
"""Seconds, an HTTP-date, or any string to send verbatim (for testing bad values)."""

_PROVIDERS: tuple[str, ...] = get_args(Provider)
_ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HOST = "127.0.0.1"
_JSON = "application/json; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Account:
    """One provider account, served at `/{name}/v1` and reached with `api_key`.

    `page_size` (Moonshot only) switches on an OpenAI-style paginated listing: pages of
    that many files with `has_more`, continued with `after=<last id>`. The real Moonshot
    API returns everything at once; syncer must cope with both.
    """

    name: str
    provider: Provider
    api_key: str
    page_size: int | None = None

    def __post_init__(self) -> None:
        if not _ACCOUNT_NAME.fullmatch(self.name):
            raise ValueError(f"account name {self.name!r} must be one URL path segment")
        if self.provider not in _PROVIDERS:
            raise ValueError(f"unknown provider {self.provider!r}; expected one of {_PROVIDERS}")
        if self.page_size is not None and (self.provider != "moonshot" or self.page_size < 1):
            raise ValueError("page_size must be a positive number of files, for moonshot only")


DEFAULT_ACCOUNTS = (
    Account("siliconflow", "siliconflow", "sk-sim-siliconflow"),
    Account("moonshot", "moonshot", "sk-sim-moonshot"),
)


@dataclass(frozen=True, slots=True)
class Change:
    """One change `Simulator.step` made, named by the event syncer should record for it.

    `kind` is `appeared`, `status_changed` or `disappeared`.
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

        Moonshot's `error.type` defaults to the documented one for the status;
        `error_type` picks another (e.g. 429 `exceeded_current_quota_error`).
        `message` replaces the default message (or SiliconFlow's plain-text body).
        """
        return ProviderError(http_status, error_type, message, retry_after)

    @staticmethod
    def rate_limited(
        retry_after: RetryAfter | None = None, *, error_type: str = "rate_limit_reached_error"
    ) -> ProviderError:
        """A 429 in the provider's shape, with `Retry-After` if given."""
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
        """Moonshot: ignore `after` and always claim `has_more: true`, like a buggy proxy."""
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
        provider = exchange.account.provider
        reply = _error_reply(provider, self.http_status, self.error_type, self.message)
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


_SILICONFLOW_ERRORS: dict[int, str | dict[str, Any]] = {
    400: {"code": 20012, "message": "Invalid request parameters.", "data": None},
    401: "Invalid token",
    403: "Forbidden",
    404: "404 page not found",
    429: {
        "message": "Request was rejected due to rate limiting. If you want more, please "
        "contact contact@siliconflow.cn. Details: RPM limit reached.",
        "data": None,
    },
    503: {
        "code": 50505,
        "message": "Model service overloaded. Please try again later.",
        "data": None,
    },
}
_MOONSHOT_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_authentication_error",
    403: "permission_denied_error",
    404: "resource_not_found_error",
    429: "rate_limit_reached_error",
}
_MOONSHOT_MESSAGES = {
    "invalid_request_error": "Invalid request",
    "invalid_authentication_error": "Invalid Authentication",
    "permission_denied_error": "The API you are accessing is not open",
    "exceeded_current_quota_error": "Your account is suspended, please check your plan "
    "and billing details",
    "resource_not_found_error": "Not found",
    "rate_limit_reached_error": "Your account request reached max request: 3, please try "
    "again after 1 seconds",
    "engine_overloaded_error": "The engine is currently overloaded, please try again later",
    "server_error": "Internal server error",
}
_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Access denied</title></head>"
    b"<body><h1>Access denied</h1><p>Please sign in to the network to continue.</p>"
    b"</body></html>\n"
)


def _json_reply(status: int, payload: object) -> _Reply:
    # One dumps call for the whole document: the C encoder does 100,000 files in ~0.1 s.
    return _Reply(status, json.dumps(payload, separators=(",", ":")).encode(), _JSON)


def _error_reply(
    provider: str, status: int, error_type: str | None = None, message: str | None = None
) -> _Reply:
    """`status` in `provider`'s own error shape (see shared/provider-apis/README.md)."""
    if provider == "moonshot":
        default_type = "server_error" if status >= 500 else "invalid_request_error"
        kind = error_type or _MOONSHOT_ERROR_TYPES.get(status, default_type)
        text = message or _MOONSHOT_MESSAGES.get(kind, HTTPStatus(status).phrase)
        return _json_reply(status, {"error": {"type": kind, "message": text}})
    shape = _SILICONFLOW_ERRORS.get(status, HTTPStatus(status).phrase)
    if isinstance(shape, dict):
        return _json_reply(status, shape if message is None else {**shape, "message": message})
    return _Reply(status, (message or shape).encode(), _TEXT)


def _format_retry_after(value: RetryAfter) -> str:
    if isinstance(value, datetime):
        return format_datetime(value.astimezone(UTC), usegmt=True)
    return str(value)


def _siliconflow_listing(store: _AccountStore, query: dict[str, list[str]]) -> _Reply:
    if query.get("purpose") != ["batch"]:
        return _error_reply("siliconflow", 400, message="purpose must be batch")
    limit = query.get("limit", ["10"])[-1]
    if not limit.isdigit() or int(limit) < 1:
        return _error_reply("siliconflow", 400, message="limit must be a positive integer")

    def build() -> _Reply:
        items = store.first(int(limit))
        body = {
            "code": 20000,
            "message": "Ok",
            "status": True,
            "data": {"data": items, "object": "file"},
        }
        return _json_reply(200, body)

    return store.cached_reply(("first", int(limit)), build)


def _moonshot_listing(
    store: _AccountStore, query: dict[str, list[str]], *, broken_paginator: bool
) -> _Reply:
    after = None if broken_paginator else query.get("after", [None])[-1]

    def build() -> _Reply:
        try:
            items, has_more = store.page(after)
        except KeyError:
            return _error_reply("moonshot", 400, message=f"invalid cursor: {after}")
        payload: dict[str, object] = {"object": "list", "data": items}
        if broken_paginator:
            payload["has_more"] = True
        elif has_more is not None:
            payload["has_more"] = has_more
        return _json_reply(200, payload)

    return store.cached_reply(("page", after, broken_paginator), build)


def _authorized(header: str | None, api_key: str) -> bool:
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.encode(), api_key.encode())


# --- Realistic files ----------------------------------------------------------------

# Moonshot ids look like xids: 20 characters of base32hex (e.g. clg681objj8g9m7n4je0).
_XID_ALPHABET = string.digits + "abcdefghijklmnopqrstuv"
_WORDS = ("report", "contract", "invoice", "notes", "slides", "paper", "summary", "季度报告")
# purpose -> (file extensions, (min bytes, max bytes)); most files are documents.
_MOONSHOT_PURPOSES: dict[str, tuple[tuple[str, ...], tuple[int, int]]] = {
    "file-extract": (("pdf", "docx", "txt", "pptx", "xlsx", "md"), (2_000, 20_000_000)),
    "image": (("png", "jpg"), (20_000, 5_000_000)),
    "batch": (("jsonl",), (1_000, 50_000_000)),
    "video": (("mp4",), (1_000_000, 100_000_000)),
}
_PURPOSES = tuple(_MOONSHOT_PURPOSES)
_PURPOSE_CUMULATIVE_WEIGHTS = (14, 17, 19, 20)
_MOONSHOT_FAILURES = (
    "file type not supported",
    "failed to extract text: the file is encrypted",
    "file content is empty",
    "file is corrupted and cannot be parsed",
)


def _siliconflow_file(rng: random.Random, file_id: str, created_at: int) -> dict[str, Any]:
    lines = rng.randint(1, 5_000)
    return {
        "id": file_id,
        "object": "file",
        "bytes": lines * rng.randint(150, 3_000),
        "created_at": created_at,
        "filename": f"batch-{rng.choice(_WORDS)}-{rng.randint(1, 9999):04d}.jsonl",
        "purpose": "batch",
        "line_count": lines,
    }


def _moonshot_file(rng: random.Random, file_id: str, created_at: int) -> dict[str, Any]:
    purpose = rng.choices(_PURPOSES, cum_weights=_PURPOSE_CUMULATIVE_WEIGHTS)[0]
    extensions, (smallest, largest) = _MOONSHOT_PURPOSES[purpose]
    return {
        "id": file_id,
        "object": "file",
        "bytes": rng.randint(smallest, largest),
        "created_at": created_at,
        "filename": f"{rng.choice(_WORDS)}-{rng.randint(1, 999)}.{rng.choice(extensions)}",
        "purpose": purpose,
        "status": "ok",
        "status_details": "",
    }


def _random_id(rng: random.Random, provider: str) -> str:
    if provider == "siliconflow":
        return "file-" + "".join(rng.choices(string.ascii_lowercase, k=10))
    return "".join(rng.choices(_XID_ALPHABET, k=20))


# --- One account's state ------------------------------------------------------------

# Scripted churn, per tick: this many files appear, every third tick one is deleted, and
# every fourth Moonshot file that finishes processing fails, starting with the second. So
# from tick 3 on every kind of change has happened, whatever the seed.
_APPEARING = {"siliconflow": (1, 3), "moonshot": (2, 4)}
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
            make = _siliconflow_file if self.account.provider == "siliconflow" else _moonshot_file
            item = make(
                self._rng, file_id, int(self._clock()) if created_at is None else created_at
            )
            item.update(fields)
            file_id = item["id"]
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
            self.account = replace(self.account, page_size=size)
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

    def first(self, limit: int) -> list[Any]:
        """The oldest `limit` files, or all raw items."""
        with self.lock:
            if self._raw_items is not None:
                return list(self._raw_items)
            return list(islice(self._files.values(), limit))

    def page(self, after: str | None) -> tuple[list[Any], bool | None]:
        """The page after the `after` id and whether more follow (None: no paging).

        Raises KeyError for an id this account never had.
        """
        with self.lock:
            if self._raw_items is not None:
                return list(self._raw_items), None
            size = self.account.page_size
            if size is None:
                return list(self._files.values()), None
            ids, positions = self._order()
            start = 0 if after is None else bisect_right(positions, self._positions[after])
            chunk = ids[start : start + size]
            return [self._files[file_id] for file_id in chunk], start + size < len(ids)

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
            changes = self._settle() if self.account.provider == "moonshot" else []
            if self._ticks % _DELETE_EVERY == 0 and self._files:
                changes.append(self._delete_one())
            changes.extend(self._appear(self._rng.randint(*_APPEARING[self.account.provider])))
            return changes

    def _settle(self) -> list[Change]:
        processing = [f for f in self._files.values() if f.get("status") == "processing"]
        changes = []
        for item in processing:
            failed = self._settled % _FAIL_EVERY == 1
            self._settled += 1
            status = "error" if failed else "ok"
            details = self._rng.choice(_MOONSHOT_FAILURES) if failed else ""
            self.update(item["id"], {"status": status, "status_details": details})
            changes.append(self._change(EventKind.STATUS_CHANGED, item, "processing", status))
        return changes

    def _delete_one(self) -> Change:
        victim = self.delete(self._rng.choice(list(self._files)))
        return self._change(EventKind.DISAPPEARED, victim, victim.get("status"), None)

    def _appear(self, count: int) -> list[Change]:
        moonshot = self.account.provider == "moonshot"
        fields = {"status": "processing", "status_details": ""} if moonshot else {}
        new = [self._files[self.add(fields)] for _ in range(count)]
        return [self._change(EventKind.APPEARED, item, None, item.get("status")) for item in new]

    def _change(
        self, kind: EventKind, item: Mapping[str, Any], old: str | None, new: str | None
    ) -> Change:
        return Change(kind, self.account.name, item["id"], item["filename"], old, new)

    # Helpers.

    def _unused_id(self) -> str:
        while True:
            file_id = _random_id(self._rng, self.account.provider)
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
    _traced: bool = False

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
        self._traced = store is not None and store.account.provider == "siliconflow"
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
        provider = self.account.provider
        if not _authorized(self.headers.get("Authorization"), self.account.api_key):
            return _error_reply(provider, 401)
        if self._route != "v1/files":
            return _error_reply(provider, 404)
        if provider == "siliconflow":
            return _siliconflow_listing(self._store, self._query)
        return _moonshot_listing(self._store, self._query, broken_paginator=broken_paginator)

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
        if self._traced:
            self.send_header("x-siliconcloud-trace-id", uuid.uuid4().hex)
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
    """SiliconFlow and Moonshot list APIs on `127.0.0.1`, scriptable from Python.

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
        self._store(account)
        return f"http://{self._host}:{self.port}/{account}/v1"

    def api_key(self, account: str) -> str:
        """The key `account` accepts as `Authorization: Bearer KEY`."""
        return self._store(account).account.api_key

    # Files.

    def add_file(self, account: str, **fields: object) -> str:
        """Add one file and return its id; missing fields get realistic random values.

        Given fields override the generated ones, and may be odd on purpose. Moonshot
        files default to `status="ok"`.
        """
        return self._store(account).add(fields)

    def add_files(self, account: str, count: int, **fields: object) -> list[str]:
        """Add `count` files at once (created a minute apart, in the past); return their ids."""
        return self._store(account).add_many(count, fields)

    def update_file(self, account: str, file_id: str, **fields: object) -> None:
        """Change fields of a file; it keeps its place in the listing."""
        self._store(account).update(file_id, fields)

    def set_status(self, account: str, file_id: str, status: str, details: str = "") -> None:
        """Set a Moonshot file's `status` and `status_details`."""
        store = self._store(account)
        if store.account.provider != "moonshot":
            raise ValueError(
                f"{account} is a {store.account.provider} account: files have no status"
            )
        store.update(file_id, {"status": status, "status_details": details})

    def delete_file(self, account: str, file_id: str) -> None:
        """Remove a file from the account."""
        self._store(account).delete(file_id)

    def files(self, account: str) -> list[dict[str, Any]]:
        """Copies of the account's files, in listing order."""
        return self._store(account).copies()

    def set_raw_items(self, account: str, items: list[Any] | None) -> None:
        """Serve `items` verbatim as the listing's `data` (None: back to the files).

        Raw items are sent whole, ignoring SiliconFlow's `limit` and Moonshot's paging:
        they are for testing how syncer copes with bad items, not with listing sizes.
        """
        self._store(account).set_raw_items(items)

    def set_page_size(self, account: str, size: int | None) -> None:
        """Moonshot: serve pages of `size` files with `has_more`/`after` (None: one listing)."""
        self._store(account).set_page_size(size)

    def request_count(self, account: str) -> int:
        """Requests made to `account` so far, faulty ones included."""
        store = self._store(account)
        with store.lock:
            return store.requests

    # Churn and faults.

    def step(self, account: str | None = None) -> list[Change]:
        """Advance the churn scenario one tick for `account`, or for every account.

        New files appear (Moonshot ones `processing`); Moonshot files processing since
        the last tick become `ok` or, one in four, `error` with `status_details`; every
        third tick one file is deleted. Each kind happens by the third tick.
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
