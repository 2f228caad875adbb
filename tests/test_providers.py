"""The provider adapters against fake providers (httpx.MockTransport): no network.

Each test states what a user of `fetch_listing` sees: the files, whether the listing
is complete, which failures are retried, and what the error message says.
"""

from __future__ import annotations

import itertools
import time
import traceback
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import stamina

from syncer.config import HttpPolicy, SourceConfig
from syncer.errors import FatalProviderError, ProviderError, RetryableProviderError
from syncer.model import StatusClass
from syncer.providers import fetch_listing, moonshot
from syncer.providers.http import parse_retry_after
from syncer.providers.items import MAX_PROBLEMS, parse_items
from syncer.providers.paginator import MAX_PAGES
from syncer.redaction import Secret

KEY = "sk-test-7d2a9b3f5c1e0ffee4a8"
BASE_URL = "https://api.example.test/v1"
POLICY = HttpPolicy(
    connect_timeout=1.0,
    read_timeout=1.0,
    request_deadline=5.0,
    retry_budget=2.0,
    wait_initial=0.01,
    wait_max=0.05,
)
CREATED = 1741777570
CREATED_AT = datetime(2025, 3, 12, 11, 6, 10, tzinfo=UTC)


def source(provider: str, *, key: str = KEY, list_limit: int = 10_000) -> SourceConfig:
    return SourceConfig(
        name=f"{provider}-test",
        provider=provider,
        api_key=Secret(key),
        base_url=BASE_URL,
        list_limit=list_limit,
    )


def reply(status=200, *, body=None, text=None, content=b"", headers=None):
    """An answer for FakeProvider: a fresh response each time it is used."""

    def answer(request: httpx.Request) -> httpx.Response:
        if body is not None:
            return httpx.Response(status, json=body, headers=headers)
        if text is not None:
            return httpx.Response(status, text=text, headers=headers)
        return httpx.Response(status, content=content, headers=headers)

    return answer


def raise_(error: Exception):
    def answer(request: httpx.Request) -> httpx.Response:
        raise error

    return answer


class FakeProvider:
    """Answers requests from a script (the last answer repeats) and records them."""

    def __init__(self, *answers) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        return answer(request)

    def fetch(self, provider: str, *, policy: HttpPolicy = POLICY, **source_args):
        return fetch_listing(
            source(provider, **source_args), policy, transport=httpx.MockTransport(self)
        )


def sf_item(file_id="file-kkhtqklcnm", **fields):
    item = {
        "id": file_id,
        "object": "file",
        "bytes": 806,
        "created_at": CREATED,
        "filename": "requests-2.jsonl",
        "purpose": "batch",
        "line_count": 2,
    }
    return item | fields


def sf_body(*items):
    return {"code": 20000, "message": "Ok", "status": True, "data": {"data": list(items)}}


def ms_item(file_id="clg681objj8g9m7n4je0", **fields):
    item = {
        "id": file_id,
        "object": "file",
        "bytes": 806,
        "created_at": CREATED,
        "filename": "paper.pdf",
        "purpose": "file-extract",
        "status": "ok",
        "status_details": "",
    }
    return item | fields


def ms_body(*items, **extra):
    return {"object": "list", "data": list(items)} | extra


def ms_error(status, kind, message="something happened", **headers):
    return reply(status, body={"error": {"type": kind, "message": message}}, headers=headers)


SF_OK = reply(body=sf_body(sf_item()))
MS_OK = reply(body=ms_body(ms_item()))


@pytest.fixture(autouse=True)
def real_retries():
    """Real stamina behaviour unless a test asks otherwise, whatever other tests set."""
    with stamina.set_testing(testing=False):
        yield


@pytest.fixture
def attempts_3():
    """Retries without waiting, stopping after exactly three attempts."""
    with stamina.set_testing(testing=True, attempts=3):
        yield


@pytest.fixture
def sleeps(monkeypatch):
    """Records the backoff sleeps between attempts instead of sleeping."""
    recorded: list[float] = []
    monkeypatch.setattr(time, "sleep", recorded.append)
    return recorded


# --- happy paths ----------------------------------------------------------------------


