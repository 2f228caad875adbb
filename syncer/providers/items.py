"""Turning the items of a provider's listing into `ListedFile` values, or reasons not to.

Pure: no I/O. Providers send odd things, and one odd item must never sink a listing:
an unusable item is skipped, counted and described, and the listing becomes
incomplete (a skipped file may still exist, so nothing may be marked disappeared).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from syncer.bulk import gc_paused
from syncer.model import ListedFile, Listing, StatusClass, classify_status
from syncer.providers.http import loads_checked, may_hold_big_integers

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import msgspec

MAX_PROBLEMS: Final = 20
# Ids are indexed, and a PostgreSQL btree entry holds at most ~2,700 bytes: 256
# characters (1 KiB of UTF-8 at most) is far beyond any real id and safely below.
MAX_ID_CHARACTERS: Final = 256

_INT64: Final = (-(2**63), 2**63 - 1)  # PostgreSQL bigint
_INT32: Final = (-(2**31), 2**31 - 1)  # PostgreSQL integer
_INT64_MIN, _INT64_MAX = _INT64
_INT32_MIN, _INT32_MAX = _INT32
# Unix seconds reach 1e11 only in the year 5138, so larger values are finer units.
_MILLISECONDS_FROM: Final = 1e11
_MICROSECONDS_FROM: Final = 1e14
# PostgreSQL text and jsonb cannot store NUL, and UTF-8 cannot encode lone surrogates.
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")
_PREVIEW_CHARS: Final = 40
_MAX_INT64_DIGITS: Final = 20  # with a sign
# Python reads at most microseconds; Google's times may carry nanoseconds.
_EXCESS_FRACTION: Final = re.compile(r"(\.\d{6})\d+")
# Every digest is salted with the version of the rules that turn an item into a row:
# a release that changes them (a field, a unit, a class) bumps it, so that every stored
# file is parsed and compared afresh instead of being taken as unchanged. (Until a file
# next changes, it then is on every sync: a row is not rewritten for its digest alone.)
_blake2b: Final = functools.partial(hashlib.blake2b, digest_size=16, person=b"syncer-items-1")
_JSON_TYPES: Final = (
    (bool, "a boolean"),
    (int | float, "a number"),
    (str, "a string"),
    (list, "an array"),
    (dict, "an object"),
)


@dataclass(frozen=True, slots=True)
class ItemFields:
    """Where a provider keeps each of syncer's columns in a listed item, and in what form.

    The defaults are the OpenAI shape (`id`, `filename`, `purpose`, `bytes`, Unix
    `created_at`). `status` None: the provider has no status field, and every file it
    lists has the class `absent_status`; so has a file whose status is missing.
    """

    id: str = "id"
    filename: str = "filename"
    filename_required: bool = True
    purpose: str = "purpose"
    purpose_required: bool = True
    size: str = "bytes"
    size_as_text: bool = False
    """Sizes are int64 written as a decimal string (protobuf's JSON mapping)."""
    created_at: str = "created_at"
    timestamps: Literal["unix", "rfc3339"] = "unix"
    expires_at: str | None = None
    line_count: str | None = "line_count"
    status: str | None = None
    status_details: tuple[str, ...] = ()
    """The path to the details, e.g. ("error", "message"); () if there are none."""
    absent_status: StatusClass = StatusClass.READY

    def classify(self, status: str | None) -> StatusClass:
        """The class of a raw status of this provider (None: absent)."""
        return classify_status(status, absent=self.absent_status)


OPENAI_SHAPE: Final = ItemFields()


class ParsedItems(NamedTuple):
    """The usable files of a listing, and how many items were skipped and why.

    `unchanged`: ids of the files listed exactly as stored (parse_raw_items).
    """

    files: tuple[ListedFile, ...]
    skipped: int
    problems: tuple[str, ...]
    unchanged: tuple[str, ...] = ()

    def listing(self, *, truncated: bool = False) -> Listing:
        return Listing(self.files, truncated, self.skipped, self.problems, self.unchanged)


class _UnusableItemError(Exception):
    """An item that cannot become a ListedFile; the message says why."""


def parse_items(
    items: Sequence[object], fields: ItemFields, *, storable: bool = False
) -> ParsedItems:
    """Validate and normalize the items of one listing, in the order listed.

    `fields` says where each column is (a provider without a status field gets status
    None and its `absent_status` class). Every item that
    is not kept counts as skipped, so `len(files) + skipped == len(items)`; `problems`
    describes them in short sentences, at most MAX_PROBLEMS of them plus a tally.
    `storable` says the caller has already made sure, on the body as a whole, that no
    string holds a NUL or a lone surrogate (see http.parse_json_checked): walking every
    item for them is the most expensive check of a large listing.
    """
    usable: list[ListedFile] = []
    problems: list[str] = []
    classes: dict[str | None, StatusClass] = {}
    with gc_paused():  # 100,000 new ListedFiles
        for position, item in enumerate(items):
            try:
                usable.append(_parse_item(item, fields, storable=storable, classes=classes))
            except _UnusableItemError as exc:
                problems.append(f"item {position}{_id_hint(item)}: {exc}")
    files, duplicate_problems = _drop_duplicates(usable)
    problems.extend(duplicate_problems)
    return ParsedItems(tuple(files), len(items) - len(files), _capped(problems))


def item_digest(text: bytes | msgspec.Raw) -> bytes:
    """What identifies an item's exact JSON text (and syncer's rules for reading it).

    128 bits of BLAKE2b: telling a changed item for an unchanged one by chance would
    take more items than any provider will ever list.
    """
    return _blake2b(text).digest()


def parse_raw_items(
    items: Sequence[msgspec.Raw],
    *,
    known: Mapping[bytes, str],
    fields: ItemFields,
    body: bytes | None = None,
) -> ParsedItems | None:
    """parse_items for items still in JSON text, parsing only the ones not `known`.

    An item whose digest is in `known` (digest -> id of a present file, as stored) is
    the same text as when that file was last written, so it would parse to the same
    file: it is only named in `unchanged`. Every other item is parsed on its own
    exactly as http.parse_json_checked parses a body, then checked as by parse_items,
    and its file keeps its digest.

    None when the whole body must decide after all (it then goes to parse_items): an
    item that is not JSON the standard library takes, or an id listed more than once.
    `body`, the text the items come from, spares looking for integers beyond 64 bits
    in each item to parse when there are many: one look at it answers for all.
    """
    # Whole-list steps in C for the usual case, a re-sync where almost every item is
    # known: a loop in Python over 100,000 of them took longer than the hashing.
    digests = [_blake2b(text).digest() for text in items]
    found = list(map(known.get, digests))
    unchanged = [file_id for file_id in found if file_id is not None]
    to_parse = [position for position, file_id in enumerate(found) if file_id is None]
    # None: each item is looked at. Once in the whole body costs about as much as in
    # an eighth of its items one by one.
    big_integers = None
    if body is not None and len(to_parse) > len(items) // 8 and not may_hold_big_integers(body):
        big_integers = False
    usable: list[ListedFile] = []
    problems: list[str] = []
    classes: dict[str | None, StatusClass] = {}
    with gc_paused():
        for position in to_parse:
            try:
                item, storable = loads_checked(bytes(items[position]), big_integers=big_integers)
            except (ValueError, RecursionError):
                return None
            try:
                usable.append(
                    _parse_item(
                        item,
                        fields,
                        storable=storable,
                        classes=classes,
                        digest=digests[position],
                    )
                )
            except _UnusableItemError as exc:
                problems.append(f"item {position}{_id_hint(item)}: {exc}")
    ids = {file.file_id for file in usable}
    ids.update(unchanged)
    if len(ids) != len(usable) + len(unchanged):
        return None
    skipped = len(items) - len(usable) - len(unchanged)
    return ParsedItems(tuple(usable), skipped, _capped(problems), tuple(unchanged))


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages about unexpected shapes."""
    if value is None:
        return "null"
    # bool first: it is a subclass of int.
    for python_type, name in _JSON_TYPES:
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def _parse_item(  # noqa: C901, PLR0912 - one flat run of checks; helpers would cost a call per field
    item: object,
    fields: ItemFields,
    *,
    storable: bool,
    classes: dict[str | None, StatusClass],
    digest: bytes | None = None,
) -> ListedFile:
    """One item as a ListedFile, checking its fields in a fixed order.

    Written for speed (a listing may hold 100,000 items): each field is checked inline
    for the usual case, exact JSON types, and anything else goes through the helper
    that accepts it (806.0 bytes) or raises with the reason.
    """
    if not isinstance(item, dict):
        raise _UnusableItemError(f"is {json_type(item)}, not an object")
    if not storable and _has_unstorable_text(item):
        raise _UnusableItemError(
            "contains a NUL character or a lone surrogate, which PostgreSQL cannot store"
        )
    get = item.get
    file_id = get(fields.id)
    if not isinstance(file_id, str) or not file_id:
        raise _UnusableItemError(f"{fields.id} is {_describe(file_id)}, not a non-empty string")
    if len(file_id) > MAX_ID_CHARACTERS:
        raise _UnusableItemError(
            f"{fields.id} is {len(file_id)} characters long; "
            f"syncer keeps ids of up to {MAX_ID_CHARACTERS}"
        )
    status = get(fields.status) if fields.status is not None else None
    if status is not None and type(status) is not str:
        status = _optional_str(item, fields.status or "status")
    filename = get(fields.filename)
    if type(filename) is not str:
        filename = _text(item, fields.filename, required=fields.filename_required)
    purpose = get(fields.purpose)
    if type(purpose) is not str:
        purpose = _text(item, fields.purpose, required=fields.purpose_required)
    size = get(fields.size)
    if fields.size_as_text:
        size = _integer_text(size, fields.size)
    elif type(size) is not int or not _INT64_MIN <= size <= _INT64_MAX:
        size = _integer(size, fields.size, _INT64)
    line_count = get(fields.line_count) if fields.line_count is not None else None
    if line_count is not None and (
        type(line_count) is not int or not _INT32_MIN <= line_count <= _INT32_MAX
    ):
        line_count = _integer(line_count, fields.line_count or "line_count", _INT32)
    details = _details(item, fields.status_details) if fields.status_details else None
    status_class = classes.get(status)
    if status_class is None:
        status_class = classes[status] = fields.classify(status)
    created = get(fields.created_at)
    if fields.timestamps == "rfc3339":
        created_at = _rfc3339(created, fields.created_at)
    elif type(created) is int and 0 <= created < _MILLISECONDS_FROM:
        created_at = datetime.fromtimestamp(created, UTC)
    else:
        created_at = _created_at(item, fields.created_at)
    expires_at = None
    if fields.expires_at is not None and (expires := get(fields.expires_at)) is not None:
        if fields.timestamps == "rfc3339":
            expires_at = _rfc3339(expires, fields.expires_at)
        else:
            expires_at = _unix_time(expires, fields.expires_at)
    # Positional, in ListedFile's field order: keywords cost a tenth of the parse.
    return ListedFile(
        file_id,
        filename,
        purpose,
        size,
        line_count,
        status,
        details,
        status_class,
        created_at,
        item,
        digest,
        expires_at,
    )


def _text(item: dict[str, Any], name: str, *, required: bool) -> str:
    """A string field; an optional one that is absent or null reads as ``."""
    if not required and item.get(name) is None:
        return ""
    return _required_str(item, name)


def _details(item: dict[str, Any], path: tuple[str, ...]) -> str | None:
    """The status details at `path` (e.g. error.message); None where any step is missing."""
    value: object = item
    for step in path:
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    if value is not None and not isinstance(value, str):
        raise _UnusableItemError(f"{'.'.join(path)} is {_describe(value)}, not a string or null")
    return value


def _integer_text(value: object, name: str) -> int:
    """An int64 written as a decimal string ("1048576"); a plain integer is taken too."""
    if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit():
        if len(value) > _MAX_INT64_DIGITS:
            raise _UnusableItemError(f"{name} {_preview(value)} is out of range")
        value = int(value)
    elif isinstance(value, str):
        raise _UnusableItemError(f"{name} is {_describe(value)}, not a whole number")
    return _integer(value, name, _INT64)


def _rfc3339(value: object, name: str) -> datetime:
    """An RFC 3339 time ("2025-04-15T18:37:24.100435Z", up to nanoseconds) in UTC."""
    if not isinstance(value, str):
        raise _UnusableItemError(f"{name} is {_describe(value)}, not an RFC 3339 time")
    text = _EXCESS_FRACTION.sub(r"\1", value.strip())
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _UnusableItemError(f"{name} {_preview(value)} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise _UnusableItemError(f"{name} {_preview(value)} has no time zone")
    return parsed.astimezone(UTC)


def _unix_time(value: object, name: str) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _UnusableItemError(f"{name} is {_describe(value)}, not a number")
    moment = _from_unix_time(value)
    if moment is None:
        raise _UnusableItemError(f"{name} {_preview(value)} is out of range")
    return moment


def _has_unstorable_text(value: object) -> bool:
    # Iterative, not recursive: the JSON parser allows nesting deep enough to exhaust
    # the stack of a recursive walk.
    pending = [value]
    while pending:
        current = pending.pop()
        if isinstance(current, str):
            if _UNSTORABLE.search(current):
                return True
        elif isinstance(current, dict):
            pending.extend(current.keys())
            pending.extend(current.values())
        elif isinstance(current, list):
            pending.extend(current)
    return False


def _required_str(item: dict[str, Any], name: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise _UnusableItemError(f"{name} is {_describe(value)}, not a string")
    return value


def _optional_str(item: dict[str, Any], name: str) -> str | None:
    value = item.get(name)
    if value is not None and not isinstance(value, str):
        raise _UnusableItemError(f"{name} is {_describe(value)}, not a string or null")
    return value


def _integer(value: object, name: str, bounds: tuple[int, int]) -> int:
    # Some JSON encoders write every number as a float: 806.0 is an integer.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _UnusableItemError(f"{name} is {_describe(value)}, not an integer")
    low, high = bounds
    if not low <= value <= high:
        raise _UnusableItemError(f"{name} {_preview(value)} is out of range")
    return value


def _created_at(item: dict[str, Any], name: str) -> datetime:
    # SiliconFlow's upload response spells it createdAt; accept that spelling too.
    value = item.get(name)
    if value is None and name == "created_at":
        value = item.get("createdAt")
    return _unix_time(value, name)


def _from_unix_time(value: float) -> datetime | None:
    """Unix seconds, milliseconds or microseconds as a UTC datetime; None if impossible."""
    try:
        seconds = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    if seconds >= _MICROSECONDS_FROM:
        seconds /= 1_000_000
    elif seconds >= _MILLISECONDS_FROM:
        seconds /= 1_000
    if seconds < 0:
        return None
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, ValueError, OSError):  # infinity, or past the year 9999
        return None


def _drop_duplicates(files: list[ListedFile]) -> tuple[list[ListedFile], list[str]]:
    """Keep one of identical copies of an id; keep none of conflicting ones.

    When the copies differ there is no telling which one is true.
    """
    if len({file.file_id for file in files}) == len(files):
        return files, []
    copies_by_id: defaultdict[str, list[ListedFile]] = defaultdict(list)
    for file in files:
        copies_by_id[file.file_id].append(file)
    kept: list[ListedFile] = []
    problems: list[str] = []
    for file_id, copies in copies_by_id.items():
        first, *others = copies
        if not others:
            kept.append(first)
        elif all(other.raw == first.raw for other in others):
            kept.append(first)
            problems.append(
                f"id {_preview(file_id)} listed {len(copies)} times; kept one identical copy"
            )
        else:
            problems.append(
                f"id {_preview(file_id)} listed {len(copies)} times with different contents; "
                "skipped every copy"
            )
    return kept, problems


def _capped(problems: list[str]) -> tuple[str, ...]:
    if len(problems) <= MAX_PROBLEMS:
        return tuple(problems)
    return (*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more")


def _id_hint(item: object) -> str:
    file_id = item.get("id") if isinstance(item, dict) else None
    return f" (id {_preview(file_id)})" if isinstance(file_id, str) and file_id else ""


def _describe(value: object) -> str:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return f"{json_type(value)} {_preview(value)}"
    return json_type(value)


def _preview(value: str | float) -> str:
    """A short repr: problems are logged and stored, and items may hold huge values.

    repr() also escapes NUL, lone surrogates and control characters.
    """
    if isinstance(value, str):
        cut = value[:_PREVIEW_CHARS]
        return repr(cut) + ("..." if len(value) > _PREVIEW_CHARS else "")
    text = repr(value)
    return text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "..."
