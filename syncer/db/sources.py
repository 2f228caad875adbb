"""The `sources` table: when each source is due, and who holds its lease.

How replicas share the work (procrastinate's `fetch_job` in spirit):

1. **Claim** (`claim_due`): one short statement picks due, unleased, non-retired rows
   `ORDER BY next_due_at ... FOR UPDATE SKIP LOCKED`, marks them leased (owner,
   expiry, `lease_token + 1`) and returns the tokens; then it commits. Two replicas
   never claim one row, and none waits for the other.
2. **Fetch** with no database connection held.
3. **Write** in one transaction that first checks the lease again (`hold_for_write`:
   the row with this owner *and token*, locked `FOR UPDATE`). A listing fetched under
   a lease that passed to someone else (a bigger token) is never applied. While the
   row is locked, nobody can take the lease over, so the expiry only has to cover the
   fetch.
4. **Release** (`release`, in that same transaction): the lease is cleared and, for a
   scheduled sync, `next_due_at` moves one interval on from when it was due (no
   drift), skipping intervals already past (no burst of catch-up syncs).

A holder renews its leases while its syncs run (`renew`); one that dies stops
renewing, and another replica claims the source once the lease has expired. All
times come from the database's clock, so replicas' clocks need not agree.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from datetime import datetime

    from syncer.config import SourceConfig


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to sync `source` once: valid while its `token` is the row's."""

    source: str
    owner: str
    token: int
    failing: bool = False  # its last run failed


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a source's lease, and until when (for a clear "busy" message)."""

    owner: str
    expires_at: datetime

    def __str__(self) -> str:
        return f"leased by {self.owner} until {self.expires_at:%H:%M:%S %Z}"


def process_owner(role: str) -> str:
    """A lease owner id for this process: role, host and pid, unique across restarts."""
    return f"{role}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def first_due_offset(name: str, interval: float) -> float:
    """Seconds from now to a new source's first sync: a stable spot in its interval.

    A hash of the name, so 1000 sources configured at once are spread evenly over
    their interval instead of all firing at start, and every replica computes the same.
    """
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64 * interval


_SPREAD_PER_SOURCE = 1.0  # seconds
_REGISTER = sa.text(
    """
    INSERT INTO sources AS s (name, provider, interval_seconds, next_due_at)
    SELECT name, provider, interval_seconds, now() + make_interval(secs => offset_seconds)
    FROM unnest(CAST(:names AS text[]), CAST(:providers AS text[]),
                CAST(:intervals AS float8[]), CAST(:offsets AS float8[]))
         AS c (name, provider, interval_seconds, offset_seconds)
    ON CONFLICT (name) DO UPDATE SET
        provider = excluded.provider,
        interval_seconds = excluded.interval_seconds,
        retired_at = NULL,
        -- A shorter interval takes effect now, not after the old, longer one.
        next_due_at = LEAST(
            s.next_due_at, now() + make_interval(secs => excluded.interval_seconds))
    WHERE (s.provider, s.interval_seconds, s.retired_at)
          IS DISTINCT FROM (excluded.provider, excluded.interval_seconds, NULL)
    """
)
_RETIRE = sa.text(
    """
    UPDATE sources SET retired_at = now()
    WHERE retired_at IS NULL AND name <> ALL(CAST(:names AS text[]))
    RETURNING name
    """
)
_ADD_MISSING = sa.text(
    """
    INSERT INTO sources (name, provider, interval_seconds, next_due_at)
    VALUES (:name, :provider, :interval, now() + make_interval(secs => :offset))
    ON CONFLICT (name) DO NOTHING
    """
)


