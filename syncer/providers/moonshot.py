"""Moonshot (Kimi): GET `/files` lists the whole inventory, with a status per file.

Documented in shared/provider-apis/moonshot-list-files.md. Errors are JSON
`{"error": {"type", "message", "code"?}}` and the `type` decides whether to retry, not
the status: a 429 means "slow down" or "your balance is exhausted" depending on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec

from syncer.providers.http import Dialect, ErrorReport, excerpt, parse_json_or_none
from syncer.providers.items import json_type, parse_items, parse_raw_items

if TYPE_CHECKING:
    from syncer.config import SourceConfig
    from syncer.model import Listing
    from syncer.providers.http import JsonResponse, ProviderClient

# An account holds at most 1,000 files: 200 pages is far more than any real listing
# needs, and stops a provider that keeps saying has_more.
MAX_PAGES: Final = 200

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


class _RawPage(msgspec.Struct):
    """A page as documented, its items left as JSON text (http.split_page)."""

    data: list[msgspec.Raw]
    has_more: bool | None = None


_RAW_PAGE: Final = msgspec.json.Decoder(_RawPage)


def list_files(api: ProviderClient, source: SourceConfig) -> Listing:
    """List every file of the source's account.

    One request is documented to return everything. Should a response say
    `has_more: true`, the next page is requested with `after=<last id>`; a page that
    repeats ids already listed, a has_more page without items, or more than MAX_PAGES
    pages is a FatalProviderError, never an endless loop.
    """
    url = f"{source.base_url.rstrip('/')}/files"
    response = api.get_json(url, split=_RAW_PAGE)  # no query parameter is documented
    split: _RawPage | None = response.page
    first_page_counted = False
    # The documented single page: only the items that are not stored as listed are parsed.
    if split is not None and not split.has_more:
        api.count_items(len(split.data), response)
        first_page_counted = True
        parsed = parse_raw_items(
            split.data,
            known=api.known,
            reports_status=True,
            body=response.content,
        )
        if parsed is not None:
            return parsed.listing()
    response = api.whole(response)
    items: list[object] = []
    seen_ids: set[str] = set()
    storable = True
    page_number = 0
    while True:
        page_number += 1
        page, has_more = _page(response)
        if page_number > 1 or not first_page_counted:
            api.count_items(len(page), response)
        storable = storable and response.storable
        # The usual single-page listing needs no ids collected.
        if seen_ids or has_more:
            page_ids = {
                item["id"]
                for item in page
                if isinstance(item, dict) and isinstance(item.get("id"), str)
            }
            if repeated := page_ids & seen_ids:
                raise response.unexpected(
                    f"pagination repeated page {page_number}: it lists ids already listed "
                    f"(e.g. {excerpt(repr(min(repeated)), 60)}); the provider may be "
                    "ignoring 'after'"
                )
            seen_ids |= page_ids
        items.extend(page)
        if not has_more:
            return parse_items(items, reports_status=True, storable=storable).listing()
        if page_number == MAX_PAGES:
            raise response.unexpected(f"pagination did not end within {MAX_PAGES} pages")
        response = api.get_json(url, {"after": _cursor(response, page, page_number)})


def _page(response: JsonResponse) -> tuple[list[object], bool]:
    """The items of `{object: "list", data: [...], has_more?}` and whether more follow."""
    body = response.body
    if not isinstance(body, dict):
        raise response.unexpected(f"the body is {json_type(body)}, not an object")
    items = body.get("data")
    if not isinstance(items, list):
        raise response.unexpected("data is missing or not an array")
    has_more = body.get("has_more")
    # Reading a "true" string as false would end the listing early and make files
    # that are still there look disappeared.
    if has_more is not None and not isinstance(has_more, bool):
        raise response.unexpected(f"has_more is {json_type(has_more)}, not a boolean")
    return items, has_more is True


def _cursor(response: JsonResponse, page: list[object], page_number: int) -> str:
    """The `after` value for the page that follows: the id of this page's last item."""
    if not page:
        raise response.unexpected(
            f"pagination stalled on page {page_number}: has_more is true but it lists no items"
        )
    last = page[-1]
    last_id = last.get("id") if isinstance(last, dict) else None
    if not isinstance(last_id, str) or not last_id:
        raise response.unexpected(
            f"cannot continue pagination: the last item of page {page_number} has no id"
        )
    return last_id