def test_siliconflow_listing_is_normalized():
    fake = FakeProvider(
        reply(
            body=sf_body(
                sf_item("file-a"),
                sf_item("file-b", created_at=None, createdAt=CREATED, line_count=None),
                sf_item("file-c", created_at=CREATED * 1000 + 250, bytes=806.0, extra={"x": 1}),
            )
        )
    )

    listing = fake.fetch("siliconflow")

    assert listing.complete
    assert [f.file_id for f in listing.files] == ["file-a", "file-b", "file-c"]
    first, second, third = listing.files
    assert (first.filename, first.purpose, first.bytes, first.line_count) == (
        "requests-2.jsonl",
        "batch",
        806,
        2,
    )
    assert (first.status, first.status_details, first.status_class) == (
        None,
        None,
        StatusClass.READY,
    )
    assert first.created_at == CREATED_AT
    assert first.raw == sf_item("file-a")
    assert second.created_at == CREATED_AT
    assert second.line_count is None
    assert third.created_at == CREATED_AT + timedelta(milliseconds=250)
    assert third.bytes == 806
    assert isinstance(third.bytes, int)
    assert third.raw["extra"] == {"x": 1}


def test_siliconflow_request_asks_for_batch_files_up_to_the_limit_with_the_key():
    fake = FakeProvider(SF_OK)

    fake.fetch("siliconflow", list_limit=500)

    (request,) = fake.requests
    assert request.method == "GET"
    assert request.url.path == "/v1/files"
    assert dict(request.url.params) == {"purpose": "batch", "limit": "500"}
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["User-Agent"].startswith("syncer/")


def test_siliconflow_ignores_a_status_field_it_does_not_document():
    fake = FakeProvider(reply(body=sf_body(sf_item(status="error"))))

    (file,) = fake.fetch("siliconflow").files

    assert (file.status, file.status_class) == (None, StatusClass.READY)


@pytest.mark.parametrize(("items", "truncated"), [(2, True), (3, True), (1, False), (0, False)])
def test_siliconflow_listing_as_long_as_the_limit_may_be_truncated(items, truncated):
    fake = FakeProvider(reply(body=sf_body(*(sf_item(f"file-{i}") for i in range(items)))))

    listing = fake.fetch("siliconflow", list_limit=2)

    assert listing.truncated is truncated
    assert listing.complete is not truncated
    assert len(listing.files) == items


def test_moonshot_listing_is_normalized_with_status_classes():
    fake = FakeProvider(
        reply(
            body=ms_body(
                ms_item("a", status="ok"),
                ms_item("b", status="ready", created_at=CREATED * 1_000_000),
                ms_item("c", status="error", status_details="unsupported file type"),
                ms_item("d", status="processing", status_details=None),
                ms_item("e", status="something-new"),
                ms_item("f", status=None),
            )
        )
    )

    listing = fake.fetch("moonshot")

    assert listing.complete
    assert [(f.file_id, f.status, f.status_class) for f in listing.files] == [
        ("a", "ok", StatusClass.READY),
        ("b", "ready", StatusClass.READY),
        ("c", "error", StatusClass.FAILED),
        ("d", "processing", StatusClass.PENDING),
        ("e", "something-new", StatusClass.UNKNOWN),
        ("f", None, StatusClass.UNKNOWN),
    ]
    assert [f.status_details for f in listing.files[2:4]] == ["unsupported file type", None]
    assert listing.files[1].created_at == CREATED_AT
    (request,) = fake.requests
    assert str(request.url) == f"{BASE_URL}/files"
    assert request.headers["Authorization"] == f"Bearer {KEY}"


def test_moonshot_follows_has_more_after_the_last_id():
    fake = FakeProvider(
        reply(body=ms_body(ms_item("a"), ms_item("b"), has_more=True)),
        reply(body=ms_body(ms_item("c"), has_more=False)),
    )

    listing = fake.fetch("moonshot")

    assert [f.file_id for f in listing.files] == ["a", "b", "c"]
    assert listing.complete
    assert [dict(r.url.params) for r in fake.requests] == [{}, {"after": "b"}]


def test_moonshot_page_that_repeats_ends_the_listing_early_and_incomplete():
    # A proxy that ignores `after` serves the first page again and again.
    fake = FakeProvider(reply(body=ms_body(ms_item("a"), ms_item("b"), has_more=True)))

    listing = fake.fetch("moonshot")

    assert len(fake.requests) == 2
    assert [f.file_id for f in listing.files] == ["a", "b"]
    assert not listing.complete
    assert "page 2 repeats an earlier page" in (listing.early_end or "")


