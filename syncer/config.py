"""Settings: the only module that reads the environment.

Everything is read and checked once, at start. A bad value raises `ConfigError` with one
line that names the setting, so the program never runs half-configured. Secrets are
wrapped in `Secret` the moment they are read.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import platformdirs
from dotenv import dotenv_values

from syncer.errors import ConfigError
from syncer.providers.spec import registry
from syncer.redaction import Secret, check_api_key, register_secret
from syncer.retention import RetentionPolicy

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_LIST_LIMIT = 10_000
# 100,000 files are a 17 MB listing: the defaults leave room for twice that, and keep
# the peak RSS of a sync under 600 MB whatever a provider sends (docs/security.md).
DEFAULT_MAX_LISTING_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_LISTING_ITEMS = 200_000
# Secret files hold a key or a URL; the TOML file a few tables. Anything bigger is a
# mistake (or /dev/zero), and is refused rather than read.
MAX_SECRET_FILE_BYTES = 64 * 1024
MAX_CONFIG_FILE_BYTES = 1024 * 1024
_SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
_AGE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_AGE_UNITS = {**_DURATION_UNITS, "d": 86_400, "w": 604_800}
_LOG_FORMATS = ("json", "console")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TOML_SOURCE_KEYS = {
    "name",
    "provider",
    "api_key_env",
    "api_key_file",
    "base_url",
    "interval",
    "list_limit",
}


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """One provider account that syncer polls."""

    name: str
    provider: str
    api_key: Secret
    base_url: str
    interval: float = 300.0
    list_limit: int = DEFAULT_LIST_LIMIT


@dataclass(frozen=True, slots=True)
class HttpPolicy:
    """Time limits for talking to providers.

    `request_deadline` bounds one request from connect to the last byte (a slow-drip
    body cannot hold a sync forever); `retry_budget` bounds all attempts and waits of
    one sync together. `max_listing_bytes` (decoded, over all pages) and
    `max_listing_items` bound what one listing may make syncer hold in memory.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    request_deadline: float = 60.0
    retry_budget: float = 120.0
    wait_initial: float = 0.5
    wait_max: float = 10.0
    max_listing_bytes: int = DEFAULT_MAX_LISTING_BYTES
    max_listing_items: int = DEFAULT_MAX_LISTING_ITEMS


@dataclass(frozen=True, slots=True)
class SyncRules:
    """The knobs of the diff that decide when a missing file counts as gone."""

    missing_grace: int = 1
    mass_disappear_fraction: float = 0.5
    mass_disappear_min: int = 10


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """How the dispatcher delivers alerts.

    A failed delivery waits `backoff_initial`, then twice as long each time up to
    `backoff_max`; after `max_attempts` the alert is `dead`, with its last error.
    """

    dispatch_interval: float = 5.0
    backoff_initial: float = 10.0
    backoff_max: float = 3600.0
    max_attempts: int = 12


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: Secret | None
    data_dir: Path
    sources: tuple[SourceConfig, ...]
    rules: SyncRules
    http: HttpPolicy
    alert_urls: tuple[Secret, ...] = ()
    alerts: AlertPolicy = AlertPolicy()
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    http_host: str = "0.0.0.0"  # noqa: S104 - the service is meant to be scraped from outside its container
    http_port: int = 8080
    lock_timeout: float = 30.0
    workers: int = 8  # sources one process syncs at a time
    lease_timeout: float = 60.0  # a dead replica's sources are taken over after this
    db_wait: float = 60.0  # 0: the first failed connection is final
    log_format: str | None = None  # None: console on a terminal, else json
    log_level: str = "INFO"

    def source(self, name: str) -> SourceConfig:
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(f"--source {name!r}: no such source (configured: {known})")


