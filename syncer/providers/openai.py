"""OpenAI, and any OpenAI-compatible API: GET `/files` with `limit`, `after`, `has_more`.

Documented in shared/provider-apis/openai.md (and openai-compatible.md for BigModel,
DashScope's compatible mode, DeepSeek and others: the same provider with their own
base URL and page size). `status` is deprecated and may be absent: a listed file
without one is ready. `expires_at` (Unix seconds) is when OpenAI deletes a file by
itself (batch files after 30 days by default).

Errors are `{"error": {"message", "type", "param", "code"}}`; `code`, then `type`,
decide. 429 is ambiguous: `insufficient_quota` (credits exhausted) is fatal until a
person acts, while `rate_limit_exceeded` is retried.
"""

from __future__ import annotations

import string
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
    bearer_authorized,
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

# The documented maximum, and the default when no limit is sent.
MAX_LIMIT: Final = 10_000
_QUOTA_CODES: Final = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
        "billing_hard_limit_reached",
    }
)
_FATAL_CODES: Final = frozenset(
    {"invalid_api_key", "invalid_organization", "invalid_project", "account_deactivated"}
)
_RETRYABLE_CODES: Final = frozenset({"rate_limit_exceeded", "slow_down", "server_error"})


def read_error(body: bytes) -> ErrorReport:
    """Quote an OpenAI error body; quota exhaustion is fatal, rate limits are retried.

    Anything else (or a body that is not OpenAI's JSON) leaves it to the HTTP status.
    """
    document = parse_json_or_none(body)
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return ErrorReport(kind=None, message=body.decode("utf-8", errors="replace"))
    code, kind, message = error.get("code"), error.get("type"), error.get("message")
    names = [value for value in (code, kind) if isinstance(value, str) and value]
    verdict: bool | None = None
    for name in names:  # code first, then type
        if name in _QUOTA_CODES or name in _FATAL_CODES:
            verdict = False
            break
        if name in _RETRYABLE_CODES:
            verdict = True
            break
    return ErrorReport(
        kind=names[0] if names else None,
        message=message if isinstance(message, str) else "",
        retryable=verdict,
    )


DIALECT: Final = Dialect(read_error=read_error, trace_header="x-request-id")
# `status` is deprecated and may be left out: a file OpenAI lists without one is ready.
ITEMS: Final = ItemFields(
    status="status",
    status_details=("status_details",),
    absent_status=StatusClass.READY,
    expires_at="expires_at",
)
PAGES: Final = CursorStyle(size_param="limit", cursor_param="after")


def list_files(api: ProviderClient, source: SourceConfig) -> Listing:
    """Every page of the source's files, `list_limit` per page, following `after`."""
    return list_pages(
        api, f"{source.base_url.rstrip('/')}/files", PAGES, ITEMS, page_size=source.list_limit
    )


# --- The simulator's OpenAI -----------------------------------------------------------

_ALPHANUMERIC: Final = string.ascii_letters + string.digits
_BATCH_RETENTION: Final = 30 * 24 * 3600  # batch files expire after 30 days by default
_FILES: Final = (
    ("batch", "requests-{n}.jsonl", (1_000, 50_000_000)),
    ("batch_output", "batch_{n}_output.jsonl", (1_000, 50_000_000)),
    ("fine-tune", "train-{n}.jsonl", (10_000, 100_000_000)),
    ("user_data", "notes-{n}.pdf", (2_000, 20_000_000)),
    ("assistants", "manual-{n}.pdf", (2_000, 20_000_000)),
)
_ERROR_KINDS: Final = {
    400: ("invalid_request_error", None, "Invalid request"),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided: sk-...."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden"),
    404: ("invalid_request_error", None, "Invalid URL (GET /v1/files)"),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests"),
}
_QUOTA_MESSAGE: Final = (
    "You exceeded your current quota, please check your plan and billing details."
)


def _new_id(rng: random.Random) -> str:
    return "file-" + "".join(rng.choices(_ALPHANUMERIC, k=22))


def _new_file(rng: random.Random, file_id: str, created_at: int) -> dict[str, Any]:
    purpose, name, (smallest, largest) = rng.choice(_FILES)
    item: dict[str, Any] = {
        "id": file_id,
        "object": "file",
        "bytes": rng.randint(smallest, largest),
        "created_at": created_at,
        "filename": name.format(n=rng.randint(1, 9999)),
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
    }
    if purpose == "batch":
        item["expires_at"] = created_at + _BATCH_RETENTION
    return item


def _read_query(
    query: Mapping[str, list[str]], account_page_size: int | None
) -> PageRequest | SimulatedError:
    limit = page_size(query, "limit", default=MAX_LIMIT, maximum=MAX_LIMIT)
    if limit is None:
        return _error(400, None, "Invalid 'limit': expected an integer between 1 and 10000.")
    if account_page_size is not None:
        limit = min(limit, account_page_size)
    return PageRequest(size=limit, cursor=query_value(query, "after"))


def _envelope(page: ServedPage) -> object:
    items, has_more = page.items, page.has_more
    return {
        "object": "list",
        "data": items,
        "first_id": _item_id(items[0]) if items else None,
        "last_id": _item_id(items[-1]) if items else None,
        "has_more": bool(has_more),
    }


def _item_id(item: object) -> object:
    return item.get("id") if isinstance(item, dict) else None


def _error(status: int, error_type: str | None, message: str | None) -> SimulatedError:
    kind, code, text = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, "")
    )
    if error_type is not None:  # e.g. insufficient_quota: OpenAI sets both
        kind = code = error_type
        text = _QUOTA_MESSAGE if error_type == "insufficient_quota" else text
    body = {"message": message or text or status_phrase(status), "type": kind}
    return SimulatedError(status, {"error": {**body, "param": None, "code": code}})


def _expires_at(item: Mapping[str, Any]) -> float | None:
    value = item.get("expires_at")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


PROVIDER: Final = Provider(
    name="openai",
    default_base_url="https://api.openai.com/v1",
    dialect=DIALECT,
    items=ITEMS,
    list_files=list_files,
    personality=Personality(
        api_prefix="v1",
        authorized=bearer_authorized,
        new_id=_new_id,
        new_file=_new_file,
        read_query=_read_query,
        envelope=_envelope,
        error=_error,
        trace_header="x-request-id",
        status_field="status",
        statuses=("uploaded", "processed", "error"),
        status_fields=lambda status, details: {"status": status, "status_details": details or None},
        failure_details=(
            "Invalid file format for Fine-Tuning API. Must be .jsonl",
            "Line 3: missing 'messages' key",
        ),
        expires_at=_expires_at,
        expiry_fields=lambda at: {"expires_at": at},
        appearing=(1, 3),
    ),
    list_limit=MAX_LIMIT,
    list_limit_setting=True,
)