def test_moonshot_has_more_without_items_keeps_what_was_seen_and_is_incomplete():
    fake = FakeProvider(
        reply(body=ms_body(ms_item("a"), has_more=True)), reply(body=ms_body(has_more=True))
    )

    listing = fake.fetch("moonshot")

    assert len(fake.requests) == 2
    assert [f.file_id for f in listing.files] == ["a"]
    assert not listing.complete
    assert "page 2 says more follow but lists no items" in (listing.early_end or "")


def test_moonshot_pagination_stops_at_the_page_cap_incomplete():
    ids = itertools.count()
    fake = FakeProvider(
        lambda _: httpx.Response(200, json=ms_body(ms_item(f"id-{next(ids)}"), has_more=True))
    )

    listing = fake.fetch("moonshot")

    assert len(fake.requests) == MAX_PAGES
    assert len(listing.files) == MAX_PAGES
    assert not listing.complete
    assert f"did not end within {MAX_PAGES} pages" in (listing.early_end or "")


def test_moonshot_has_more_that_is_not_a_boolean_is_fatal():
    # Reading "true" as false would end the listing early and lose files.
    fake = FakeProvider(reply(body=ms_body(ms_item(), has_more="true")))

    with pytest.raises(FatalProviderError, match="has_more is a string, not a boolean"):
        fake.fetch("moonshot")


# --- error shapes: fatal or retried -------------------------------------------------


SF_FATAL_ERRORS = [
    (
        reply(400, body={"code": 20012, "message": "Invalid limit", "data": ""}),
        "HTTP 400 code 20012 from GET",
    ),
    (reply(401, text="Invalid token"), "HTTP 401 from GET"),
    (reply(403, text="Forbidden"), ": Forbidden"),
    (reply(404, text="404 page not found"), ": 404 page not found"),
    (reply(409, text="Conflict"), "HTTP 409 from GET"),
]


@pytest.mark.parametrize(("answer", "fragment"), SF_FATAL_ERRORS)
def test_siliconflow_client_errors_are_fatal(answer, fragment):
    fake = FakeProvider(answer, SF_OK)

    with pytest.raises(FatalProviderError) as caught:
        fake.fetch("siliconflow")

    assert len(fake.requests) == 1
    assert str(caught.value).startswith("source 'siliconflow-test': ")
    assert fragment in str(caught.value)


SF_RETRIED_ERRORS = [
    reply(429, body={"message": "Request was rejected due to rate limiting.", "data": None}),
    reply(503, body={"code": 50505, "message": "Model service overloaded. Try again later."}),
    reply(504, text="upstream request timeout"),
    reply(500, text="Internal Server Error"),
    reply(502, text="<html><h1>502 Bad Gateway</h1></html>"),
]


@pytest.mark.parametrize("answer", SF_RETRIED_ERRORS)
def test_siliconflow_rate_limits_and_server_errors_are_retried(answer):
    fake = FakeProvider(answer, SF_OK)

    assert len(fake.fetch("siliconflow").files) == 1
    assert len(fake.requests) == 2


def test_siliconflow_overload_that_persists_fails_with_its_message(attempts_3):
    fake = FakeProvider(
        reply(503, body={"code": 50505, "message": "Model service overloaded.", "data": ""})
    )

    with pytest.raises(RetryableProviderError) as caught:
        fake.fetch("siliconflow")

    assert str(caught.value) == (
        "source 'siliconflow-test': HTTP 503 code 50505 from GET "
        f"{BASE_URL}/files?purpose=batch&limit=10000: Model service overloaded. "
        "(gave up after 3 attempts within the 2 s retry budget)"
    )


def test_siliconflow_error_message_names_source_request_and_trace_id():
    fake = FakeProvider(
        reply(401, text="Invalid token", headers={"x-siliconcloud-trace-id": "trace-42"})
    )

    with pytest.raises(FatalProviderError) as caught:
        fake.fetch("siliconflow")

    assert str(caught.value) == (
        "source 'siliconflow-test': HTTP 401 from GET "
        f"{BASE_URL}/files?purpose=batch&limit=10000: Invalid token (trace id trace-42)"
    )


