"""SiliconFlow: one GET of `/files?purpose=batch&limit=N`; no pagination, no status.

Documented in shared/provider-apis/siliconflow-list-files.md. Errors come as plain
text (401, 403, 404, 504) or as JSON `{code, message, data}` (400, 429, 503); none
says more about retrying than its HTTP status does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import msgspec

from syncer.providers.http import Dialect, ErrorReport, excerpt, parse_json_or_none
from syncer.providers.items import json_type, parse_items, parse_raw_items

if TYPE_CHECKING:
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
            reports_status=False,
            body=response.content,
        )
        if parsed is not None:
            return parsed.listing(truncated=len(raw_items) >= source.list_limit)
        response = api.whole(response)
    items = _items(response)
    if split is None:
        api.count_items(len(items), response)
    parsed = parse_items(items, reports_status=False, storable=response.storable)
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
