"""The HTTP policy every provider adapter shares.

An adapter describes only what differs between providers (how to read its error
bodies, which header carries a trace id) in a `Dialect`. This module owns the rest:
the client and its headers, the time limits, the caps on what one listing may make
syncer hold, turning every failure into a `RetryableProviderError` or
`FatalProviderError` whose message names the source and never the key, and the retry
loop with its budget.

Every response may be hostile, so every bound holds whatever the server sends:

- time: each request (connect, TLS, headers, body) ends by its deadline, because every
  socket operation is given only the time that is left (`_DeadlineBackend`), and one
  listing ends within the retry budget plus one request deadline;
- memory: bodies are decoded here, a bounded piece at a time across any stack of
  content encodings, and the decoded bytes and the items of one listing, over all its
  pages, are counted against SYNCER_MAX_LISTING_BYTES and SYNCER_MAX_LISTING_ITEMS.
"""

from __future__ import annotations

import contextvars
import email.utils
import json
import logging
import math
import random
import ssl
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import httpcore
import httpx
import msgspec
import orjson
import stamina

from syncer.bulk import gc_paused
from syncer.errors import FatalProviderError, ProviderError, RetryableProviderError
from syncer.redaction import redact

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from stamina.instrumentation import RetryDetails

    from syncer.config import HttpPolicy, SourceConfig

T = TypeVar("T")
log = logging.getLogger(__name__)

EXCERPT_CHARS: Final = 200
# Error bodies are read only to be quoted: at most this much of one (bytes, or
# characters of text) is looked at, and a longer one is cut rather than refused.
_QUOTABLE_SIZE: Final = 64 * 1024
_SHORT_CHARS: Final = 60
_NUL_ESCAPE: Final = b"\\u0000"
_DIGITS_AS_ZEROS: Final = bytes.maketrans(b"123456789", b"0" * 9)
_DIGIT_RUN: Final = b"0" * 19
# Bodies are decoded this much at a time, so that a few kilobytes of gzip cannot
# expand into gigabytes before the cap is checked.
_DECODE_PIECE: Final = 256 * 1024
# More layers than this is no real server's doing; each costs a decompressor.
_MAX_ENCODINGS: Final = 4
# Before a body is split into items, the number of JSON values it may hold (commas
# plus one, an upper bound) is compared with this many times the items cap: items
# with more fields than that are no listing's, and splitting a body of tiny items
# costs about 70 bytes per value whatever the cap says.
VALUES_PER_ITEM: Final = 16
# The deadline of the request being made on this thread, read by _DeadlineStream.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "syncer_request_deadline", default=None
)


@dataclass(frozen=True, slots=True)
class ErrorReport:
    """What a provider's error body says, in the provider's own terms."""

    kind: str | None
    """The provider's error type or code, shown after the HTTP status."""
    message: str
    """The provider's explanation; quoted (redacted and shortened) in the error."""
    retryable: bool | None = None
    """The provider's verdict; None lets the HTTP status decide (429 and 5xx retry)."""
    retry_after: float | None = None
    """Seconds the body asks to wait (Gemini's RetryInfo); a Retry-After header wins."""


def bearer(api_key: str) -> dict[str, str]:
    """`Authorization: Bearer KEY`, the OpenAI convention most providers follow."""
    return {"Authorization": f"Bearer {api_key}"}


@dataclass(frozen=True, slots=True)
class Dialect:
    """The parts of a provider's HTTP behaviour that differ from one provider to another.

    Its error taxonomy lives in `read_error`: a verdict of retryable (rate limits,
    overload), fatal (authentication, permissions, quota or billing exhausted), or
    none, which leaves it to the HTTP status.
    """

    read_error: Callable[[bytes], ErrorReport]
    trace_header: str | None = None
    auth: Callable[[str], dict[str, str]] = bearer
    """The headers that carry the API key (and any the provider requires with it)."""


@dataclass(frozen=True, slots=True)
class JsonResponse:
    """The JSON body of a successful response, and how to blame it.

    Either `body` is the parsed body, or, when the adapter asked for its page shape
    and the body fits it (see split_page), `page` is the body decoded to that shape
    with each listed item left as its JSON text, and `body` is None.
    """

    body: object
    source_name: str
    where: str
    trace: str
    storable: bool = False
    """True when no string in `body` holds a NUL or a lone surrogate (see parse_json_checked)."""
    page: Any = None
    content: bytes = b""
    """The body as received, while `page` holds it in parts (JsonResponse.whole)."""
    status: int = 200

    def unexpected(self, reason: str) -> FatalProviderError:
        """An error for a body that is valid JSON but breaks the provider's documented shape.

        Retrying would get the same answer, so it is fatal. `reason` must be short:
        quote provider text through `excerpt`.
        """
        return fatal(
            self.source_name, f"unexpected response from {self.where}: {reason}{self.trace}"
        )