def load_settings(
    environ: Mapping[str, str] | None = None, *, env_file: Path | None = Path(".env")
) -> Settings:
    """Read every setting from `environ` (default: the process environment) and `.env`.

    Real environment variables win over the `.env` file, as with docker compose.
    """
    env = _Environment(environ if environ is not None else os.environ, env_file)
    database_url = _database_url(env)
    interval = env.duration("SYNCER_INTERVAL", 300.0)
    allow_insecure = env.flag("SYNCER_ALLOW_INSECURE_HTTP")
    sources = _env_sources(env, interval) + _toml_sources(env, interval)
    _check_unique_names(sources)
    for source in sources:
        _check_transport_security(source, allow_insecure=allow_insecure)
    return Settings(
        database_url=database_url,
        data_dir=Path(env.get("SYNCER_DATA_DIR") or platformdirs.user_data_dir("syncer")),
        sources=sources,
        rules=SyncRules(
            missing_grace=env.integer("SYNCER_MISSING_GRACE", 1, minimum=1),
            mass_disappear_fraction=env.fraction("SYNCER_MASS_DISAPPEAR_FRACTION", 0.5),
            mass_disappear_min=env.integer("SYNCER_MASS_DISAPPEAR_MIN", 10, minimum=0),
        ),
        http=HttpPolicy(
            request_deadline=env.duration("SYNCER_REQUEST_TIMEOUT", 60.0),
            retry_budget=env.duration("SYNCER_RETRY_TIMEOUT", 120.0),
            max_listing_bytes=env.integer(
                "SYNCER_MAX_LISTING_BYTES", DEFAULT_MAX_LISTING_BYTES, minimum=1024
            ),
            max_listing_items=env.integer(
                "SYNCER_MAX_LISTING_ITEMS", DEFAULT_MAX_LISTING_ITEMS, minimum=1
            ),
        ),
        alert_urls=_alert_urls(env),
        alerts=AlertPolicy(
            dispatch_interval=env.duration("SYNCER_ALERT_DISPATCH_INTERVAL", 5.0),
            backoff_initial=env.duration("SYNCER_ALERT_BACKOFF", 10.0),
            max_attempts=env.integer("SYNCER_ALERT_MAX_ATTEMPTS", 12, minimum=1),
        ),
        retention=RetentionPolicy(
            runs=env.age("SYNCER_RUN_RETENTION", timedelta(days=30)),
            alerts=env.age("SYNCER_ALERT_RETENTION", timedelta(days=90)),
            events=env.age("SYNCER_EVENT_RETENTION", None),
        ),
        http_host=env.get("SYNCER_HTTP_HOST") or "0.0.0.0",  # noqa: S104 - see Settings
        http_port=env.integer("SYNCER_HTTP_PORT", 8080, minimum=0, maximum=65535),
        lock_timeout=env.duration("SYNCER_LOCK_TIMEOUT", 30.0),
        workers=env.integer("SYNCER_WORKERS", 8, minimum=1, maximum=256),
        lease_timeout=env.duration("SYNCER_LEASE_TIMEOUT", 60.0),
        db_wait=_db_wait(env),
        log_format=env.choice("SYNCER_LOG_FORMAT", _LOG_FORMATS, default=None),
        log_level=env.choice("SYNCER_LOG_LEVEL", _LOG_LEVELS, default="INFO") or "INFO",
    )


def load_database_settings(
    environ: Mapping[str, str] | None = None, *, env_file: Path | None = Path(".env")
) -> Settings:
    """Only the settings that reaching the database needs, for `syncer migrate`.

    No sources and no alert URLs are read: a migrate container is given the database
    URL alone, and the keys' `*_FILE` settings in a shared `.env` name files it does
    not have. Everything else is left at its default.
    """
    env = _Environment(environ if environ is not None else os.environ, env_file)
    return Settings(
        database_url=_database_url(env),
        data_dir=Path(env.get("SYNCER_DATA_DIR") or platformdirs.user_data_dir("syncer")),
        sources=(),
        rules=SyncRules(),
        http=HttpPolicy(),
        lock_timeout=env.duration("SYNCER_LOCK_TIMEOUT", 30.0),
        db_wait=_db_wait(env),
        log_format=env.choice("SYNCER_LOG_FORMAT", _LOG_FORMATS, default=None),
        log_level=env.choice("SYNCER_LOG_LEVEL", _LOG_LEVELS, default="INFO") or "INFO",
    )


def _database_url(env: _Environment) -> Secret | None:
    url = env.secret("SYNCER_DATABASE_URL") or env.secret("DATABASE_URL")
    if url is not None:
        _register_password(url)
    return url


def _db_wait(env: _Environment) -> float:
    """SYNCER_DB_WAIT: like any duration, and 0 too, which turns the wait off."""
    match = _DURATION.match(env.get("SYNCER_DB_WAIT") or "")
    if match and float(match.group(1)) == 0:
        return 0.0
    return env.duration("SYNCER_DB_WAIT", 60.0)


