"""The HTTP policy every provider adapter shares.

An adapter describes only what differs between providers (how to read its error
bodies, which header carries a trace id) in a `Dialect`. This module owns the rest:
the client and its headers, the time limits, the body-size cap, turning every failure
into a `RetryableProviderError` or `FatalProviderError` whose message names the source
and never the key, and the retry loop with its budget.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import httpx
import msgspec
import orjson
import stamina

from syncer.bulk import gc_paused
from syncer.errors import FatalProviderError, ProviderError, RetryableProviderError
from syncer.redaction import redact

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Mapping

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
    the server points.
    """
    try:
        return httpx.Client(
            headers={**auth(source.api_key.reveal()), "User-Agent": _user_agent()},
            timeout=httpx.Timeout(
                connect=policy.connect_timeout,
                read=policy.read_timeout,
                write=policy.read_timeout,
                pool=policy.connect_timeout,
            ),
            follow_redirects=False,
            verify=_ssl_context(),
            transport=transport,
        )
    except UnicodeEncodeError:
        # `from None`: the encoding error holds the whole header, key included.
        raise fatal(
            source.name, "the API key contains characters that cannot be sent in an HTTP header"
        ) from None


class ProviderClient:
    """Makes single GET requests for one source; every failure becomes a ProviderError."""

    def __init__(
        self,
        client: httpx.Client,
        *,
        source_name: str,
        policy: HttpPolicy,
        dialect: Dialect,
        known: Mapping[bytes, str] | None = None,
    ) -> None:
        self._client = client
        self._source_name = source_name
        self._policy = policy
        self._dialect = dialect
        self.known: Mapping[bytes, str] = known or {}
        """Digest -> id of the source's present files, as stored (items.item_digest)."""

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
        body over the size cap, a URL that cannot be requested).
        """
        try:
            request = self._client.build_request("GET", url, params=params)
        except httpx.InvalidURL as exc:
            raise fatal(self._source_name, f"cannot request {url}: {exc}") from exc
        # Userinfo in a base URL is a credential that redact() does not know about.
        where = f"GET {request.url.copy_with(userinfo=b'')}"
        deadline = time.monotonic() + self._policy.request_deadline
        try:
            response = self._client.send(request, stream=True)
            try:
                return self._read_response(response, where, deadline, split)
            finally:
                response.close()
        except httpx.HTTPError as exc:
            raise self._network_error(exc, where) from exc

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
        limit = self._policy.max_body_bytes
        body = self._read_body(response, where, deadline, limit=limit)
        if len(body) > limit:
            raise fatal(
                self._source_name, f"{where} returned a body larger than {limit} bytes{trace}"
            )
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
        """Read the body until it ends or grows past `limit`, within the request deadline.

        The httpx timeouts bound each network operation; only this check stops a server
        that keeps dripping a few bytes just often enough.
        """
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            if time.monotonic() > deadline:
                raise retryable(
                    self._source_name,
                    f"{where} did not finish within {self._policy.request_deadline:g} s",
                )
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                break
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

    def _network_error(self, exc: httpx.HTTPError, where: str) -> ProviderError:
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

    stamina stops once its timeout has passed, but it checks before sleeping, not
    after: a long Retry-After would sleep far past the budget. So the hook refuses
    any wait that would end beyond the budget's deadline.
    """

    def __init__(self, policy: HttpPolicy) -> None:
        self._policy = policy
        self._deadline = time.monotonic() + policy.retry_budget
        self.refused_wait: float | None = None

    def __call__(self, exc: Exception) -> bool | float:
        if not isinstance(exc, RetryableProviderError):
            return False
        if exc.retry_after is None:
            return True  # stamina's exponential backoff with jitter
        # A "Retry-After: 0" on every answer must not turn into a busy loop.
        wait = max(exc.retry_after, self._policy.wait_initial)
        if time.monotonic() + wait > self._deadline:
            self.refused_wait = exc.retry_after
            return False
        return wait

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