def fatal(source_name: str, text: str) -> FatalProviderError:
    """A fatal error whose message names the source and never a registered secret."""
    return FatalProviderError(redact(f"source {source_name!r}: {text}"))


def retryable(
    source_name: str, text: str, *, retry_after: float | None = None
) -> RetryableProviderError:
    """A retryable error whose message names the source and never a registered secret."""
    return RetryableProviderError(
        redact(f"source {source_name!r}: {text}"), retry_after=retry_after
    )


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """A redacted, single-line, printable preview of provider text for an error message."""
    # Redact before cutting: a key cut in half would no longer be recognized. Control
    # characters (ANSI escapes, lone surrogates) must not reach terminals or the database.
    text = redact(text[:_QUOTABLE_SIZE])
    line = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def parse_json(body: bytes) -> object:
    """Parse a body as the standard library does, refusing NaN and Infinity.

    Raises ValueError (which includes UnicodeDecodeError) or RecursionError.
    """
    return parse_json_checked(body)[0]


def parse_json_checked(body: bytes) -> tuple[object, bool]:
    """The parsed body, and whether its strings are known to be storable in PostgreSQL.

    orjson parses a listing of 100,000 files several times faster than the standard
    library, but it reads integers beyond 64 bits as floats and refuses what the
    standard library accepts (lone surrogates, a UTF-8 BOM, UTF-16): for such a body,
    and for any body orjson refuses, the standard library decides, so the result is
    always the standard library's. The flag is True only when orjson parsed a body
    without a NUL escape: orjson refuses lone surrogates and raw control characters,
    so then no string in the result holds a NUL or a lone surrogate.
    """
    with gc_paused():  # a listing of 100,000 files is a million new objects
        return loads_checked(body)


def loads_checked(body: bytes, *, big_integers: bool | None = None) -> tuple[object, bool]:
    """parse_json_checked without pausing the collector (the caller has).

    `big_integers`: whether `body` may hold an integer beyond 64 bits, when the caller
    knows (False for any part of a body that may_hold_big_integers said holds none);
    None: look.
    """
    if big_integers is None:
        big_integers = may_hold_big_integers(body)
    if not big_integers:
        try:
            return orjson.loads(body), _NUL_ESCAPE not in body
        except orjson.JSONDecodeError:
            pass
    return json.loads(body, parse_constant=_reject_constant), False


def split_page(body: bytes, decoder: msgspec.json.Decoder[T]) -> T | None:
    """`body` decoded to a page shape whose items stay JSON text (`msgspec.Raw`).

    None unless the body is whole, valid UTF-8 JSON of exactly that shape; the caller
    then parses it whole with parse_json_checked, which decides and explains. msgspec
    checks every byte of the JSON, skipped fields and raw items too, except that a
    field it skips may hold invalid UTF-8: hence the check first.
    """
    if not body.isascii():
        try:
            body.decode()
        except UnicodeDecodeError:
            return None
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None


def may_hold_big_integers(body: bytes) -> bool:
    # A run of 19 digits may be an integer outside orjson's 64-bit range (or only a
    # long string of digits: then the standard library parses it, to the same result).
    return _DIGIT_RUN in body.translate(_DIGITS_AS_ZEROS)


def parse_json_or_none(body: bytes) -> object:
    """The parsed body, or None when it is not JSON: error bodies are often plain text."""
    try:
        return parse_json(body)
    except (ValueError, RecursionError):
        return None


def _reject_constant(name: str) -> NoReturn:
    # JSON has no NaN or Infinity; Python's parser accepts them unless told otherwise.
    raise ValueError(f"{name} is not valid JSON")


@cache
def _user_agent() -> str:
    try:
        return f"syncer/{version('syncer')}"
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "syncer/unknown"


@cache
def _ssl_context() -> ssl.SSLContext:
    # httpx's own default (certifi, or SSL_CERT_FILE / SSL_CERT_DIR), built once: loading
    # the CA bundle for every client took 40-80 ms of each sync.
    return httpx.create_ssl_context()


