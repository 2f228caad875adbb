"""The one paginator for cursor-style listings: `after` + `has_more`, `after_id`, `pageToken`.

A provider only says which style it uses (`CursorStyle`); walking the pages, guarding
against loops and deciding what an early end means is written once, here (meltano's
`BaseAPIPaginator` is the model).

A listing ends normally when a page says no more follow. It ends **early** when a page
says more follow but cannot be continued: it has no items (no cursor to go on from), its
cursor or body repeats an earlier page's (a provider or proxy ignoring the cursor), or
the page cap is reached. An early end keeps what was seen and marks the listing
incomplete: the seen files are applied, and nothing is marked disappeared.

Each page is fetched through `ProviderClient.get_json`, so every limit it enforces
(body size, deadlines) holds per page.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec

from syncer.providers.http import excerpt, loads_checked
from syncer.providers.items import item_digest, json_type, parse_items, parse_raw_items

if TYPE_CHECKING:
    from collections.abc import Mapping

    from syncer.model import Listing
    from syncer.providers.http import JsonResponse, ProviderClient
    from syncer.providers.items import ItemFields

# Far more than any documented account needs at the page sizes syncer asks for, and a
# bound on a provider that keeps saying there is more.
MAX_PAGES: Final = 1000


@dataclass(frozen=True, slots=True)
class CursorStyle:
    """How a provider pages its listing.

    items_key:    the array of items in a page (`data`, Gemini's `files`).
    size_param:   the query parameter for the page size; None sends none.
    cursor_param: the query parameter that asks for the next page.
    next:         `last_id`: the next page starts after the last item's id, while
                  `has_more` is true (absent: no more); `token`: the page's
                  `token_key` is the next cursor, and its absence (or "") ends the listing.
    """

    items_key: str = "data"
    size_param: str | None = "limit"
    cursor_param: str = "after"
    next: Literal["last_id", "token"] = "last_id"
    id_key: str = "id"
    token_key: str = "nextPageToken"  # noqa: S105 - a field name, not a secret
    items_optional: bool = False
    """Whether a page without items may leave the array out (proto3 JSON does)."""
    max_pages: int = MAX_PAGES


@functools.cache
def page_decoder(style: CursorStyle) -> msgspec.json.Decoder[Any]:
    """A page of `style` with its items left as JSON text (http.split_page)."""
    items_default: Any = [] if style.items_optional else msgspec.NODEFAULT
    shape = msgspec.defstruct(
        "RawPage",
        [
            ("items", list[msgspec.Raw], items_default),
            ("has_more", bool | None, None),
            ("token", str | None, None),
        ],
        rename={"items": style.items_key, "token": style.token_key},
    )
    return msgspec.json.Decoder(shape)


@dataclass(slots=True)
class _Page:
    raw: list[msgspec.Raw] | None
    parsed: list[object] | None
    more: bool
    token: str | None
    storable: bool
    content: bytes = b""


def list_pages(
    api: ProviderClient,
    url: str,
    style: CursorStyle,
    fields: ItemFields,
    *,
    page_size: int | None = None,
    params: Mapping[str, str | int] | None = None,
) -> Listing:
    """Every page of a cursor-style listing as one Listing; see the module docstring.

    Raises what get_json raises; a page that breaks the documented shape (no item
    array, a `has_more` that is not a boolean) is a FatalProviderError.
    """
    query: dict[str, str | int] = dict(params or {})
    if style.size_param is not None and page_size is not None:
        query[style.size_param] = page_size
    pages: list[_Page] = []
    seen_cursors: set[str] = set()
    seen_bodies: set[bytes] = set()
    cursor: str | None = None
    ended_early: str | None = None
    while True:
        response = api.get_json(
            url,
            {**query, style.cursor_param: cursor} if cursor is not None else query,
            split=page_decoder(style),
        )
        page = _read_page(api, response, style)
        # Counted before any item is parsed, so the items cap bounds what parsing builds.
        api.count_items(len(page.raw if page.raw is not None else page.parsed or ()), response)
        pages.append(page)
        number = len(pages)
        if not page.more:
            break
        fingerprint = item_digest(response.content) if response.content else None
        cursor = _next_cursor(page, style)
        ended_early = _early_end(number, cursor, fingerprint, seen_cursors, seen_bodies, style)
        if ended_early is not None or cursor is None:
            break
        seen_cursors.add(cursor)
        if fingerprint is not None:
            seen_bodies.add(fingerprint)
    listing = _parse(api, pages, fields)
    if ended_early is None:
        return listing
    return listing.ended_early(f"pagination ended early: {ended_early}")


def _early_end(
    number: int,
    cursor: str | None,
    fingerprint: bytes | None,
    seen_cursors: set[str],
    seen_bodies: set[bytes],
    style: CursorStyle,
) -> str | None:
    """Why page `number`, which says more follow, cannot be continued; None if it can."""
    if cursor is None:
        return f"page {number} says more follow but lists no items to go on from"
    if cursor in seen_cursors or (fingerprint is not None and fingerprint in seen_bodies):
        return (
            f"page {number} repeats an earlier page (cursor {excerpt(repr(cursor), 60)}); "
            f"the provider may be ignoring {style.cursor_param!r}"
        )
    if number >= style.max_pages:
        return f"the listing did not end within {style.max_pages} pages"
    return None


def _read_page(api: ProviderClient, response: JsonResponse, style: CursorStyle) -> _Page:
    split = response.page
    if split is not None:
        has_more, token = split.has_more, split.token
        more = bool(token) if style.next == "token" else has_more is True
        return _Page(split.items, None, more, token, storable=True, content=response.content)
    response = api.whole(response)
    body = response.body
    if not isinstance(body, dict):
        raise response.unexpected(f"the body is {json_type(body)}, not an object")
    items = body.get(style.items_key)
    if items is None and style.items_optional:
        items = []
    if not isinstance(items, list):
        raise response.unexpected(f"{style.items_key} is missing or not an array")
    if style.next == "token":
        token = body.get(style.token_key)
        if token is not None and not isinstance(token, str):
            raise response.unexpected(f"{style.token_key} is {json_type(token)}, not a string")
        return _Page(None, items, bool(token), token, response.storable)
    has_more = body.get("has_more")
    # Reading a "true" string as false would end the listing early and make files
    # that are still there look disappeared.
    if has_more is not None and not isinstance(has_more, bool):
        raise response.unexpected(f"has_more is {json_type(has_more)}, not a boolean")
    return _Page(None, items, has_more is True, None, response.storable)


def _next_cursor(page: _Page, style: CursorStyle) -> str | None:
    """The cursor of the page after `page`; None when there is nothing to go on from."""
    if style.next == "token":
        return page.token or None
    if page.raw is not None:
        if not page.raw:
            return None
        try:
            last: object = loads_checked(bytes(page.raw[-1]))[0]
        except (ValueError, RecursionError):
            return None
    else:
        if not page.parsed:
            return None
        last = page.parsed[-1]
    last_id = last.get(style.id_key) if isinstance(last, dict) else None
    return last_id if isinstance(last_id, str) and last_id else None


def _parse(api: ProviderClient, pages: list[_Page], fields: ItemFields) -> Listing:
    """The items of every page as one listing: duplicates across pages are caught too."""
    if all(page.raw is not None for page in pages):
        raw = [item for page in pages for item in page.raw or ()]
        # With one page, its body spares looking for big integers item by item.
        body = pages[0].content if len(pages) == 1 else None
        parsed = parse_raw_items(raw, known=api.known, fields=fields, body=body)
        if parsed is not None:
            return parsed.listing()
    items: list[object] = []
    storable = True
    for page in pages:
        if page.parsed is not None:
            items.extend(page.parsed)
            storable = storable and page.storable
            continue
        for text in page.raw or ():
            try:
                value, checked = loads_checked(bytes(text))
            except (ValueError, RecursionError):
                value, checked = None, False  # counted as an unusable item
            items.append(value)
            storable = storable and checked
    return parse_items(items, fields, storable=storable).listing()
