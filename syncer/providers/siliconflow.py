"""SiliconFlow: one GET of `/files?purpose=batch&limit=N`; no pagination, no status.

Documented in shared/provider-apis/siliconflow-list-files.md. Errors come as plain
text (401, 403, 404, 504) or as JSON `{code, message, data}` (400, 429, 503); none
says more about retrying than its HTTP status does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from syncer.model import Listing
from syncer.providers.http import Dialect, ErrorReport, excerpt, parse_json_or_none
from syncer.providers.items import json_type, parse_items

if TYPE_CHECKING:
    from syncer.config import SourceConfig
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


def list_files(api: ProviderClient, source: SourceConfig) -> Listing:
    """List the source's batch files in one request.

    SiliconFlow has no pagination: a response with `list_limit` items or more may have
    left files out, so the listing is marked truncated (incomplete).
    """
    response = api.get_json(
        f"{source.base_url.rstrip('/')}/files",
        params={"purpose": "batch", "limit": source.list_limit},
    )
    items = _items(response)
    parsed = parse_items(items, reports_status=False, storable=response.storable)
    return Listing(
        files=parsed.files,
        truncated=len(items) >= source.list_limit,
        skipped=parsed.skipped,
        problems=parsed.problems,
    )


def _items(response: JsonResponse) -> list[object]:
    """The item list of `{code, message, status, data: {data: [...], object}}`."""
    body = response.body
    if not isinstance(body, dict):
        raise response.unexpected(f"the body is {json_type(body)}, not an object")
    code, status = body.get("code"), body.get("status")
    if status is False or code != SUCCESS_CODE:
        message = body.get("message")
        raise response.unexpected(
            f"it reports a failure (code {excerpt(repr(code), _CODE_CHARS)}, "
            f"status {excerpt(repr(status), _CODE_CHARS)})"
            f"{': ' + excerpt(message) if isinstance(message, str) else ''}"
        )
    data = body.get("data")
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise response.unexpected("data.data is missing or not an array")
    return items