def open_client(
    source: SourceConfig,
    policy: HttpPolicy,
    transport: httpx.BaseTransport | None,
    *,
    auth: Callable[[str], dict[str, str]] = bearer,
) -> httpx.Client:
    """An httpx client for one source: its key (as `auth` sends it), time limits, no redirects.

    Redirects are not followed because they would carry the key's header to wherever
    the server points. Without a `transport`, the network is reached through
    `_DeadlineBackend`, which holds every request to its deadline.
    """
    # No single operation may wait longer than a whole request may take.
    within = policy.request_deadline
    try:
        return httpx.Client(
            headers={**auth(source.api_key.reveal()), "User-Agent": _user_agent()},
            timeout=httpx.Timeout(
                connect=min(policy.connect_timeout, within),
                read=min(policy.read_timeout, within),
                write=min(policy.read_timeout, within),
                pool=min(policy.connect_timeout, within),
            ),
            follow_redirects=False,
            verify=_ssl_context(),
            transport=transport or _DeadlineTransport(_ssl_context()),
        )
    except UnicodeEncodeError:
        # `from None`: the encoding error holds the whole header, key included.
        raise fatal(
            source.name, "the API key contains characters that cannot be sent in an HTTP header"
        ) from None


class ProviderClient:
    """Makes single GET requests for one source; every failure becomes a ProviderError.

    It also keeps the account of one listing, so that every adapter and paginator
    built on it is bounded alike: the decoded bytes of all its responses, counted as
    they are read, and its items, which adapters report through `count_items` before
    they parse them. A listing over either cap is a FatalProviderError.
    """

    def __init__(
        self,
        client: httpx.Client,
        *,
        source_name: str,
        policy: HttpPolicy,
        dialect: Dialect,
        known: Mapping[bytes, str] | None = None,
        deadline: float | None = None,
    ) -> None:
        self._client = client
        self._source_name = source_name
        self._policy = policy
        self._dialect = dialect
        self.known: Mapping[bytes, str] = known or {}
        """Digest -> id of the source's present files, as stored (items.item_digest)."""
        self._deadline = deadline
        self.listed_bytes = 0
        """Decoded body bytes of the current listing so far (start_listing resets it)."""
        self.listed_items = 0
        """Items of the current listing so far, as reported to count_items."""

    def start_listing(self) -> None:
        """Begin a new listing (a new attempt): its bytes and items count from zero."""
        self.listed_bytes = self.listed_items = 0

    def count_items(self, count: int, response: JsonResponse) -> None:
        """Add `count` items of `response` to the listing; fatal beyond the items cap.

        Adapters call it for every page before they parse its items, so that a listing
        of millions of items never becomes millions of objects.
        """
        self.listed_items += count
        cap = self._policy.max_listing_items
        if self.listed_items > cap:
            raise fatal(
                self._source_name,
                f"the listing has more than {cap} items (SYNCER_MAX_LISTING_ITEMS; "
                f"{response.where} alone lists {count}){response.trace}",
            )

    def get_json(
        self,
        url: str,
        params: Mapping[str, str | int] | None = None,
        *,
        split: msgspec.json.Decoder[Any] | None = None,
    ) -> JsonResponse:
        """GET `url` once and return its JSON body. Never retries by itself.

        With `split`, a body of that page shape comes back as `page` (split_page), and
        only another body is parsed whole.
        Raises RetryableProviderError (network trouble, timeouts, 429, 5xx, a body that
        is cut off or not JSON) or FatalProviderError (other statuses, a redirect, a
        listing over its caps, a TLS certificate that does not verify, a URL that
        cannot be requested).
        """
        try:
            request = self._client.build_request("GET", url, params=params)
        except httpx.InvalidURL as exc:
            raise fatal(self._source_name, f"cannot request {url}: {exc}") from exc
        # Userinfo in a base URL is a credential that redact() does not know about.
        where = f"GET {request.url.copy_with(userinfo=b'')}"
        deadline = time.monotonic() + self._policy.request_deadline
        if self._deadline is not None:
            deadline = min(deadline, self._deadline)
        token = _DEADLINE.set(deadline)
        try:
            response = self._client.send(request, stream=True)
            try:
                return self._read_response(response, where, deadline, split)
            finally:
                response.close()
        except httpx.HTTPError as exc:
            raise self._network_error(exc, where, deadline) from exc
        finally:
            _DEADLINE.reset(token)

    def _read_response(
        self,
        response: httpx.Response,
        where: str,
        deadline: float,
        split: msgspec.json.Decoder[Any] | None,
    ) -> JsonResponse:
        status = response.status_code
        trace = self._trace(response)
        if 300 <= status < 400:
            location = excerpt(response.headers.get("location", "nowhere"))
            raise fatal(
                self._source_name,
                f"HTTP {status} from {where} redirects to {location}; syncer does not follow "
                f"redirects (they would carry the API key elsewhere): check base_url{trace}",
            )
        if not response.is_success:
            body = self._read_body(response, where, deadline, limit=_QUOTABLE_SIZE)
            raise self._http_error(response, where, body[:_QUOTABLE_SIZE], trace)
        cap = self._policy.max_listing_bytes
        body = self._read_body(response, where, deadline, limit=cap - self.listed_bytes)
        self.listed_bytes += len(body)
        if self.listed_bytes > cap:
            raise fatal(
                self._source_name,
                f"the listing is larger than {cap} bytes (SYNCER_MAX_LISTING_BYTES): "
                f"{where} returned a body larger than the {cap - self.listed_bytes + len(body)} "
                f"bytes left{trace}",
            )
        self._check_values(body, where, trace)
        page = None if split is None else split_page(body, split)
        if page is not None:
            return JsonResponse(
                None,
                self._source_name,
                where,
                trace,
                page=page,
                content=body,
                status=status,
            )
        return self._parsed(body, status, where, trace)

    def _check_values(self, body: bytes, where: str, trace: str) -> None:
        # Splitting or parsing a body costs memory per JSON value, and a small body can
        # hold millions of them (`{},{},...`): refuse, before either, one that holds
        # more values than a listing within the items cap could.
        values = body.count(b",") + 1
        limit = self._policy.max_listing_items * VALUES_PER_ITEM
        if values > limit:
            raise fatal(
                self._source_name,
                f"{where} returned a body of up to {values} JSON values, more than "
                f"{VALUES_PER_ITEM} per item within SYNCER_MAX_LISTING_ITEMS="
                f"{self._policy.max_listing_items}{trace}",
            )

    def whole(self, response: JsonResponse) -> JsonResponse:
        """`response` with its body parsed whole, for an adapter that cannot use its
        `page` after all (see items.parse_raw_items): as if it had not asked for one."""
        if response.page is None:
            return response
        return self._parsed(response.content, response.status, response.where, response.trace)

    def _parsed(self, body: bytes, status: int, where: str, trace: str) -> JsonResponse:
        try:
            parsed, storable = parse_json_checked(body)
        except (ValueError, RecursionError) as exc:
            # A cut-off body or a proxy's HTML page: the next attempt may be whole.
            raise retryable(
                self._source_name,
                f"HTTP {status} from {where} is not valid JSON ({exc})"
                f"{_quote(body[:_QUOTABLE_SIZE].decode('utf-8', errors='replace'))}{trace}",
            ) from exc
        return JsonResponse(parsed, self._source_name, where, trace, storable=storable)

    def _read_body(
        self, response: httpx.Response, where: str, deadline: float, *, limit: int
    ) -> bytes:
        """Read and decode the body until it ends or grows past `limit`, by `deadline`.

        Decoding happens here, not in httpx, a bounded piece at a time: httpx decodes
        each network chunk whole, and a 3.5 KB chunk of `gzip, gzip` is 2 GiB decoded.
        The result holds at most a piece more than `limit`. The deadline is also held
        by the transport (_DeadlineBackend); this check covers any other transport.
        """
        chunks_in: Iterable[bytes]
        if response.is_stream_consumed:
            # Only a transport that read the body itself (a test's) gets here; the
            # body is in memory already, decoded by httpx.
            decoder, chunks_in = _BodyDecoder(""), [response.content]
        else:
            decoder = _BodyDecoder(response.headers.get("content-encoding", ""))
            chunks_in = response.iter_raw()
        if decoder.unknown:
            raise fatal(
                self._source_name,
                f"{where} answered with Content-Encoding {excerpt(decoder.unknown, 60)!r}, "
                "which syncer did not ask for and cannot decode",
            )
        if decoder.layers > _MAX_ENCODINGS:
            raise fatal(
                self._source_name,
                f"{where} answered with {decoder.layers} stacked content encodings "
                f"(at most {_MAX_ENCODINGS} are accepted)",
            )
        chunks: list[bytes] = []
        size = 0
        try:
            for piece in decoder.decode(chunks_in):
                if time.monotonic() > deadline:
                    raise retryable(
                        self._source_name,
                        f"{where} did not finish within {self._policy.request_deadline:g} s",
                    )
                chunks.append(piece)
                size += len(piece)
                if size > limit:
                    break
        except zlib.error as exc:
            raise retryable(
                self._source_name, f"{where} sent a body that cannot be decoded: {exc}"
            ) from None
        return b"".join(chunks)

    def _http_error(
        self, response: httpx.Response, where: str, body: bytes, trace: str
    ) -> ProviderError:
        status = response.status_code
        report = self._dialect.read_error(body)
        kind = f" {excerpt(report.kind, _SHORT_CHARS)}" if report.kind else ""
        text = f"HTTP {status}{kind} from {where}{_quote(report.message)}{trace}"
        should_retry = report.retryable
        if should_retry is None:
            should_retry = status == 429 or status >= 500
        if not should_retry:
            return fatal(self._source_name, text)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is None:
            retry_after = report.retry_after
        return retryable(self._source_name, text, retry_after=retry_after)

    def _network_error(self, exc: httpx.HTTPError, where: str, deadline: float) -> ProviderError:
        if isinstance(exc, httpx.TimeoutException) and time.monotonic() >= deadline - 0.01:
            return retryable(
                self._source_name,
                f"{where} did not finish within {self._policy.request_deadline:g} s "
                "(SYNCER_REQUEST_TIMEOUT)",
            )
        if _certificate_error(exc) is not None:
            # Retrying cannot make a certificate valid; waiting out the budget would
            # only hide the cause.
            return fatal(
                self._source_name,
                f"{where} failed: the server's TLS certificate does not verify "
                f"({excerpt(str(_certificate_error(exc)))}); check base_url, or point "
                "SSL_CERT_FILE at the CA that signed it",
            )
        text = f"{where} failed: {type(exc).__name__}: {excerpt(str(exc))}"
        # A scheme httpx cannot speak or a request it refuses to send (a key with a
        # newline, say) fails the same way every time.
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
            return fatal(self._source_name, text)
        return retryable(self._source_name, text)

    def _trace(self, response: httpx.Response) -> str:
        header = self._dialect.trace_header
        value = response.headers.get(header) if header else None
        return f" (trace id {excerpt(value, _SHORT_CHARS)})" if value else ""


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind `exc`, if that is what it is."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