def parse_duration(text: str) -> float:
    """`300`, `90s`, `5m` or `1h` as seconds; raises ValueError otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(text)
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(text)
    return seconds


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Environment:
    """Typed, validated access to variables; every error names the variable."""

    def __init__(self, environ: Mapping[str, str], env_file: Path | None) -> None:
        values: dict[str, str] = {}
        if env_file is not None and env_file.is_file():
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(environ)
        self._values = values

    def get(self, name: str) -> str | None:
        value = self._values.get(name)
        return value if value not in (None, "") else None

    def secret(self, name: str) -> Secret | None:
        """A secret given directly or, docker-secrets style, as `NAME_FILE`.

        Surrounding whitespace (an `echo`-made file, a CRLF .env) is stripped.
        """
        direct, path = self.get(name), self.get(f"{name}_FILE")
        if direct is not None and path is not None:
            raise ConfigError(f"{name}: set either {name} or {name}_FILE, not both")
        if path is not None:
            direct = _read_secret_file(f"{name}_FILE", Path(path))
        elif direct is not None:
            register_secret(direct)  # as given, in case it ever shows unstripped
            direct = direct.strip() or None
        return Secret(direct) if direct is not None else None

    def api_key(self, name: str) -> Secret | None:
        """An API key (see `secret`): refused if whitespace or a control character is
        left inside it, since it could not be sent in a header."""
        key = self.secret(name)
        if key is not None:
            check_api_key(name, key.reveal())
        return key

    def flag(self, name: str) -> bool:
        value = (self.get(name) or "0").strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected 1 or 0, got {value!r}")

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        text = self.get(name)
        if text is None:
            return default
        try:
            value = int(text.strip())
        except ValueError:
            raise ConfigError(f"{name}: expected a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and {maximum}" if maximum is not None else ""
            bound = f"between {minimum}{upper}" if upper else f"at least {minimum}"
            raise ConfigError(f"{name}: must be {bound}, got {value}")
        return value

    def fraction(self, name: str, default: float) -> float:
        text = self.get(name)
        if text is None:
            return default
        try:
            value = float(text.strip())
        except ValueError:
            raise ConfigError(f"{name}: expected a number between 0 and 1, got {text!r}") from None
        if not 0 <= value <= 1:
            raise ConfigError(f"{name}: must be between 0 and 1, got {value}")
        return value

    def duration(self, name: str, default: float) -> float:
        text = self.get(name)
        if text is None:
            return default
        try:
            return parse_duration(text)
        except ValueError:
            raise ConfigError(
                f"{name}: expected a positive duration like 300, 90s, 5m or 1h, got {text!r}"
            ) from None

    def age(self, name: str, default: timedelta | None) -> timedelta | None:
        """A retention: `30d`, `2w`, `12h`, seconds; `0` (or unset, by default) keeps all."""
        text = self.get(name)
        if text is None:
            return default
        match = _AGE.match(text)
        if not match:
            raise ConfigError(
                f"{name}: expected an age like 30d, 2w, 12h or 0 (keep everything), got {text!r}"
            )
        seconds = int(match.group(1)) * _AGE_UNITS[match.group(2)]
        return timedelta(seconds=seconds) if seconds else None

    def choice(self, name: str, choices: tuple[str, ...], *, default: str | None) -> str | None:
        text = self.get(name)
        if text is None:
            return default
        normalized = text.strip().upper() if choices == _LOG_LEVELS else text.strip().lower()
        if normalized not in choices:
            raise ConfigError(f"{name}: must be one of {', '.join(choices)}, got {text!r}")
        return normalized


def _read_secret_file(setting: str, path: Path) -> str:
    text = read_bounded(setting, path, MAX_SECRET_FILE_BYTES)
    register_secret(text)  # as read, in case it ever shows unstripped
    value = text.strip()
    if not value:
        raise ConfigError(f"{setting}: {path} is empty")
    return value


def read_bounded(setting: str, path: Path, limit: int) -> str:
    """The UTF-8 text of the regular file at `path`, refused beyond `limit` bytes.

    Opened without blocking, so that a FIFO nobody writes to is refused rather than
    waited on; devices (/dev/zero), directories and sockets are refused too.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise ConfigError(f"{setting}: cannot read {path}: {error.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{setting}: {path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(limit + 1)
    except OSError as error:
        raise ConfigError(f"{setting}: cannot read {path}: {error.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(f"{setting}: {path} is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{setting}: {path} is not UTF-8 text") from None


def _env_sources(env: _Environment, interval: float) -> tuple[SourceConfig, ...]:
    """The one-account-per-provider shortcut: `{PROVIDER}_API_KEY` (and `_BASE_URL`, ...).

    Which providers exist, their default base URLs and page sizes, and whether
    `{PROVIDER}_LIST_LIMIT` is read, come from the provider registry.
    """
    sources = []
    for provider in registry().values():
        prefix = provider.env_prefix
        key = env.api_key(f"{prefix}_API_KEY")
        if key is None:
            continue
        list_limit = provider.list_limit or DEFAULT_LIST_LIMIT
        if provider.list_limit_setting:
            list_limit = env.integer(f"{prefix}_LIST_LIMIT", list_limit, minimum=1)
        sources.append(
            SourceConfig(
                name=provider.name,
                provider=provider.name,
                api_key=key,
                base_url=_base_url(
                    f"{prefix}_BASE_URL",
                    env.get(f"{prefix}_BASE_URL") or provider.default_base_url,
                ),
                interval=interval,
                list_limit=list_limit,
            )
        )
    return tuple(sources)


def _toml_sources(env: _Environment, interval: float) -> tuple[SourceConfig, ...]:
    path_text = env.get("SYNCER_CONFIG")
    if path_text is None:
        return ()
    path = Path(path_text)
    text = read_bounded("SYNCER_CONFIG", path, MAX_CONFIG_FILE_BYTES)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"SYNCER_CONFIG: {path} is not valid TOML: {error}") from None
    tables = document.get("sources", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"SYNCER_CONFIG: {path}: 'sources' must be [[sources]] tables")
    return tuple(
        _toml_source(env, table, f"SYNCER_CONFIG {path}: sources[{index}]", interval)
        for index, table in enumerate(tables)
    )


def _toml_source(
    env: _Environment, table: dict[str, Any], where: str, interval: float
) -> SourceConfig:
    unknown = sorted(set(table) - _TOML_SOURCE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    name = table.get("name")
    if not isinstance(name, str) or not _SOURCE_NAME.match(name):
        raise ConfigError(
            f"{where}.name: required, lowercase letters, digits, '_', '.', '-' (got {name!r})"
        )
    where = f"{where} ({name})"
    providers = registry()
    provider_name = table.get("provider")
    provider = providers.get(provider_name) if isinstance(provider_name, str) else None
    if provider is None:
        raise ConfigError(f"{where}.provider: must be one of {', '.join(providers)}")
    base_url = table.get("base_url", provider.default_base_url)
    if not isinstance(base_url, str):
        raise ConfigError(f"{where}.base_url: must be a string")
    return SourceConfig(
        name=name,
        provider=provider.name,
        api_key=_toml_api_key(env, table, where),
        base_url=_base_url(f"{where}.base_url", base_url),
        interval=_toml_interval(table.get("interval"), where, interval),
        list_limit=_toml_list_limit(
            table.get("list_limit"), where, provider.list_limit or DEFAULT_LIST_LIMIT
        ),
    )


def _toml_api_key(env: _Environment, table: dict[str, Any], where: str) -> Secret:
    # A key written into the TOML file itself would end up in backups and repos:
    # only references to where the key lives are accepted.
    key_env, key_file = table.get("api_key_env"), table.get("api_key_file")
    if (key_env is None) == (key_file is None):
        raise ConfigError(f"{where}: set exactly one of api_key_env and api_key_file")
    if key_file is not None:
        if not isinstance(key_file, str):
            raise ConfigError(f"{where}.api_key_file: must be a path string")
        setting = f"{where}.api_key_file"
        key_text = _read_secret_file(setting, Path(key_file))
        check_api_key(setting, key_text)
        return Secret(key_text)
    if not isinstance(key_env, str):
        raise ConfigError(f"{where}.api_key_env: must be the name of a variable")
    key = env.api_key(key_env)
    if key is None:
        raise ConfigError(f"{where}.api_key_env: variable {key_env} is not set")
    return key


def _toml_interval(value: object, where: str, default: float) -> float:
    if value is None:
        return default
    text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    try:
        return parse_duration(text if isinstance(text, str) else "")
    except ValueError:
        raise ConfigError(
            f"{where}.interval: expected a positive duration like 300 or 5m"
        ) from None


def _toml_list_limit(value: object, where: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}.list_limit: must be a whole number >= 1")
    return value


def _base_url(setting: str, url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{setting}: expected an http(s) URL, got {url!r}")
    return url.strip().rstrip("/")


def _check_unique_names(sources: tuple[SourceConfig, ...]) -> None:
    seen: set[str] = set()
    for source in sources:
        if source.name in seen:
            raise ConfigError(
                f"source {source.name!r} is defined twice (environment and/or SYNCER_CONFIG)"
            )
        seen.add(source.name)


def _check_transport_security(source: SourceConfig, *, allow_insecure: bool) -> None:
    parts = urlsplit(source.base_url)
    if parts.scheme == "http" and not allow_insecure and not is_loopback_host(parts.hostname or ""):
        raise ConfigError(
            f"source {source.name!r}: refusing to send its API key over plain http to "
            f"{parts.hostname}; use https, or set SYNCER_ALLOW_INSECURE_HTTP=1"
        )


def _register_password(url: Secret) -> None:
    # The whole URL is a secret already; a driver error may quote the password alone,
    # and libpq also takes it from the query (`?password=...`).
    with contextlib.suppress(ValueError):
        parts = urlsplit(url.reveal())
        passwords = [parts.password] if parts.password else []
        passwords += [value for key, value in parse_qsl(parts.query) if key == "password"]
        for password in passwords:
            register_secret(password)
            register_secret(unquote(password))


def _alert_urls(env: _Environment) -> tuple[Secret, ...]:
    raw = env.secret("SYNCER_ALERT_URLS")
    if raw is None:
        return ()
    return tuple(Secret(url) for url in re.split(r"[\s,]+", raw.reveal()) if url)