MS_ERRORS = [
    # status, type, retried
    (400, "invalid_request_error", False),
    (400, "content_filter", False),
    (401, "invalid_authentication_error", False),
    (403, "exceeded_current_quota_error", False),
    (403, "permission_denied_error", False),
    (404, "resource_not_found_error", False),
    (429, "exceeded_current_quota_error", False),  # balance exhausted: retrying cannot help
    (429, "rate_limit_reached_error", True),
    (429, "engine_overloaded_error", True),
    (500, "server_error", True),
    (500, "unexpected_output", True),
    # An unknown type leaves the decision to the status.
    (429, "brand_new_error", True),
    (503, "brand_new_error", True),
    (418, "brand_new_error", False),
]


@pytest.mark.parametrize(("status", "kind", "retried"), MS_ERRORS)
def test_moonshot_errors_are_decided_by_their_type(status, kind, retried):
    fake = FakeProvider(ms_error(status, kind, "Details here"), MS_OK)

    if retried:
        assert len(fake.fetch("moonshot").files) == 1
        assert len(fake.requests) == 2
    else:
        with pytest.raises(FatalProviderError) as caught:
            fake.fetch("moonshot")
        assert len(fake.requests) == 1
        assert str(caught.value) == (
            f"source 'moonshot-test': HTTP {status} {kind} from GET {BASE_URL}/files: Details here"
        )


@pytest.mark.parametrize(
    ("status", "answer", "retried"),
    [
        (502, reply(502, text="<html>Bad Gateway</html>"), True),
        (503, reply(503, content=b""), True),
        (401, reply(401, text="Unauthorized"), False),
        (400, reply(400, body={"error": "flat string, not an object"}), False),
        (429, reply(429, body={"error": {"type": {"nested": 1}, "message": "odd"}}), True),
        (403, reply(403, body={"error": {"type": ["x"], "message": "odd"}}), False),
    ],
)
def test_moonshot_errors_that_are_not_its_json_fall_back_on_the_status(status, answer, retried):
    fake = FakeProvider(answer, MS_OK)

    if retried:
        fake.fetch("moonshot")
        assert len(fake.requests) == 2
    else:
        with pytest.raises(FatalProviderError, match=f"HTTP {status} from GET"):
            fake.fetch("moonshot")
        assert len(fake.requests) == 1


def test_moonshot_error_message_matches_the_documented_form():
    fake = FakeProvider(ms_error(401, "invalid_authentication_error", "Invalid Authentication"))

    with pytest.raises(FatalProviderError) as caught:
        fake.fetch("moonshot")

    assert str(caught.value) == (
        "source 'moonshot-test': HTTP 401 invalid_authentication_error "
        f"from GET {BASE_URL}/files: Invalid Authentication"
    )


def test_provider_message_is_quoted_short_and_on_one_line():
    message = "line one\n\tline two \x1b[31m" + "x" * 1000
    fake = FakeProvider(ms_error(400, "invalid_request_error", message))

    with pytest.raises(FatalProviderError) as caught:
        fake.fetch("moonshot")

    quoted = str(caught.value).split(": ", 2)[2]
    assert quoted.startswith("line one line two [31mxxx")
    assert len(quoted) == 200
    assert quoted.endswith("...")


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_is_fatal_and_not_followed(status):
    fake = FakeProvider(reply(status, headers={"Location": "https://elsewhere.test/files"}), MS_OK)

    with pytest.raises(FatalProviderError) as caught:
        fake.fetch("moonshot")

    assert "redirects to https://elsewhere.test/files" in str(caught.value)

    assert len(fake.requests) == 1


# --- malformed and wrong-shaped bodies ------------------------------------------------


MALFORMED = [
    b"<!DOCTYPE html><html><body>Cloudflare: please wait</body></html>",
    b'{"object": "list", "data": [{"id": "a", "by',
    b'{"object": "list", "data": [], "weird": NaN}',
    b'{"object": "list", "data": [], "weird": -Infinity}',
    b"\xff\xfe\xfa not utf-8",
    b"",
    b"[" * 100_000 + b"]" * 100_000,
]


@pytest.mark.parametrize("content", MALFORMED)
def test_body_that_is_not_json_is_retried_then_fails_after_the_attempts(content, attempts_3):
    fake = FakeProvider(reply(200, content=content))

    with pytest.raises(RetryableProviderError) as caught:
        fake.fetch("moonshot")

    assert len(fake.requests) == 3
    message = str(caught.value)
    assert message.startswith(f"source 'moonshot-test': HTTP 200 from GET {BASE_URL}/files")
    assert "is not valid JSON" in message
    assert message.endswith("(gave up after 3 attempts within the 2 s retry budget)")