class _BodyDecoder:
    """Undoes a response's Content-Encoding, a bounded piece at a time.

    Each layer (`gzip, gzip` is two, undone last first) inflates at most
    `_DECODE_PIECE` bytes per step and hands them on before inflating more, so
    memory stays a few pieces per layer however far the body expands; the caller
    stops pulling once it has enough.
    """

    _WBITS: Final = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16}

    def __init__(self, header: str) -> None:
        names = [name.strip().lower() for name in header.split(",")]
        names = [name for name in names if name and name != "identity"]
        self.unknown = next(
            (name for name in names if name not in self._WBITS and name != "deflate"), ""
        )
        self.layers = len(names)
        # The last encoding applied is the first to undo.
        self._names = names[::-1]

    def decode(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The decoded body, in pieces of at most `_DECODE_PIECE` bytes."""
        stream: Iterator[bytes] = iter(chunks)
        for name in self._names:
            stream = self._inflate(stream, name)
        return stream

    def _inflate(self, chunks: Iterator[bytes], name: str) -> Iterator[bytes]:
        inflater: Any = None
        for chunk in chunks:
            if inflater is None:
                inflater = zlib.decompressobj(self._wbits(name, chunk))
            data = chunk
            while data or inflater.unconsumed_tail:
                piece = inflater.decompress(data or inflater.unconsumed_tail, _DECODE_PIECE)
                data = b""
                if piece:
                    yield piece
                if inflater.eof or (not piece and not inflater.unconsumed_tail):
                    break
            if inflater.eof:
                return  # anything after the end of the stream is ignored, as httpx does
        if inflater is not None and (rest := inflater.flush()):
            yield rest

    def _wbits(self, name: str, first: bytes) -> int:
        if name != "deflate":
            return self._WBITS[name]
        # "deflate" means zlib-wrapped (RFC 9110), but some servers send raw deflate.
        zlib_header = (
            len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
        )
        return zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS


def _time_left(timeout: float | None, error: type[Exception]) -> float | None:
    """`timeout`, shortened to what is left of this thread's request deadline."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the request deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the request's deadline.

    httpcore's timeouts apply to each socket operation, so a server that drips one
    byte of its headers every few seconds would never trip them.
    """

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> object:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own sockets, wrapped in _DeadlineStream."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, left, local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport on a connection pool that uses _DeadlineBackend.

    httpx builds its pool itself and takes no network backend, so the pool is
    replaced by one built the same way (direct connections: syncer sets no proxy).
    """

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=1,
            max_keepalive_connections=1,
            network_backend=_DeadlineBackend(),
        )


