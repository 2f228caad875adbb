"""Settings: what users set, and the one-line errors they get when it is wrong."""

from __future__ import annotations

from datetime import timedelta

import pytest

from syncer.config import load_settings, parse_duration
from syncer.errors import ConfigError
from syncer.redaction import redact

KEY = "sk-config-test-key-0123456789"


def load(env: dict[str, str], tmp_path=None):
    return load_settings(env, env_file=(tmp_path / ".env") if tmp_path else None)


def test_defaults_with_nothing_set():
    settings = load({})

    assert settings.sources == ()
    assert settings.database_url is None
    assert settings.rules.missing_grace == 1
    assert settings.rules.mass_disappear_fraction == 0.5
    assert settings.rules.mass_disappear_min == 10
    assert (settings.http_host, settings.http_port) == ("0.0.0.0", 8080)
    assert settings.data_dir.name == "syncer"


def test_provider_keys_define_one_source_each_with_documented_defaults():
    settings = load({"SILICONFLOW_API_KEY": KEY, "MOONSHOT_API_KEY": KEY + "m"})

    moonshot, siliconflow = sorted(settings.sources, key=lambda source: source.name)
    assert (siliconflow.name, siliconflow.provider) == ("siliconflow", "siliconflow")
    assert siliconflow.base_url == "https://api.siliconflow.cn/v1"
    assert siliconflow.list_limit == 10_000
    assert siliconflow.interval == 300
    assert moonshot.base_url == "https://api.moonshot.cn/v1"
    assert moonshot.api_key.reveal() == KEY + "m"


def test_keys_never_show_in_reprs_of_settings():
    settings = load(
        {"SILICONFLOW_API_KEY": KEY, "SYNCER_ALERT_URLS": "json://hook.test/x?t=tok123"}
    )

    assert KEY not in repr(settings)
    assert "tok123" not in repr(settings)
    assert "***" in repr(settings.sources[0])


def test_secret_file_form(tmp_path):
    (tmp_path / "key").write_text(KEY + "\n")
    settings = load({"MOONSHOT_API_KEY_FILE": str(tmp_path / "key")})

    assert settings.sources[0].api_key.reveal() == KEY


def test_dotenv_file_is_read_and_the_environment_wins(tmp_path):
    (tmp_path / ".env").write_text(f"MOONSHOT_API_KEY={KEY}\nSYNCER_INTERVAL=5m\n")
    settings = load({"SYNCER_INTERVAL": "90s"}, tmp_path)

    assert settings.sources[0].api_key.reveal() == KEY
    assert settings.sources[0].interval == 90


@pytest.mark.parametrize(
    ("text", "seconds"), [("300", 300), ("90s", 90), ("5m", 300), ("1h", 3600), ("1.5", 1.5)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SYNCER_INTERVAL": "soon"}, "SYNCER_INTERVAL"),
        ({"SYNCER_INTERVAL": "0"}, "SYNCER_INTERVAL"),
        ({"SYNCER_MISSING_GRACE": "0"}, "SYNCER_MISSING_GRACE"),
        ({"SYNCER_MISSING_GRACE": "two"}, "SYNCER_MISSING_GRACE"),
        ({"SYNCER_MASS_DISAPPEAR_FRACTION": "1.5"}, "SYNCER_MASS_DISAPPEAR_FRACTION"),
        ({"SYNCER_MASS_DISAPPEAR_MIN": "-1"}, "SYNCER_MASS_DISAPPEAR_MIN"),
        ({"SYNCER_HTTP_PORT": "70000"}, "SYNCER_HTTP_PORT"),
        ({"SYNCER_LOG_FORMAT": "xml"}, "SYNCER_LOG_FORMAT"),
        ({"SYNCER_LOG_LEVEL": "loud"}, "SYNCER_LOG_LEVEL"),
        ({"SYNCER_ALLOW_INSECURE_HTTP": "maybe"}, "SYNCER_ALLOW_INSECURE_HTTP"),
        ({"SILICONFLOW_API_KEY": KEY, "SILICONFLOW_LIST_LIMIT": "0"}, "SILICONFLOW_LIST_LIMIT"),
        ({"MOONSHOT_API_KEY": KEY, "MOONSHOT_BASE_URL": "ftp://x"}, "MOONSHOT_BASE_URL"),
        ({"MOONSHOT_API_KEY": KEY, "MOONSHOT_API_KEY_FILE": "/x"}, "MOONSHOT_API_KEY"),
        ({"MOONSHOT_API_KEY_FILE": "/nonexistent/key"}, "MOONSHOT_API_KEY_FILE"),
        ({"SYNCER_CONFIG": "/nonexistent/syncer.toml"}, "SYNCER_CONFIG"),
    ],
)
def test_a_bad_setting_is_one_line_that_names_it(env, named):
    with pytest.raises(ConfigError) as raised:
        load(env)

    message = str(raised.value)
    assert named in message
    assert "\n" not in message
    assert KEY not in message


@pytest.mark.parametrize("host", ["api.moonshot.cn", "10.0.0.5", "proxy.internal"])
def test_key_is_never_sent_over_plain_http_to_a_remote_host(host):
    env = {"MOONSHOT_API_KEY": KEY, "MOONSHOT_BASE_URL": f"http://{host}/v1"}
    with pytest.raises(ConfigError, match="plain http") as raised:
        load(env)
    assert KEY not in str(raised.value)

    allowed = load({**env, "SYNCER_ALLOW_INSECURE_HTTP": "1"})
    assert allowed.sources[0].base_url == f"http://{host}/v1"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.5.6.7"])
