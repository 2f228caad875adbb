"""SiliconFlow: one GET of `/files?purpose=batch&limit=N`; no pagination, no status.

Documented in shared/provider-apis/siliconflow-list-files.md. Errors come as plain
text (401, 403, 404, 504) or as JSON `{code, message, data}` (400, 429, 503); none
says more about retrying than its HTTP status does.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING, Any, Final

import msgspec

from syncer.model import StatusClass
from syncer.providers.http import Dialect, ErrorReport, excerpt, parse_json_or_none
from syncer.providers.items import ItemFields, json_type, parse_items, parse_raw_items
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
    from syncer.providers.http import JsonResponse, ProviderClient

SUCCESS_CODE: Final = 20000
_CODE_CHARS: Final = 40


def read_error(body: bytes) -> ErrorReport:
    """Quote a SiliconFlow error body, JSON or plain text; its HTTP status decides retrying.

    A 503 with code 50505 (overloaded) and a 429 are retried for their status alone.
    """
    document = parse_json_or_none(body)
    if isinstance(document, dict) and isinstance(document.get("message"), str):
        code = document.get("code")
        kind = None if code is None else f"code {excerpt(str(code), _CODE_CHARS)}"
        return ErrorReport(kind=kind, message=document["message"])
    return ErrorReport(kind=None, message=body.decode("utf-8", errors="replace"))


DIALECT: Final = Dialect(read_error=read_error, trace_header="x-siliconcloud-trace-id")
# No status field: a file SiliconFlow lists has been accepted, so it is ready.
ITEMS: Final = ItemFields(absent_status=StatusClass.READY)
DEFAULT_LIST_LIMIT: Final = 10_000


class _RawItems(msgspec.Struct):
    data: list[msgspec.Raw]


class _RawPage(msgspec.Struct):
    """The documented body, its items left as JSON text (http.split_page)."""

    data: _RawItems
    code: Any = None
    status: Any = None
    message: Any = None


_RAW_PAGE: Final = msgspec.json.Decoder(_RawPage)


def list_files(api: ProviderClient, source: SourceConfig) -> Listing:
    """List the source's batch files in one request.

    SiliconFlow has no pagination: a response with `list_limit` items or more may have
    left files out, so the listing is marked truncated (incomplete).
    """
    response = api.get_json(
        f"{source.base_url.rstrip('/')}/files",
        params={"purpose": "batch", "limit": source.list_limit},
        split=_RAW_PAGE,
    )
    split: _RawPage | None = response.page
    if split is not None:
        _check_success(response, split.code, split.status, split.message)
        raw_items = split.data.data
        api.count_items(len(raw_items), response)
        # Only the items that are not stored as listed are parsed.
        parsed = parse_raw_items(
            raw_items,
            known=api.known,
            fields=ITEMS,
            body=response.content,
        )
        if parsed is not None:
            return parsed.listing(truncated=len(raw_items) >= source.list_limit)
        response = api.whole(response)
    items = _items(response)
    if split is None:
        api.count_items(len(items), response)
    parsed = parse_items(items, ITEMS, storable=response.storable)
    return parsed.listing(truncated=len(items) >= source.list_limit)


def _check_success(response: JsonResponse, code: object, status: object, message: object) -> None:
    if status is False or code != SUCCESS_CODE:
        raise response.unexpected(
            f"it reports a failure (code {excerpt(repr(code), _CODE_CHARS)}, "
            f"status {excerpt(repr(status), _CODE_CHARS)})"
            f"{': ' + excerpt(message) if isinstance(message, str) else ''}"
        )


def _items(response: JsonResponse) -> list[object]:
    """The item list of `{code, message, status, data: {data: [...], object}}`."""
    body = response.body
    if not isinstance(body, dict):
        raise response.unexpected(f"the body is {json_type(body)}, not an object")
    _check_success(response, body.get("code"), body.get("status"), body.get("message"))
    data = body.get("data")
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise response.unexpected("data.data is missing or not an array")
    return items


# --- The simulator's SiliconFlow ------------------------------------------------------

_WORDS: Final = ("report", "contract", "invoice", "notes", "slides", "paper", "summary", "季度报告")
_ERRORS: Final[dict[int, str | dict[str, Any]]] = {
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


def _new_id(rng: random.Random) -> str:
    return "file-" + "".join(rng.choices(string.ascii_lowercase, k=10))


def _new_file(rng: random.Random, file_id: str, created_at: int) -> dict[str, Any]:
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


def _read_query(
    query: Mapping[str, list[str]], _page_size: int | None
) -> PageRequest | SimulatedError:
    if query_value(query, "purpose") != "batch" or len(query.get("purpose", ())) != 1:
        return _error(400, None, "purpose must be batch")
    limit = page_size(query, "limit", default=10, maximum=2**62)
    if limit is None:
        return _error(400, None, "limit must be a positive integer")
    # No pagination: the oldest `limit` files, and nothing says whether more exist.
    return PageRequest(size=limit, paged=False)


def _envelope(page: ServedPage) -> object:
    return {
        "code": 20000,
        "message": "Ok",
        "status": True,
        "data": {"data": page.items, "object": "file"},
    }


def _error(status: int, _error_type: str | None, message: str | None) -> SimulatedError:
    shape = _ERRORS.get(status, status_phrase(status))
    if isinstance(shape, dict):
        return SimulatedError(status, shape if message is None else {**shape, "message": message})
    return SimulatedError(status, message or shape)


PROVIDER: Final = Provider(
    name="siliconflow",
    default_base_url="https://api.siliconflow.cn/v1",
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
        trace_header="x-siliconcloud-trace-id",
        pages=False,
        appearing=(1, 3),
    ),
    list_limit=DEFAULT_LIST_LIMIT,
    list_limit_setting=True,
)
