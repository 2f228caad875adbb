"""Google Gemini (Developer API): GET `/files` with `pageSize`, `pageToken`, `nextPageToken`.

Documented in shared/provider-apis/gemini.md. The key goes in `x-goog-api-key`. Items
(protobuf's JSON mapping) are named `files/…` (the id), with an optional
`displayName`, `mimeType` (kept as the purpose), `sizeBytes` as a decimal string, RFC
3339 `createTime` and `expirationTime`, and `state` PROCESSING / ACTIVE / FAILED
(pending / ready / failed; a failure's `error.message` is its status details). Gemini
deletes every file 48 hours after upload: that is expiry, not deletion.

Errors follow Google's model, `{"error": {"code", "message", "status", "details"}}`,
and the details decide: a bad key is 400 `API_KEY_INVALID` (not 401), 429
`RESOURCE_EXHAUSTED` is a rate limit to wait out (`RetryInfo.retryDelay`) unless its
quota is a daily one, which no retry within a sync can outlast.
"""

from __future__ import annotations

import re
import string
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from syncer.model import StatusClass
from syncer.providers.http import Dialect, ErrorReport, parse_json_or_none
from syncer.providers.items import ItemFields
from syncer.providers.paginator import CursorStyle, list_pages
from syncer.providers.spec import (
    PageRequest,
    Personality,
    Provider,
    ServedPage,
    SimulatedError,
    header_is,
    page_size,
    query_value,
    status_phrase,
)

if TYPE_CHECKING:
    import random
    from collections.abc import Mapping

    from syncer.config import SourceConfig
    from syncer.model import Listing
    from syncer.providers.http import ProviderClient

MAX_PAGE_SIZE: Final = 100  # the documented maximum; the default is 10
RETENTION: Final = timedelta(hours=48)
_RETRYABLE_STATUSES: Final = frozenset(
    {"RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "ABORTED"}
)
_FATAL_STATUSES: Final = frozenset(
    {
        "INVALID_ARGUMENT",
        "FAILED_PRECONDITION",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "NOT_FOUND",
    }
)
_FATAL_REASONS: Final = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "SERVICE_DISABLED"})
_DURATION: Final = re.compile(r"^(\d+(?:\.\d+)?)s$")


def auth_headers(api_key: str) -> dict[str, str]:
    """The key in `x-goog-api-key` (never in the URL, where logs would keep it)."""
    return {"x-goog-api-key": api_key}


def read_error(body: bytes) -> ErrorReport:
    """Quote a Google API error and decide by its details, then its canonical status."""
    document = parse_json_or_none(body)
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return ErrorReport(kind=None, message=body.decode("utf-8", errors="replace"))
    status, message = error.get("status"), error.get("message")
    details = [d for d in error.get("details") or [] if isinstance(d, dict)]
    reasons = [d["reason"] for d in details if isinstance(d.get("reason"), str)]
    quotas: list[str] = [
        violation["quotaId"]
        for d in details
        for violation in d.get("violations") or []
        if isinstance(violation, dict) and isinstance(violation.get("quotaId"), str)
    ]
    delays = [_seconds(d.get("retryDelay")) for d in details]
    verdict: bool | None = None
    if any(reason in _FATAL_REASONS for reason in reasons):
        verdict = False
    elif any("PerDay" in quota for quota in quotas):
        verdict = False  # a daily quota: waiting within one sync cannot help
    elif status in _RETRYABLE_STATUSES:
        verdict = True
    elif status in _FATAL_STATUSES:
        verdict = False
    kind = reasons[0] if reasons else quotas[0] if quotas else status
    return ErrorReport(
        kind=kind if isinstance(kind, str) else None,
        message=message if isinstance(message, str) else "",
        retryable=verdict,
        retry_after=next((delay for delay in delays if delay is not None), None),
    )


def _seconds(value: object) -> float | None:
    """A protobuf Duration in JSON (`"22s"`, `"1.5s"`) as seconds."""
    match = _DURATION.match(value) if isinstance(value, str) else None
    return float(match.group(1)) if match else None


DIALECT: Final = Dialect(read_error=read_error, auth=auth_headers)
ITEMS: Final = ItemFields(
    id="name",
    filename="displayName",
    filename_required=False,
    purpose="mimeType",
    purpose_required=False,
    size="sizeBytes",
    size_as_text=True,
    created_at="createTime",
    timestamps="rfc3339",
    expires_at="expirationTime",
    line_count=None,
    status="state",
    status_details=("error", "message"),
    absent_status=StatusClass.UNKNOWN,
)
# proto3 JSON leaves out empty fields: no `files` when there are none, no token at the end.
PAGES: Final = CursorStyle(
    items_key="files",
    size_param="pageSize",
    cursor_param="pageToken",
    next="token",
    id_key="name",
    items_optional=True,
)


