"""Delivering outbox alerts to people through Apprise, with retries and backoff.

Each configured URL is one *target*. An alert is `sent` once every target has
accepted it; a target that fails is retried with exponential backoff (the others are
not sent it again), and after the retry budget the alert is `dead` with the last error.

Targets are named in logs, errors and the database by their position and service
("target #2 (Slack)") and by Apprise's URL id, a hash: their URLs carry tokens.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

import apprise

from syncer.alerts import render
from syncer.db import outbox
from syncer.errors import ConfigError
from syncer.redaction import redact, register_secret

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    import sqlalchemy as sa

    from syncer.alerts import Message
    from syncer.config import AlertPolicy
    from syncer.redaction import Secret

log = logging.getLogger(__name__)

# URL parts at least this long are treated as tokens: Apprise URLs put tokens in the
# host (dingtalk://TOKEN), the path (json://host/TOKEN) or the query (?key=TOKEN).
_MIN_TOKEN_LENGTH = 10
_MAX_ERROR_LENGTH = 500
# One dispatch pass delivers at most this many alerts; the next tick goes on.
_MAX_ALERTS_PER_PASS = 100


@dataclass(frozen=True, slots=True)
class Target:
    """One notification target from SYNCER_ALERT_URLS."""

    number: int
    service: str
    url_id: str
    plugin: apprise.NotifyBase = field(repr=False)

    def __str__(self) -> str:
        return f"target #{self.number} ({self.service})"


@dataclass(frozen=True, slots=True)
class Delivery:
    """How one target took one message; `error` says why it did not (redacted)."""

    target: Target
    ok: bool
    error: str | None = None


@dataclass(slots=True)
class DispatchReport:
    sent: int = 0
    retrying: int = 0
    dead: int = 0

    @property
    def delivered_everything(self) -> bool:
        return self.retrying == 0 and self.dead == 0


def build_targets(urls: Sequence[Secret]) -> tuple[Target, ...]:
    """Turn SYNCER_ALERT_URLS into targets; an unusable URL is a configuration error."""
    targets = []
    for number, url in enumerate(urls, start=1):
        _register_url_parts(url.reveal())
        plugin = apprise.Apprise.instantiate(url.reveal(), suppress_exceptions=True)
        if not isinstance(plugin, apprise.NotifyBase):
            scheme = url.reveal().partition("://")[0]
            raise ConfigError(
                f"SYNCER_ALERT_URLS: entry {number} ({scheme}://...) is not a notification "
                "URL that Apprise understands; see https://github.com/caronc/apprise/wiki"
            )
        service = str(getattr(plugin, "service_name", None) or type(plugin).__name__)
        targets.append(Target(number, service, _url_id(plugin) or str(number), plugin))
    return tuple(targets)


def _url_id(plugin: apprise.NotifyBase) -> str | None:
    url_id: str | None = plugin.url_id()  # type: ignore[no-untyped-call] # Apprise is untyped here
    return url_id


def send(target: Target, message: Message) -> Delivery:
    """Send one message to one target; never raises."""
    with _capture_apprise_errors() as errors:
        try:
            ok = bool(
                target.plugin.notify(
                    body=message.body, title=message.title, notify_type=message.severity.value
                )
            )
        except Exception as error:  # noqa: BLE001 - a broken plugin is one failed delivery
            ok = False
            errors.append(f"{type(error).__name__}: {error}")
    if ok:
        return Delivery(target, ok=True)
    cause = "; ".join(errors[-2:]) or "the target did not accept the notification"
    return Delivery(target, ok=False, error=redact(cause)[:_MAX_ERROR_LENGTH])


def dispatch_due(
    engine: sa.Engine,
    targets: Sequence[Target],
    policy: AlertPolicy,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> DispatchReport:
    """One pass: deliver every due pending alert (up to a bound) and record the outcome.

    Each alert is claimed, sent and recorded in one transaction of its own, so another
    replica's dispatcher skips it meanwhile, and what was delivered is never forgotten
    by more than the alert in hand. A target that failed once in a pass is not tried
    again in the same pass: its alerts wait for their backoff instead of each waiting
    out the target's timeout.
    """
    report = DispatchReport()
    if not targets:
        return report  # with nowhere to send them, alerts stay pending: never "sent"
    down: dict[str, Delivery] = {}
    for _ in range(_MAX_ALERTS_PER_PASS):
        with engine.begin() as conn:
            alert = outbox.claim_next_due(conn, clock())
            if alert is None:
                break
            delivered = list(alert.delivered_to)
            errors = []
            try:
                message = render(
                    alert.alert_key, alert.kind, alert.source, alert.provider, alert.payload
                )
            except ValueError as error:
                # E.g. a kind from a newer syncer: back off like a failed delivery
                # rather than block every alert behind this one on every pass.
                errors.append(f"cannot render this alert: {error}")
                _record(conn, alert, delivered, errors, policy, clock(), report)
                continue
            for target in targets:
                if target.url_id in delivered:
                    continue
                result = down.get(target.url_id) or send(target, message)
                if result.ok:
                    delivered.append(target.url_id)
                else:
                    down[target.url_id] = result
                    errors.append(f"{target}: {result.error}")
            _record(conn, alert, delivered, errors, policy, clock(), report)
    return report


def send_test(targets: Sequence[Target], message: Message) -> list[Delivery]:
    """Send a test message to every target and say how each took it."""
    return [send(target, message) for target in targets]


def _record(
    conn: sa.Connection,
    alert: outbox.StoredAlert,
    delivered: list[str],
    errors: list[str],
    policy: AlertPolicy,
    now: datetime,
    report: DispatchReport,
) -> None:
    attempts = alert.attempts + 1
    if not errors:
        state, next_attempt_at, last_error = "sent", now, None
        report.sent += 1
        log.info("alert %s delivered", alert.alert_key, extra={"alert_id": alert.alert_key})
    else:
        last_error = "; ".join(errors)[:_MAX_ERROR_LENGTH]
        if attempts >= policy.max_attempts:
            state, next_attempt_at = "dead", now
            report.dead += 1
            log.error(
                "alert %s is dead after %d attempts: %s",
                alert.alert_key,
                attempts,
                last_error,
                extra={"alert_id": alert.alert_key},
            )
        else:
            wait = min(policy.backoff_initial * 2 ** (attempts - 1), policy.backoff_max)
            state, next_attempt_at = "pending", now + timedelta(seconds=wait)
            report.retrying += 1
            log.warning(
                "alert %s not delivered (attempt %d of %d), retrying in %.0fs: %s",
                alert.alert_key,
                attempts,
                policy.max_attempts,
                wait,
                last_error,
                extra={"alert_id": alert.alert_key},
            )
    outbox.record_delivery(
        conn,
        alert.id,
        state=state,
        attempts=attempts,
        delivered_to=delivered,
        next_attempt_at=next_attempt_at,
        sent_at=now if state == "sent" else None,
        last_error=last_error,
    )


class _ErrorCapture(logging.Handler):
    """Collects what Apprise logs about a failed send, from this thread only."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.lines.append(record.getMessage())


@contextmanager
def _capture_apprise_errors() -> Iterator[list[str]]:
    capture = _ErrorCapture()
    apprise_log = logging.getLogger("apprise")
    apprise_log.addHandler(capture)
    try:
        yield capture.lines
    finally:
        apprise_log.removeHandler(capture)


def _register_url_parts(url: str) -> None:
    """Mask the URL, and each part of it that may be a token, wherever it turns up."""
    register_secret(url)
    try:
        parts = urlsplit(url)
        pieces = [parts.hostname or "", parts.username or "", parts.path]
        pieces += parts.path.split("/")
        pieces += [value for _, value in parse_qsl(parts.query)]
        password = parts.password
    except ValueError:
        return
    if password:
        register_secret(password)
        register_secret(unquote(password))
    for piece in pieces:
        if len(piece) >= _MIN_TOKEN_LENGTH:
            register_secret(piece)
            register_secret(unquote(piece))
