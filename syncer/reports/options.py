"""The click options the report commands share, so each filter reads the same everywhere."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from syncer.model import EventKind, Outcome, StatusClass
from syncer.providers.spec import provider_names
from syncer.reports.output import Format
from syncer.reports.queries import parse_since

if TYPE_CHECKING:
    from collections.abc import Callable
    from enum import StrEnum

    Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _to_since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_since(value, now=datetime.now(UTC))
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    except OverflowError:
        # `9999999d` ago is before the year 1: no datetime holds it.
        raise click.BadParameter(
            f"{value!r} reaches outside the dates syncer can compare (years 1 to 9999)"
        ) from None


def _repeatable_choice(flag: str, dest: str, enum: type[StrEnum], help_text: str) -> Decorator:
    def to_members(
        _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
    ) -> tuple[StrEnum, ...]:
        return tuple(enum(value) for value in values)

    return click.option(
        flag,
        dest,
        multiple=True,
        type=click.Choice([member.value for member in enum]),
        callback=to_members,
        help=f"{help_text} (repeatable).",
    )


def since(what: str) -> Decorator:
    """`--since WHEN`, keeping the rows whose `what` is at or after WHEN."""
    return click.option(
        "--since",
        metavar="WHEN",
        callback=_to_since,
        help=f"Only rows whose {what} is at or after WHEN: a duration ago (90s, 30m, 24h,"
        " 7d, 2w) or an ISO time (UTC unless it names a zone).",
    )


def status_classes(help_text: str) -> Decorator:
    return _repeatable_choice("--status-class", "status_classes", StatusClass, help_text)


sources = click.option(
    "--source", "sources", multiple=True, metavar="NAME", help="Only this source (repeatable)."
)
providers = click.option(
    "--provider",
    "providers",
    multiple=True,
    metavar="NAME",
    help=f"Only this provider: {', '.join(provider_names())} (repeatable).",
)
kinds = _repeatable_choice("--kind", "kinds", EventKind, "Only events of this kind")
outcomes = _repeatable_choice("--outcome", "outcomes", Outcome, "Only runs with this outcome")
file_ids = click.option(
    "--file", "file_ids", multiple=True, metavar="ID", help="Only this file id (repeatable)."
)
include_deleted = click.option(
    "--include-deleted", is_flag=True, help="Also files that have disappeared."
)
# PostgreSQL's LIMIT is a bigint: a larger number would reach the database and fail
# there, as if it were down.
MAX_LIMIT = 2**63 - 1


def _check_limit(_ctx: click.Context, _param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value > MAX_LIMIT:
        raise click.BadParameter(f"{value} is more rows than a query can return ({MAX_LIMIT})")
    return value


limit = click.option(
    "--limit",
    type=click.IntRange(min=1),
    callback=_check_limit,
    metavar="N",
    help="At most N rows.",
)


def limit_with_default(default: int, help_text: str) -> Decorator:
    """`--limit N` with a default, bounded like `limit`."""
    return click.option(
        "--limit",
        type=click.IntRange(min=1),
        callback=_check_limit,
        default=default,
        show_default=True,
        metavar="N",
        help=help_text,
    )


output_format = click.option(
    "--format",
    "output_format",
    type=click.Choice([member.value for member in Format]),
    default=Format.TABLE.value,
    show_default=True,
    callback=lambda _ctx, _param, value: Format(value),
    help="table: a table on a terminal, tab-separated lines when piped; json: one object"
    " per line; csv: RFC 4180 with a header row.",
)
