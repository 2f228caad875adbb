"""Plain values that flow between the layers: provider -> diff -> store.

Nothing here does I/O. The string values of the enums are public contract: they are
stored in the database and users write SQL against them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import builtins
    from datetime import datetime


class StatusClass(StrEnum):
    READY = "ready"
    PENDING = "pending"
    FAILED = "failed"
    UNKNOWN = "unknown"


class EventKind(StrEnum):
    APPEARED = "appeared"
    STATUS_CHANGED = "status_changed"
    CHANGED = "changed"
    DISAPPEARED = "disappeared"
    EXPIRED = "expired"
    """Gone at or after its `expires_at`: the provider's retention, not a deletion."""
    REAPPEARED = "reappeared"


class Outcome(StrEnum):
    OK = "ok"
    INCOMPLETE = "incomplete"
    HELD = "held"
    FAILED = "failed"


_STATUS_CLASSES = {
    "ok": StatusClass.READY,
    "ready": StatusClass.READY,
    "processed": StatusClass.READY,
    "success": StatusClass.READY,
    "active": StatusClass.READY,
    "error": StatusClass.FAILED,
    "failed": StatusClass.FAILED,
    "uploaded": StatusClass.PENDING,
    "processing": StatusClass.PENDING,
    "validating": StatusClass.PENDING,
    "in_progress": StatusClass.PENDING,
}


def classify_status(status: str | None, *, absent: StatusClass) -> StatusClass:
    """Map a provider's raw status string onto the four classes users alert on.

    `absent` is the class of a file listed without a status, which each provider
    declares (providers.items.ItemFields): a provider with no status field at all only
    lists files it has accepted (ready); one whose status is deprecated and may be
    left out says so too; one that reports status but left it out gets `unknown`. A
    value never seen is `unknown`, never a guess.
    """
    if status is None:
        return absent
    return _STATUS_CLASSES.get(status.strip().lower(), StatusClass.UNKNOWN)


@dataclass(slots=True)
class ListedFile:
    """One usable file from a provider's listing, normalized to syncer's columns.

    Not frozen, for speed alone (an initial load builds 100,000, and a frozen
    dataclass's __init__ costs five times as much); nothing changes one once built.
    """

    file_id: str
    filename: str
    purpose: str
    bytes: int
    line_count: int | None
    status: str | None
    status_details: str | None
    status_class: StatusClass
    created_at: datetime
    raw: dict[str, Any]
    digest: builtins.bytes | None = None  # `bytes` is a field here
    """Of the item's exact JSON text (providers.items.item_digest); None if not known."""
    expires_at: datetime | None = None
    """When the provider will delete the file by itself, where it says."""


@dataclass(frozen=True, slots=True)
class Listing:
    """What one pass over a provider's list endpoint returned.

    `complete` is False when the provider may have cut the listing short (a
    SiliconFlow page of `limit` items) or when any item was unusable: either way a
    file missing from `files` may still exist, so nothing may be marked disappeared.

    `unchanged` names the present files whose item was listed byte for byte as when
    it was last stored (its digest matched): they are not parsed again, and so are not
    in `files`.
    """

    files: tuple[ListedFile, ...]
    truncated: bool = False
    skipped: int = 0
    problems: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    early_end: str | None = None
    """Why the pages stopped before the provider said the listing was over, if they did."""

    @property
    def complete(self) -> bool:
        return not self.truncated and self.skipped == 0

    def ended_early(self, reason: str) -> Listing:
        """This listing, marked incomplete because its pages stopped early for `reason`."""
        return replace(self, truncated=True, early_end=reason)

    @property
    def items_listed(self) -> int:
        """Every item the provider sent, usable or not."""
        return len(self.files) + len(self.unchanged) + self.skipped
