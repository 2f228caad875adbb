"""Moonshot (Kimi): GET `/files` lists the whole inventory, with a status per file.

Documented in shared/provider-apis/moonshot-list-files.md. Errors are JSON
`{"error": {"type", "message", "code"?}}` and the `type` decides whether to retry, not
the status: a 429 means "slow down" or "your balance is exhausted" depending on it.
No query parameter is documented; should a response ever say `has_more: true`, the
shared paginator follows `after=<last id>`.
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
    status_phrase,
)

if TYPE_CHECKING:
    import random
    from collections.abc import Mapping

    from syncer.config import SourceConfig
    from syncer.model import Listing
    from syncer.providers.http import ProviderClient

_RETRYABLE_TYPES: Final = frozenset(
    {"rate_limit_reached_error", "engine_overloaded_error", "server_error", "unexpected_output"}
)
_FATAL_TYPES: Final = frozenset(
    {
        "exceeded_current_quota_error",  # also on 429: the balance is exhausted
        "invalid_authentication_error",
        "permission_denied_error",
        "resource_not_found_error",
        "invalid_request_error",
        "content_filter",
    }
)


def read_error(body: bytes) -> ErrorReport:
    """Quote a Moonshot error body and decide by its `type`.

    An unknown type, or a body that is not Moonshot's JSON (a proxy's page, say),
    leaves the decision to the HTTP status.
    """
    document = parse_json_or_none(body)
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return ErrorReport(kind=None, message=body.decode("utf-8", errors="replace"))
    kind = error.get("type")
    message = error.get("message")
    if not isinstance(kind, str):
        kind = None
    return ErrorReport(
        kind=kind,
        message=message if isinstance(message, str) else "",
        retryable=_verdict(kind),
    )


def _verdict(kind: str | None) -> bool | None:
    if kind in _RETRYABLE_TYPES:
        return True
    if kind in _FATAL_TYPES:
        return False
    return None


DIALECT: Final = Dialect(read_error=read_error)
ITEMS: Final = ItemFields(
    status="status", status_details=("status_details",), absent_status=StatusClass.UNKNOWN
)
PAGES: Final = CursorStyle(size_param=None, cursor_param="after")


def list_files(api: ProviderClient, source: SourceConfig) -> Listing:
    """List every file of the source's account (one request, unless it says has_more)."""
    return list_pages(api, f"{source.base_url.rstrip('/')}/files", PAGES, ITEMS)


# --- The simulator's Moonshot ---------------------------------------------------------

# Moonshot ids look like xids: 20 characters of base32hex (e.g. clg681objj8g9m7n4je0).
_XID_ALPHABET: Final = string.digits + "abcdefghijklmnopqrstuv"
_WORDS: Final = ("report", "contract", "invoice", "notes", "slides", "paper", "summary", "季度报告")
# purpose -> (file extensions, (min bytes, max bytes)); most files are documents.
_PURPOSES: Final[dict[str, tuple[tuple[str, ...], tuple[int, int]]]] = {
    "file-extract": (("pdf", "docx", "txt", "pptx", "xlsx", "md"), (2_000, 20_000_000)),
    "image": (("png", "jpg"), (20_000, 5_000_000)),
    "batch": (("jsonl",), (1_000, 50_000_000)),
    "video": (("mp4",), (1_000_000, 100_000_000)),
}
_PURPOSE_CUMULATIVE_WEIGHTS: Final = (14, 17, 19, 20)
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "invalid_authentication_error",
    403: "permission_denied_error",
    404: "resource_not_found_error",
    429: "rate_limit_reached_error",
}
_MESSAGES: Final = {
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


def _new_id(rng: random.Random) -> str:
    return "".join(rng.choices(_XID_ALPHABET, k=20))


def _new_file(rng: random.Random, file_id: str, created_at: int) -> dict[str, Any]:
    purpose = rng.choices(tuple(_PURPOSES), cum_weights=_PURPOSE_CUMULATIVE_WEIGHTS)[0]
    extensions, (smallest, largest) = _PURPOSES[purpose]
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


def _read_query(query: Mapping[str, list[str]], page_size: int | None) -> PageRequest:
    # The real API takes no parameters and answers everything at once; an account with
    # a page size plays the OpenAI-style paging syncer must also cope with.
    after = query.get("after", [None])[-1]
    return PageRequest(size=page_size, cursor=after, paged=page_size is not None)


def _envelope(page: ServedPage) -> object:
    body: dict[str, object] = {"object": "list", "data": page.items}
    if page.has_more is not None:
        body["has_more"] = page.has_more
    return body


def _error(status: int, error_type: str | None, message: str | None) -> SimulatedError:
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    kind = error_type or _ERROR_TYPES.get(status, default_type)
    text = message or _MESSAGES.get(kind, status_phrase(status))
    return SimulatedError(status, {"error": {"type": kind, "message": text}})


PERSONALITY: Final = Personality(
    api_prefix="v1",
    authorized=bearer_authorized,
    new_id=_new_id,
    new_file=_new_file,
    read_query=_read_query,
    envelope=_envelope,
    error=_error,
    status_field="status",
    statuses=("processing", "ok", "error"),
    status_fields=lambda status, details: {"status": status, "status_details": details},
    failure_details=(
        "file type not supported",
        "failed to extract text: the file is encrypted",
        "file content is empty",
        "file is corrupted and cannot be parsed",
    ),
    appearing=(2, 4),
)

PROVIDER: Final = Provider(
    name="moonshot",
    default_base_url="https://api.moonshot.cn/v1",
    dialect=DIALECT,
    items=ITEMS,
    list_files=list_files,
    personality=PERSONALITY,
)