def test_body_cut_off_once_is_retried_and_the_listing_returned():
    fake = FakeProvider(reply(200, content=b'{"object": "list", "data": [{"id"'), MS_OK)

    listing = fake.fetch("moonshot")

    assert len(listing.files) == 1
    assert len(fake.requests) == 2


@pytest.mark.parametrize(
    ("provider", "body", "fragment"),
    [
        ("siliconflow", [], "the body is an array, not an object"),
        ("siliconflow", {"code": 20000, "status": True, "data": {}}, "data.data is missing"),
        ("siliconflow", {"code": 20000, "status": True, "data": [1]}, "data.data is missing"),
        (
            "siliconflow",
            {"code": 20000, "status": True, "data": {"data": {"id": "x"}}},
            "not an array",
        ),
        (
            "siliconflow",
            {"code": 20012, "status": False, "message": "limit too large", "data": None},
            "reports a failure (code 20012, status False): limit too large",
        ),
        ("siliconflow", {"status": True, "data": {"data": []}}, "code None"),
        ("siliconflow", sf_body() | {"status": False}, "status False"),
        ("moonshot", "files", "the body is a string, not an object"),
        ("moonshot", {"object": "list"}, "data is missing or not an array"),
        ("moonshot", {"object": "list", "data": {"a": 1}}, "data is missing or not an array"),
    ],
)
def test_json_of_the_wrong_shape_is_fatal(provider, body, fragment):
    fake = FakeProvider(reply(200, body=body))

    with pytest.raises(FatalProviderError) as caught:
        fake.fetch(provider)

    assert len(fake.requests) == 1
    assert f"source '{provider}-test': unexpected response from GET {BASE_URL}/files" in str(
        caught.value
    )
    assert fragment in str(caught.value)


def test_body_larger_than_the_cap_is_fatal():
    policy = HttpPolicy(max_listing_bytes=1000, wait_initial=0.01, wait_max=0.05)
    fake = FakeProvider(reply(body=ms_body(*(ms_item(f"id-{i}") for i in range(50)))))

    with pytest.raises(FatalProviderError, match="larger than 1000 bytes"):
        fake.fetch("moonshot", policy=policy)


class SlowDrip(httpx.SyncByteStream):
    """A body that arrives a few bytes at a time: every read is quick, the whole is not."""

    def __iter__(self):
        yield b'{"object": "list", "data": ['
        for _ in range(50):
            time.sleep(0.05)
            yield b" "
        yield b"]}"


def test_body_that_drips_past_the_request_deadline_is_retryable(attempts_3):
    policy = HttpPolicy(request_deadline=0.3, wait_initial=0.01, wait_max=0.05)
    fake = FakeProvider(lambda _: httpx.Response(200, stream=SlowDrip()))

    started = time.monotonic()
    with pytest.raises(RetryableProviderError) as caught:
        fake.fetch("moonshot", policy=policy)

    assert time.monotonic() - started < 3 * 0.3 + 1
    assert len(fake.requests) == 3
    assert "did not finish within 0.3 s" in str(caught.value)
    assert "gave up after 3 attempts" in str(caught.value)


# --- network failures -----------------------------------------------------------------


class CutOffBody(httpx.SyncByteStream):
    def __iter__(self):
        yield b'{"object": "list", "data": ['
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


NETWORK_FAILURES = [
    raise_(httpx.ConnectError("[Errno 111] Connection refused")),
    raise_(httpx.ConnectTimeout("timed out")),
    raise_(httpx.ReadTimeout("timed out")),
    raise_(httpx.RemoteProtocolError("Server disconnected without sending a response.")),
    raise_(httpx.ReadError("[Errno 104] Connection reset by peer")),
    lambda _: httpx.Response(200, stream=CutOffBody()),
]


@pytest.mark.parametrize("failure", NETWORK_FAILURES)
def test_network_failure_is_retried_and_the_listing_returned(failure):
    fake = FakeProvider(failure, MS_OK)

    assert len(fake.fetch("moonshot").files) == 1
    assert len(fake.requests) == 2


def test_network_failure_that_persists_fails_with_the_number_of_attempts(attempts_3):
    fake = FakeProvider(raise_(httpx.ConnectError("[Errno 111] Connection refused")))

    with pytest.raises(RetryableProviderError) as caught:
        fake.fetch("siliconflow")

    assert str(caught.value) == (
        f"source 'siliconflow-test': GET {BASE_URL}/files?purpose=batch&limit=10000 failed: "
        "ConnectError: [Errno 111] Connection refused "
        "(gave up after 3 attempts within the 2 s retry budget)"
    )