def test_plain_http_to_loopback_is_fine(host):
    settings = load({"MOONSHOT_API_KEY": KEY, "MOONSHOT_BASE_URL": f"http://{host}:9000/v1/"})

    assert settings.sources[0].base_url == f"http://{host}:9000/v1"


def write_toml(tmp_path, text: str) -> dict[str, str]:
    path = tmp_path / "syncer.toml"
    path.write_text(text)
    return {"SYNCER_CONFIG": str(path)}


def test_toml_config_defines_several_accounts_per_provider(tmp_path):
    (tmp_path / "team-b.key").write_text(KEY + "b")
    env = write_toml(
        tmp_path,
        f"""
        [[sources]]
        name = "kimi-team-a"
        provider = "moonshot"
        api_key_env = "KIMI_A_KEY"
        interval = "2m"

        [[sources]]
        name = "kimi-team-b"
        provider = "moonshot"
        api_key_file = "{tmp_path / "team-b.key"}"
        base_url = "https://api.moonshot.ai/v1"

        [[sources]]
        name = "sf-batch"
        provider = "siliconflow"
        api_key_env = "SF_KEY"
        list_limit = 500
        interval = 60
        """,
    )
    settings = load({**env, "KIMI_A_KEY": KEY + "a", "SF_KEY": KEY + "s"})

    team_a, team_b, sf = settings.sources
    assert (team_a.name, team_a.interval, team_a.api_key.reveal()) == (
        "kimi-team-a",
        120,
        KEY + "a",
    )
    assert (team_b.base_url, team_b.api_key.reveal()) == ("https://api.moonshot.ai/v1", KEY + "b")
    assert (sf.provider, sf.list_limit, sf.interval) == ("siliconflow", 500, 60)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ('[[sources]]\nname = "x"\nprovider = "nosuch"\napi_key_env = "K"', "provider"),
        ('[[sources]]\nname = "Bad Name"\nprovider = "moonshot"\napi_key_env = "K"', "name"),
        ('[[sources]]\nname = "x"\nprovider = "moonshot"', "api_key_env"),
        ('[[sources]]\nname = "x"\nprovider = "moonshot"\napi_key_env = "UNSET"', "UNSET"),
        ('[[sources]]\nname = "x"\nprovider = "moonshot"\napi_key = "K"', "api_key"),
        (
            '[[sources]]\nname = "x"\nprovider = "moonshot"\napi_key_env = "K"\ninterval = -1',
            "interval",
        ),
        ("[[sources]\nname=", "not valid TOML"),
    ],
)
def test_toml_errors_name_the_file_entry_and_key(tmp_path, body, named):
    with pytest.raises(ConfigError, match=named) as raised:
        load({**write_toml(tmp_path, body), "K": KEY})
    assert "SYNCER_CONFIG" in str(raised.value)
    assert KEY not in str(raised.value)


def test_a_source_name_defined_twice_is_an_error(tmp_path):
    env = write_toml(
        tmp_path, '[[sources]]\nname = "moonshot"\nprovider = "moonshot"\napi_key_env = "K"'
    )
    with pytest.raises(ConfigError, match="defined twice"):
        load({**env, "K": KEY, "MOONSHOT_API_KEY": KEY})


def test_alert_urls_split_on_commas_and_spaces():
    settings = load({"SYNCER_ALERT_URLS": "json://a.test/x, slack://t/b  mailto://c"})

    assert [url.reveal() for url in settings.alert_urls] == [
        "json://a.test/x",
        "slack://t/b",
        "mailto://c",
    ]


def test_the_database_password_alone_is_redacted_too():
    load({"SYNCER_DATABASE_URL": "postgresql://syncer:s3cr%40t-pw@db.test/syncer"})

    assert redact("connection failed: password s3cr@t-pw rejected") == (
        "connection failed: password *** rejected"
    )


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, 60.0), ("90", 90.0), ("2m", 120.0), ("0", 0.0), ("0s", 0.0)]
)
def test_db_wait_is_a_duration_and_0_turns_it_off(value, seconds):
    settings = load({} if value is None else {"SYNCER_DB_WAIT": value})

    assert settings.db_wait == seconds


@pytest.mark.parametrize("value", ["-1", "soon", "1d"])
def test_a_bad_db_wait_names_the_setting(value):
    with pytest.raises(ConfigError, match="SYNCER_DB_WAIT"):
        load({"SYNCER_DB_WAIT": value})


def test_retention_defaults_keep_runs_30_days_alerts_90_and_events_forever():
    retention = load({}).retention

    assert (retention.runs, retention.alerts, retention.events) == (
        timedelta(days=30),
        timedelta(days=90),
        None,
    )


@pytest.mark.parametrize(
    ("value", "age"),
    [
        ("0", None),
        ("45d", timedelta(days=45)),
        ("2w", timedelta(weeks=2)),
        ("36h", timedelta(hours=36)),
        ("600", timedelta(seconds=600)),
    ],
)
def test_retention_ages_and_0_keeps_everything(value, age):
    settings = load({"SYNCER_RUN_RETENTION": value, "SYNCER_EVENT_RETENTION": value})

    assert settings.retention.runs == age
    assert settings.retention.events == age


@pytest.mark.parametrize("value", ["-1d", "30 days", "1.5d", "forever"])
def test_a_bad_retention_names_the_setting(value):
    with pytest.raises(ConfigError, match=r"^SYNCER_ALERT_RETENTION: expected an age like 30d"):
        load({"SYNCER_ALERT_RETENTION": value})