def _quote(text: str) -> str:
    """`: <excerpt>` to end a message with, or nothing when there is nothing to quote."""
    quoted = excerpt(text)
    return f": {quoted}" if quoted else ""


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait as a Retry-After header asks: delta-seconds or an HTTP-date.

    Garbage (and NaN or infinity) is ignored; a date in the past means no wait. No
    upper cap here: a wait longer than the retry budget is refused by the retry loop
    with a message that says so, instead of being silently shortened.
    """
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000" parses as naive, but HTTP-dates are GMT
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


class _RetryBudget:
    """stamina's backoff hook: whether, and after how long, to try again.

    Every wait is chosen here, and one that would end beyond the budget's deadline is
    refused (the sync gives up): stamina checks its timeout before sleeping, not
    after, and would let a backoff step or a long Retry-After overshoot it. An attempt
    therefore starts before the deadline and, held to its request deadline, ends at
    most one SYNCER_REQUEST_TIMEOUT after it.
    """

    def __init__(self, policy: HttpPolicy) -> None:
        self._policy = policy
        self._deadline = time.monotonic() + policy.retry_budget
        self._retries = 0
        self.refused_wait: float | None = None

    def __call__(self, exc: Exception) -> bool | float:
        if not isinstance(exc, RetryableProviderError):
            return False
        left = self._deadline - time.monotonic()
        if exc.retry_after is None:
            self._retries += 1
            # A wait that would end past the budget is not taken: the sync gives up.
            wait = self._backoff()
            return wait if wait <= left else False
        # A "Retry-After: 0" on every answer must not turn into a busy loop.
        wait = max(exc.retry_after, self._policy.wait_initial)
        if wait > left:
            self.refused_wait = exc.retry_after
            return False
        return wait

    def _backoff(self) -> float:
        """Exponential backoff with jitter, as stamina computes it."""
        initial = self._policy.wait_initial
        try:
            wait = initial * 2.0 ** (self._retries - 1)
        except OverflowError:
            wait = self._policy.wait_max
        jitter = random.uniform(0, initial)  # noqa: S311 - spreading retries, not a secret
        return min(self._policy.wait_max, wait + jitter)

    def give_up_message(self, error: RetryableProviderError, attempts: int) -> str:
        tried = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        if self.refused_wait is not None:
            return (
                f"{error}; it asked to retry after {self.refused_wait:g} s, "
                f"beyond the retry budget (gave up after {tried})"
            )
        return (
            f"{error} (gave up after {tried} "
            f"within the {self._policy.retry_budget:g} s retry budget)"
        )


def log_retry(details: RetryDetails) -> None:
    """A stamina retry hook: one log line per retry, naming the source and the cause.

    stamina's own hook logs only its event name; the cause is a ProviderError whose
    message already names the source and is redacted.
    """
    log.warning("%s; retry %d in %.1f s", details.caused_by, details.retry_num, details.wait_for)


def call_with_retries(fetch: Callable[[], T], policy: HttpPolicy) -> T:
    """Call `fetch` until it succeeds, fails fatally or the retry budget is spent.

    Only a RetryableProviderError is retried. The last one is re-raised with a
    message that says how many attempts were made.
    """
    budget = _RetryBudget(policy)
    attempts = 0
    try:
        for attempt in stamina.retry_context(
            on=budget,
            attempts=None,
            timeout=policy.retry_budget,
            wait_initial=policy.wait_initial,
            wait_max=policy.wait_max,
        ):
            with attempt:
                attempts = attempt.num
                return fetch()
    except RetryableProviderError as exc:
        raise RetryableProviderError(
            budget.give_up_message(exc, attempts), retry_after=exc.retry_after
        ) from exc
    raise AssertionError("unreachable: stamina either returns or re-raises")