def test_request_that_can_never_be_sent_is_fatal():
    fake = FakeProvider(raise_(httpx.UnsupportedProtocol("Request URL has an unsupported scheme")))

    with pytest.raises(FatalProviderError, match="UnsupportedProtocol"):
        fake.fetch("moonshot")

    assert len(fake.requests) == 1


def test_retries_stop_when_the_budget_is_spent():
    policy = HttpPolicy(retry_budget=0.3, wait_initial=0.01, wait_max=0.05)
    fake = FakeProvider(ms_error(503, "server_error"))

    started = time.monotonic()
    with pytest.raises(RetryableProviderError) as caught:
        fake.fetch("moonshot", policy=policy)

    assert time.monotonic() - started < 0.3 + 0.5
    assert len(fake.requests) > 2
    assert f"(gave up after {len(fake.requests)} attempts within the 0.3 s retry budget)" in str(
        caught.value
    )


# --- Retry-After ----------------------------------------------------------------------


def test_retry_after_seconds_is_honoured(sleeps):
    fake = FakeProvider(ms_error(429, "rate_limit_reached_error", **{"Retry-After": "1"}), MS_OK)

    fake.fetch("moonshot")

    assert sleeps == [1.0]
    assert len(fake.requests) == 2


def test_retry_after_http_date_is_honoured(sleeps):
    when = datetime.now(UTC) + timedelta(seconds=1.5)
    fake = FakeProvider(
        reply(
            503,
            text="Service Unavailable",
            headers={"Retry-After": format_datetime(when, usegmt=True)},
        ),
        SF_OK,
    )

    fake.fetch("siliconflow")

    # HTTP-dates have whole seconds: the wait is up to a second shorter than asked.
    (slept,) = sleeps
    assert 0.4 <= slept <= 1.5


def test_retry_after_beyond_the_budget_fails_at_once_without_sleeping(sleeps):
    fake = FakeProvider(ms_error(429, "engine_overloaded_error", **{"Retry-After": "600"}), MS_OK)

    with pytest.raises(RetryableProviderError) as caught:
        fake.fetch("moonshot")

    assert sleeps == []
    assert len(fake.requests) == 1
    assert caught.value.retry_after == 600
    assert str(caught.value).endswith(
        "; it asked to retry after 600 s, beyond the retry budget (gave up after 1 attempt)"
    )


def test_garbage_retry_after_falls_back_on_exponential_backoff(sleeps):
    fake = FakeProvider(ms_error(429, "rate_limit_reached_error", **{"Retry-After": "soon"}), MS_OK)

    fake.fetch("moonshot")

    (slept,) = sleeps
    assert 0 < slept <= POLICY.wait_max


def test_retry_after_zero_still_waits_a_little(sleeps):
    fake = FakeProvider(ms_error(503, "server_error", **{"Retry-After": "0"}), MS_OK)

    fake.fetch("moonshot")

    assert sleeps == [POLICY.wait_initial]