def register(conn: sa.Connection, sources: Sequence[SourceConfig]) -> list[str]:
    """Make the table match the configuration; returns the names it retired.

    New sources get a first due time spread over their interval; known ones keep their
    schedule (a restart does not sync everything at once) and take the configured
    provider and interval: with replicas configured differently, the last to start
    wins. Sources no longer configured are marked retired: their rows and history
    stay, and nobody schedules them.
    """
    conn.execute(
        _REGISTER,
        {
            "names": [s.name for s in sources],
            "providers": [s.provider for s in sources],
            "intervals": [s.interval for s in sources],
            # Over the interval, or one second per source if that is shorter: a few
            # sources start syncing soon, 1000 are spread over their whole interval.
            "offsets": [
                first_due_offset(s.name, min(s.interval, len(sources) * _SPREAD_PER_SOURCE))
                for s in sources
            ],
        },
    )
    retired = conn.execute(_RETIRE, {"names": [s.name for s in sources]}).scalars().all()
    return list(retired)


# Due, not retired, one of ours, and either unleased, expired, or leased by this very
# process to a sync that no longer runs (its release failed, say, the database being
# away): those would otherwise wait for their own expiry.
# A source this owner is still syncing is never claimed again by it, even once its
# lease has lapsed or passed on: that sync ends within its bound, and two of one
# source in one process would only take the lease from each other.
_CLAIMABLE = """
    name = ANY(CAST(:names AS text[])) AND retired_at IS NULL AND next_due_at <= now()
    AND name <> ALL(CAST(:running AS text[]))
    AND (lease_owner IS NULL OR lease_expires_at < now() OR lease_owner = :owner)
"""
_CLAIM = sa.text(
    f"""
    WITH healthy AS (
        SELECT name, next_due_at FROM sources WHERE {_CLAIMABLE} AND failures = 0
        ORDER BY next_due_at LIMIT :limit FOR UPDATE SKIP LOCKED
    ), failing AS (
        SELECT name, next_due_at FROM sources WHERE {_CLAIMABLE} AND failures > 0
        ORDER BY next_due_at LIMIT :failing_limit FOR UPDATE SKIP LOCKED
    ), candidates AS (
        SELECT * FROM healthy UNION ALL SELECT * FROM failing
    ), chosen AS (
        SELECT name FROM candidates ORDER BY next_due_at LIMIT :limit
    )
    UPDATE sources AS s SET
        lease_owner = :owner,
        lease_expires_at = now() + make_interval(secs => :lease_seconds),
        lease_token = s.lease_token + 1
    FROM chosen WHERE s.name = chosen.name
    RETURNING s.name, s.lease_token, s.failures > 0 AS failing
    """  # noqa: S608 - _CLAIMABLE is a constant; every value is a bound parameter
)


def claim_due(
    conn: sa.Connection,
    names: Sequence[str],
    owner: str,
    *,
    limit: int,
    failing_limit: int,
    lease_seconds: float,
    running: Iterable[str] = (),
) -> list[Lease]:
    """Lease up to `limit` due sources among `names`, the longest overdue first.

    Sources whose last run failed get at most `failing_limit` of them, so a provider
    in an outage, retrying for minutes, can never occupy every worker. `running`: the
    sources this owner is syncing right now. Commit soon after: the claimed rows stay
    locked until then.
    """
    if limit <= 0:
        return []
    rows = conn.execute(
        _CLAIM,
        {
            "names": list(names),
            "owner": owner,
            "running": list(running),
            "limit": limit,
            "failing_limit": max(0, failing_limit),
            "lease_seconds": lease_seconds,
        },
    ).all()
    return [Lease(row.name, owner, row.lease_token, row.failing) for row in rows]


_ACQUIRE = sa.text(
    """
    UPDATE sources SET
        lease_owner = :owner,
        lease_expires_at = now() + make_interval(secs => :lease_seconds),
        lease_token = lease_token + 1
    WHERE name = :name AND (lease_owner IS NULL OR lease_expires_at < now())
    RETURNING lease_token, failures > 0 AS failing
    """
)


