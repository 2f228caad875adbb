"""Anthropic (Claude) Files API: GET `/files` with `limit`, `after_id`, `has_more` (beta).

Documented in shared/provider-apis/anthropic.md. The key goes in `x-api-key`, with
`anthropic-version` and the Files API beta header. Items have `size_bytes`, RFC 3339
`created_at` and `mime_type` (kept as the purpose: there is no purpose field), and no
status and no expiry: a listed file is ready and stays until deleted.

Errors are `{"type": "error", "error": {"type", "message"}, "request_id"}`. 529
`overloaded_error` is retried; a 429 that says the monthly spend limit is reached
(`enforced_spend_limit_reached`) is fatal until the next month or a person acts.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime
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

API_VERSION: Final = "2023-06-01"
FILES_BETA: Final = "files-api-2025-04-14"
MAX_LIMIT: Final = 1000
_RETRYABLE_TYPES: Final = frozenset(
    {"rate_limit_error", "overloaded_error", "api_error", "timeout_error"}
)
_FATAL_TYPES: Final = frozenset(
    {
        "authentication_error",
        "permission_error",
        "billing_error",
        "not_found_error",
        "invalid_request_error",
        "request_too_large",
    }
)
# A 429 that no wait within a sync can fix: the organisation's monthly spend cap.
_SPEND_LIMIT_CODES: Final = frozenset({"enforced_spend_limit_reached"})


def auth_headers(api_key: str) -> dict[str, str]:
    """The key in `x-api-key`, the API version and the Files API beta."""
    return {"x-api-key": api_key, "anthropic-version": API_VERSION, "anthropic-beta": FILES_BETA}


def read_error(body: bytes) -> ErrorReport:
    """Quote an Anthropic error body and decide by its `error.type` (and spend limits)."""
    document = parse_json_or_none(body)
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return ErrorReport(kind=None, message=body.decode("utf-8", errors="replace"))
    kind, message, details = error.get("type"), error.get("message"), error.get("details")
    code = details.get("error_code") if isinstance(details, dict) else None
    verdict: bool | None = None
    if code in _SPEND_LIMIT_CODES:
        verdict = False
    elif kind in _RETRYABLE_TYPES:
        verdict = True
    elif kind in _FATAL_TYPES:
        verdict = False
    return ErrorReport(
        kind=code if isinstance(code, str) else kind if isinstance(kind, str) else None,
        message=message if isinstance(message, str) else "",
        retryable=verdict,
    )


DIALECT: Final = Dialect(read_error=read_error, trace_header="request-id", auth=auth_headers)
ITEMS: Final = ItemFields(
    purpose="mime_type",
    size="size_bytes",
    timestamps="rfc3339",
    line_count=None,
    absent_status=StatusClass.READY,
)
PAGES: Final = CursorStyle(size_param="limit", cursor_param="after_id")


def list_files(api: ProviderClient, source: SourceConfig) -> Listing:
    """Every page of the workspace's files, `list_limit` per page, following `after_id`."""
    return list_pages(
        api, f"{source.base_url.rstrip('/')}/files", PAGES, ITEMS, page_size=source.list_limit
    )


# --- The simulator's Anthropic --------------------------------------------------------

_ID_ALPHABET: Final = string.ascii_letters + string.digits
_FILES: Final = (
    ("application/pdf", "contract-{n}.pdf", (20_000, 30_000_000)),
    ("text/plain", "notes-{n}.txt", (200, 2_000_000)),
    ("image/png", "chart-{n}.png", (20_000, 5_000_000)),
    ("text/csv", "data-{n}.csv", (1_000, 50_000_000)),
)
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_MESSAGES: Final = {
    "authentication_error": "invalid x-api-key",
    "rate_limit_error": "Rate limit exceeded",
    "overloaded_error": "Overloaded",
    "enforced_spend_limit_reached": "You have reached your API usage limits. "
    "You will regain access on the first of next month at 00:00 UTC.",
}


def _new_id(rng: random.Random) -> str:
    return "file_011" + "".join(rng.choices(_ID_ALPHABET, k=21))


def _new_file(rng: random.Random, file_id: str, created_at: int) -> dict[str, Any]:
    mime_type, name, (smallest, largest) = rng.choice(_FILES)
    micros = rng.randint(0, 999_999)
    moment = datetime.fromtimestamp(created_at, UTC).replace(microsecond=micros)
    return {
        "id": file_id,
        "type": "file",
        "filename": name.format(n=rng.randint(1, 9999)),
        "mime_type": mime_type,
        "size_bytes": rng.randint(smallest, largest),
        "created_at": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "downloadable": False,
    }


def _authorized(headers: Mapping[str, str], api_key: str) -> bool:
    return (
        header_is(headers, "x-api-key", api_key)
        and headers.get("anthropic-version") == API_VERSION
        and FILES_BETA in (headers.get("anthropic-beta") or "").split(",")
    )


def _read_query(
    query: Mapping[str, list[str]], account_page_size: int | None
) -> PageRequest | SimulatedError:
    limit = page_size(query, "limit", default=20, maximum=MAX_LIMIT)
    if limit is None:
        return _error(400, None, "limit: Input should be a valid integer")
    if account_page_size is not None:
        limit = min(limit, account_page_size)
    return PageRequest(size=limit, cursor=query_value(query, "after_id"))


def _envelope(page: ServedPage) -> object:
    items, has_more = page.items, page.has_more
    return {
        "data": items,
        "first_id": _item_id(items[0]) if items else None,
        "last_id": _item_id(items[-1]) if items else None,
        "has_more": bool(has_more),
    }


def _item_id(item: object) -> object:
    return item.get("id") if isinstance(item, dict) else None


def _error(status: int, error_type: str | None, message: str | None) -> SimulatedError:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    error: dict[str, Any] = {"type": kind}
    if error_type == "enforced_spend_limit_reached":
        error["details"] = {"error_code": error_type}
    elif error_type is not None:
        error["type"] = error_type
    error["message"] = message or _MESSAGES.get(error_type or error["type"], status_phrase(status))
    return SimulatedError(status, {"type": "error", "error": error, "request_id": "req_011sim"})


PROVIDER: Final = Provider(
    name="anthropic",
    default_base_url="https://api.anthropic.com/v1",
    dialect=DIALECT,
    items=ITEMS,
    list_files=list_files,
    personality=Personality(
        api_prefix="v1",
        authorized=_authorized,
        new_id=_new_id,
        new_file=_new_file,
        read_query=_read_query,
        envelope=_envelope,
        error=_error,
        trace_header="request-id",
        appearing=(1, 2),
    ),
    list_limit=MAX_LIMIT,
)