NOW = datetime(2025, 3, 12, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 7 ", 7.0),
        ("2.5", 2.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("Wed, 12 Mar 2025 12:00:30 GMT", 30.0),
        ("Wed, 12 Mar 2025 12:00:30 -0000", 30.0),
        ("Wed, 12 Mar 2025 11:00:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        ("nan", None),
        ("inf", None),
        ("1e400", None),
        (None, None),
    ],
)
def test_parse_retry_after(value, seconds):
    assert parse_retry_after(value, now=NOW) == seconds


# --- the key never shows ------------------------------------------------------------


def echoing(status, **kwargs):
    headers = {"x-siliconcloud-trace-id": f"trace {KEY}", "Location": f"https://x.test/?k={KEY}"}
    return reply(status, headers=headers, **kwargs)


# The key across character 200: cutting the quote before redacting would leak its start.
NEAR_THE_CUT = "x" * 180 + f" {KEY} and more"
LEAKING_ANSWERS = [
    ("siliconflow", echoing(401, text=f"Invalid token {KEY}")),
    ("siliconflow", echoing(401, text=NEAR_THE_CUT)),
    ("siliconflow", echoing(400, body={"code": 20012, "message": f"bad key {KEY}", "data": KEY})),
    ("siliconflow", echoing(429, body={"message": f"rate limited for {KEY}", "data": None})),
    ("siliconflow", echoing(200, body={"code": 40001, "status": False, "message": KEY})),
    ("siliconflow", echoing(200, text=f"<html>Authorization: Bearer {KEY}</html>")),
    ("siliconflow", echoing(302)),
    ("moonshot", echoing(401, body={"error": {"type": KEY, "message": f"Bearer {KEY}"}})),
    (
        "moonshot",
        echoing(429, body={"error": {"type": "rate_limit_reached_error", "message": KEY}}),
    ),
    (
        "moonshot",
        echoing(403, body={"error": {"type": "permission_denied_error", "message": NEAR_THE_CUT}}),
    ),
    ("moonshot", echoing(502, text=f"proxy says: {KEY}")),
]


@pytest.mark.parametrize(("provider", "answer"), LEAKING_ANSWERS)
def test_key_echoed_by_the_provider_never_appears_in_errors(provider, answer):
    fake = FakeProvider(answer)

    with stamina.set_testing(testing=True, attempts=2), pytest.raises(ProviderError) as caught:
        fake.fetch(provider)

    error = caught.value
    key_start = KEY[:10]
    assert key_start not in str(error)
    assert key_start not in repr(error)
    assert key_start not in "".join(traceback.format_exception(error))
    assert "***" in str(error)


def test_key_in_a_network_error_never_appears_in_errors(attempts_3):
    fake = FakeProvider(raise_(httpx.ConnectError(f"proxy refused Bearer {KEY}")))

    with pytest.raises(RetryableProviderError) as caught:
        fake.fetch("moonshot")

    assert KEY not in str(caught.value)
    assert KEY not in repr(caught.value)


def test_key_that_cannot_be_sent_is_fatal_without_showing_it():
    key = "sk-test-caf\u00e9-not-ascii"

    with pytest.raises(FatalProviderError) as caught:
        FakeProvider(MS_OK).fetch("moonshot", key=key)

    assert "cannot be sent in an HTTP header" in str(caught.value)
    assert key not in "".join(traceback.format_exception(caught.value))


def test_unknown_provider_is_fatal():
    with pytest.raises(FatalProviderError, match="unknown provider 'nosuch'"):
        FakeProvider(MS_OK).fetch("nosuch")


# --- item validation -----------------------------------------------------------------


GOOD = ms_item("good")

BAD_ITEMS = [
    # item, words the problem must contain
    ("file-1", "is a string, not an object"),
    (["file-1"], "is an array, not an object"),
    (None, "is null, not an object"),
    (ms_item(id=None), "id is null"),
    ({k: v for k, v in ms_item().items() if k != "id"}, "id is null"),
    (ms_item(id=""), "id is a string ''"),
    (ms_item(id=42), "id is a number 42"),
    (ms_item(id="x" * 257), "id is 257 characters long; syncer keeps ids of up to 256"),
    (ms_item(bytes="806"), "bytes is a string '806', not an integer"),
    (ms_item(bytes=True), "bytes is a boolean"),
    (ms_item(bytes=806.5), "bytes is a number 806.5"),
    (ms_item(bytes=None), "bytes is null"),
    (ms_item(bytes=2**63), "bytes 9223372036854775808 is out of range"),
    (ms_item(bytes=-(2**63) - 1), "bytes -9223372036854775809 is out of range"),
    (ms_item(bytes=1e300), "bytes 1000000000"),
    (ms_item(created_at="1741777570"), "created_at is a string"),
    (ms_item(created_at=None), "created_at is null"),
    (ms_item(created_at=True), "created_at is a boolean"),
    (ms_item(created_at=-1), "created_at -1 is out of range"),
    (ms_item(created_at=1e20), "created_at 1e+20 is out of range"),
    (ms_item(created_at=10**400), "created_at 1000000000"),
    (ms_item(created_at=float("inf")), "created_at inf is out of range"),
    (ms_item(filename=None), "filename is null, not a string"),
    (ms_item(filename=123), "filename is a number 123"),
    (ms_item(purpose=["batch"]), "purpose is an array, not a string"),
    (ms_item(line_count="2"), "line_count is a string"),
    (ms_item(line_count=2**31), "line_count 2147483648 is out of range"),
    (ms_item(line_count=1.5), "line_count is a number 1.5"),
    (ms_item(status=1), "status is a number 1, not a string or null"),
    (ms_item(status_details={"code": 1}), "status_details is an object"),
    (ms_item(filename="a\x00b.jsonl"), "NUL character or a lone surrogate"),
    (ms_item(id="\ud800"), "NUL character or a lone surrogate"),
    (ms_item(meta={"tags": [{"k\x00": 1}]}), "NUL character or a lone surrogate"),
    (ms_item(meta=[["ok", "\udfff"]]), "NUL character or a lone surrogate"),
]


@pytest.mark.parametrize(("bad", "problem"), BAD_ITEMS)
def test_unusable_item_is_skipped_counted_and_described(bad, problem):
    parsed = parse_items([GOOD, bad], fields=moonshot.ITEMS)

    assert [f.file_id for f in parsed.files] == ["good"]
    assert parsed.skipped == 1
    (described,) = parsed.problems
    assert described.startswith("item 1")
    assert problem in described


def test_problem_descriptions_stay_short_and_printable():
    huge = "\x00" + "y" * 100_000
    parsed = parse_items([ms_item(huge), ms_item("z", bytes="9" * 1000)], fields=moonshot.ITEMS)

    assert parsed.skipped == 2
    assert all(len(p) < 200 and p.isprintable() for p in parsed.problems)


def test_unusable_item_makes_the_fetched_listing_incomplete():
    fake = FakeProvider(reply(body=ms_body(GOOD, ms_item("bad", bytes="lots"))))

    listing = fake.fetch("moonshot")

    assert [f.file_id for f in listing.files] == ["good"]
    assert listing.skipped == 1
    assert listing.items_listed == 2
    assert not listing.complete
    assert listing.problems == ("item 1 (id 'bad'): bytes is a string 'lots', not an integer",)


ODD_BUT_USABLE = [
    ms_item(bytes=-5),
    ms_item(bytes=806.0),
    ms_item(bytes=2**63 - 1),
    ms_item(line_count=None),
    ms_item(status=None, status_details=None),
    ms_item(created_at=0),
    ms_item(created_at=1741777570.25),
    ms_item(created_at=None, createdAt=CREATED),
    ms_item("😀-file", filename="报告 📄.pdf"),
    ms_item("مرحبا", filename="\u202eevil.txt"),
    ms_item(filename="x" * 1_000_000),
    ms_item(unknown_field={"nested": [1, 2, {"deep": True}]}, object="something-else"),
]


@pytest.mark.parametrize("item", ODD_BUT_USABLE)
def test_odd_but_storable_item_is_kept_as_listed(item):
    parsed = parse_items([item], fields=moonshot.ITEMS)

    assert parsed.skipped == 0
    (file,) = parsed.files
    assert file.raw is item
    assert file.created_at.tzinfo is UTC


def test_identical_duplicates_keep_one_copy_and_count_the_rest():
    parsed = parse_items(
        [ms_item("a"), ms_item("b"), ms_item("a"), ms_item("a")], fields=moonshot.ITEMS
    )

    assert [f.file_id for f in parsed.files] == ["a", "b"]
    assert parsed.skipped == 2
    assert parsed.problems == ("id 'a' listed 3 times; kept one identical copy",)


def test_conflicting_duplicates_skip_every_copy():
    parsed = parse_items(
        [ms_item("a", status="ok"), ms_item("b"), ms_item("a", status="error")],
        fields=moonshot.ITEMS,
    )

    assert [f.file_id for f in parsed.files] == ["b"]
    assert parsed.skipped == 2
    assert parsed.problems == ("id 'a' listed 2 times with different contents; skipped every copy",)


def test_problems_are_capped_with_a_tally():
    parsed = parse_items([ms_item(f"f{i}", bytes=None) for i in range(50)], fields=moonshot.ITEMS)

    assert parsed.skipped == 50
    assert len(parsed.problems) == MAX_PROBLEMS + 1
    assert parsed.problems[-1] == f"... and {50 - MAX_PROBLEMS} more"


def test_timestamps_in_milliseconds_and_microseconds_are_detected():
    parsed = parse_items(
        [
            ms_item("s", created_at=CREATED),
            ms_item("ms", created_at=CREATED * 1000),
            ms_item("us", created_at=CREATED * 1_000_000),
        ],
        fields=moonshot.ITEMS,
    )

    assert {f.created_at for f in parsed.files} == {CREATED_AT}