def list_files(api: ProviderClient, source: SourceConfig) -> Listing:
    """Every page of the project's files, `list_limit` (at most 100) per page."""
    return list_pages(
        api,
        f"{source.base_url.rstrip('/')}/files",
        PAGES,
        ITEMS,
        page_size=min(source.list_limit, MAX_PAGE_SIZE),
    )


# --- The simulator's Gemini -----------------------------------------------------------

_ID_ALPHABET: Final = string.ascii_lowercase + string.digits
_FILES: Final = (
    ("application/pdf", "report-{n}.pdf", (20_000, 30_000_000)),
    ("video/mp4", "clip-{n}.mp4", (1_000_000, 2_000_000_000)),
    ("audio/mpeg", "call-{n}.mp3", (100_000, 50_000_000)),
    ("image/jpeg", "photo-{n}.jpg", (20_000, 8_000_000)),
)
_STATUSES: Final = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _time(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _new_id(rng: random.Random) -> str:
    return "files/" + "".join(rng.choices(_ID_ALPHABET, k=12))


def _new_file(rng: random.Random, file_id: str, created_at: int) -> dict[str, Any]:
    mime_type, name, (smallest, largest) = rng.choice(_FILES)
    return {
        "name": file_id,
        "displayName": name.format(n=rng.randint(1, 9999)),
        "mimeType": mime_type,
        "sizeBytes": str(rng.randint(smallest, largest)),
        "createTime": _time(created_at),
        "updateTime": _time(created_at),
        "expirationTime": _time(created_at + RETENTION.total_seconds()),
        "sha256Hash": "ZDQ2ZmQ5YzE0NjM3ZjE4OTBjNmE1NDZlMzRhYjg2ZTk=",
        "uri": f"https://generativelanguage.googleapis.com/v1beta/{file_id}",
        "state": "ACTIVE",
        "source": "UPLOADED",
    }


def _read_query(
    query: Mapping[str, list[str]], account_page_size: int | None
) -> PageRequest | SimulatedError:
    size = page_size(query, "pageSize", default=10, maximum=MAX_PAGE_SIZE)
    if size is None:
        return _error(400, None, "Invalid value at 'page_size' (TYPE_INT32)")
    if account_page_size is not None:
        size = min(size, account_page_size)
    return PageRequest(size=size, cursor=query_value(query, "pageToken") or None)


def _envelope(page: ServedPage) -> object:
    body: dict[str, object] = {}
    if page.items:
        body["files"] = page.items
    if page.has_more and page.next_cursor:
        body["nextPageToken"] = page.next_cursor
    return body


def _error(status: int, error_type: str | None, message: str | None) -> SimulatedError:
    details: list[dict[str, Any]] = []
    if status == 401:  # a bad key: Gemini answers 400, not 401
        status = 400
        message = message or "API key not valid. Please pass a valid API key."
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
            }
        )
    elif status == 429:
        quota = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
        if error_type != "daily_quota":
            quota = "GenerateRequestsPerMinutePerProjectPerModel"
        details += [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaId": quota}],
            },
            # Real delays are tens of seconds; short here, so tests can watch a retry.
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.1s"},
        ]
        message = message or "You exceeded your current quota, please check your plan."
    canonical = _STATUSES.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
    error: dict[str, Any] = {
        "code": status,
        "message": message or status_phrase(status),
        "status": canonical,
    }
    if details:
        error["details"] = details
    return SimulatedError(status, {"error": error})


def _expires_at(item: Mapping[str, Any]) -> float | None:
    value = item.get("expirationTime")
    try:
        return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else None
    except ValueError:
        return None


def _status_fields(state: str, details: str) -> dict[str, Any]:
    error = {"code": 13, "message": details} if details else None
    return {"state": state, "error": error}


PROVIDER: Final = Provider(
    name="gemini",
    default_base_url="https://generativelanguage.googleapis.com/v1beta",
    dialect=DIALECT,
    items=ITEMS,
    list_files=list_files,
    personality=Personality(
        api_prefix="v1beta",
        authorized=lambda headers, key: header_is(headers, "x-goog-api-key", key),
        new_id=_new_id,
        new_file=_new_file,
        read_query=_read_query,
        envelope=_envelope,
        error=_error,
        cursor="token",
        id_field="name",
        filename_field="displayName",
        status_field="state",
        statuses=("PROCESSING", "ACTIVE", "FAILED"),
        status_fields=_status_fields,
        failure_details=(
            "Unsupported MIME type: application/x-msdownload",
            "The video could not be processed.",
        ),
        expires_at=_expires_at,
        expiry_fields=lambda at: {"expirationTime": _time(at)},
        appearing=(1, 3),
    ),
    list_limit=MAX_PAGE_SIZE,
)