def acquire(
    conn: sa.Connection, source: SourceConfig, owner: str, *, lease_seconds: float
) -> Lease | Holder:
    """Lease `source` now, due or not (`syncer sync`), or say who holds it.

    A source not in the table yet (no `syncer run` has registered it) is added first,
    with the same first due time `register` would give it.
    """
    conn.execute(
        _ADD_MISSING,
        {
            "name": source.name,
            "provider": source.provider,
            "interval": source.interval,
            "offset": first_due_offset(source.name, source.interval),
        },
    )
    row = conn.execute(
        _ACQUIRE, {"name": source.name, "owner": owner, "lease_seconds": lease_seconds}
    ).one_or_none()
    if row is not None:
        return Lease(source.name, owner, row.lease_token, row.failing)
    holder = conn.execute(
        sa.text("SELECT lease_owner, lease_expires_at FROM sources WHERE name = :name"),
        {"name": source.name},
    ).one()
    return Holder(holder.lease_owner, holder.lease_expires_at)


def hold_for_write(conn: sa.Connection, lease: Lease) -> bool:
    """True if `lease` is still valid, and then nobody can take it until this commits.

    The row is locked for the rest of the transaction: claims skip it, and a
    `syncer sync` of the source waits for the commit.
    """
    found = conn.execute(
        sa.text(
            "SELECT 1 FROM sources WHERE name = :name AND lease_owner = :owner"
            " AND lease_token = :token FOR UPDATE"
        ),
        {"name": lease.source, "owner": lease.owner, "token": lease.token},
    ).first()
    return found is not None


_RELEASE = sa.text(
    """
    UPDATE sources SET
        lease_owner = NULL,
        lease_expires_at = NULL,
        failures = CASE WHEN :failed THEN failures + 1 ELSE 0 END,
        -- The next slot of the source's own grid after now: due + k * interval.
        next_due_at = CASE WHEN :reschedule THEN
            next_due_at + make_interval(secs => interval_seconds * (floor(
                extract(epoch FROM now() - next_due_at) / interval_seconds) + 1))
            ELSE next_due_at END
    WHERE name = :name AND lease_owner = :owner AND lease_token = :token
    """
)


def release(conn: sa.Connection, lease: Lease, *, failed: bool, reschedule: bool) -> None:
    """End the lease: in the sync's write transaction, after `hold_for_write`.

    `reschedule`: a scheduled sync moves the source's next due time one interval on; a
    `syncer sync` leaves the schedule as it is.
    """
    conn.execute(
        _RELEASE,
        {
            "name": lease.source,
            "owner": lease.owner,
            "token": lease.token,
            "failed": failed,
            "reschedule": reschedule,
        },
    )


def renew(conn: sa.Connection, leases: Sequence[Lease], *, lease_seconds: float) -> set[str]:
    """Push the expiry of `leases` (all of one owner) out again; returns the sources renewed.

    A lease missing from the result has passed to someone else: its sync will not be
    applied.
    """
    if not leases:
        return set()
    renewed = conn.execute(
        sa.text(
            """
            UPDATE sources SET lease_expires_at = now() + make_interval(secs => :lease_seconds)
            FROM unnest(CAST(:names AS text[]), CAST(:tokens AS bigint[])) AS held (name, token)
            WHERE sources.name = held.name AND sources.lease_token = held.token
              AND sources.lease_owner = :owner
            RETURNING sources.name
            """
        ),
        {
            "names": [lease.source for lease in leases],
            "tokens": [lease.token for lease in leases],
            "owner": leases[0].owner,
            "lease_seconds": lease_seconds,
        },
    )
    return set(renewed.scalars())


@dataclass(frozen=True, slots=True)
class Schedule:
    """A source's schedule as /metrics reports it."""

    name: str
    interval_seconds: float
    lag_seconds: float


def schedules(conn: sa.Connection) -> list[Schedule]:
    """Every scheduled (not retired) source, with how far past due it is (0 if not)."""
    rows = conn.execute(
        sa.text(
            "SELECT name, interval_seconds,"
            " greatest(0, extract(epoch FROM now() - next_due_at))::float8 AS lag"
            " FROM sources WHERE retired_at IS NULL ORDER BY name"
        )
    )
    return [Schedule(row.name, row.interval_seconds, row.lag) for row in rows]
