"""Secrets as operators really write them, and files that are no secret at all.

A key read with a trailing newline, a database password in the URL's query, a
`*_FILE` pointing at /dev/zero or a FIFO: each either works or stops syncer with one
line naming the setting, and no form of the secret ever shows.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
from urllib.parse import quote, quote_plus

import pytest
from test_cli import query

from syncer.config import MAX_CONFIG_FILE_BYTES, MAX_SECRET_FILE_BYTES, load_settings
from syncer.errors import ConfigError
from syncer.redaction import redact, register_secret
from syncer.simulator import Account, Simulator


def forms(secret: str) -> list[str]:
    """Every way a secret has been seen to leak: as is, escaped, quoted, encoded."""
    return [
        secret,
        secret.strip(),
        repr(secret)[1:-1],
        json.dumps(secret)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret),
    ]


def assert_nowhere(secret: str, *texts: str) -> None:
    for text in texts:
        for form in forms(secret):
            assert form not in text, f"{form!r} leaked"


def _limit_memory() -> None:
    limit = 1 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def syncer_process(*args: str, env, cwd, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """A real syncer process, held to 1 GiB of address space and `timeout` seconds."""
    return subprocess.run(
        [sys.executable, "-m", "syncer", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=_limit_memory,
    )


# --- keys ---------------------------------------------------------------------------

KEY = "sk-trailing-Newline-0123456789"


@pytest.fixture
def keyed_simulator():
    """A Moonshot account whose key is KEY (the default keys are checked elsewhere)."""
    with Simulator([Account("moonshot", "moonshot", KEY)], seed=3) as sim:
        sim.add_files("moonshot", 2)
        yield sim


@pytest.mark.parametrize(("written", "syncs"), [(KEY + "\n", 3), (f"  {KEY}\r\n", 1)])
def test_a_key_with_surrounding_whitespace_works_and_never_leaks(
    engine, env, keyed_simulator, tmp_path, written, syncs
):
    """Before: httpx refused the header, quoting the key with its newline escaped; the
    escaped key was logged, stored in sync_runs.error and sent in source_failing."""
    env = {
        **{k: v for k, v in env.items() if not k.startswith("SILICONFLOW_")},
        "MOONSHOT_API_KEY": written,
        "MOONSHOT_BASE_URL": keyed_simulator.base_url("moonshot"),
        "SYNCER_LOG_FORMAT": "console",
    }
    outputs = []
    for _ in range(syncs):  # three failures in a row would raise source_failing
        result = syncer_process("sync", env=env, cwd=tmp_path)
        outputs.append(result.stdout + result.stderr)
        assert result.returncode == 0, result.stderr

    runs = query(engine, "SELECT outcome, error FROM sync_runs WHERE source = 'moonshot'")
    assert [run["outcome"] for run in runs] == ["ok"] * syncs
    alerts = query(engine, "SELECT payload::text AS payload FROM alerts")
    assert_nowhere(
        KEY,
        *outputs,
        *(str(run["error"]) for run in runs),
        *(alert["payload"] for alert in alerts),
    )


def test_a_key_file_written_by_echo_works(engine, env, keyed_simulator, tmp_path):
    key_file = tmp_path / "moonshot_api_key"
    key_file.write_text(KEY + "\r\n")
    env = {
        **{k: v for k, v in env.items() if not k.startswith(("SILICONFLOW_", "MOONSHOT_"))},
        "MOONSHOT_API_KEY_FILE": str(key_file),
        "MOONSHOT_BASE_URL": keyed_simulator.base_url("moonshot"),
    }

    result = syncer_process("sync", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert_nowhere(KEY, result.stdout + result.stderr)


@pytest.mark.parametrize("inner", ["sk-two words", "sk-line\nbreak", "sk-bell\x07x", "sk-nul\x00x"])
def test_a_key_with_inner_whitespace_or_controls_is_refused_naming_the_setting(
    env, tmp_path, inner
):
    key_file = tmp_path / "key"
    key_file.write_bytes(inner.encode())
    env = {**env, "SILICONFLOW_API_KEY": "", "MOONSHOT_API_KEY": ""}
    env["MOONSHOT_API_KEY_FILE"] = str(key_file)

    result = syncer_process("sync", env=env, cwd=tmp_path)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "MOONSHOT_API_KEY_FILE" in lines[0] or "MOONSHOT_API_KEY" in lines[0]
    assert "whitespace or a control character" in lines[0]
    assert_nowhere(inner, result.stdout + result.stderr)


def test_redaction_catches_escaped_quoted_and_encoded_forms():
    secret = 'sk-"odd"\\/+&=é\u2028key\n'
    register_secret(secret)
    for form in forms(secret):
        text = f"error: header value {form} is invalid"
        assert form not in redact(text)
        assert "***" in redact(text)


# --- the database password ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://syncer@127.0.0.1:{port}/syncer?password=Pa55-query-S3cret&sslmode=disable",
        "postgresql://syncer@127.0.0.1:{port}/syncer?sslmode=disable&password=Pa55%40query%2BS3cret",
        "postgresql://syncer:Pa55%40user%2BS3cret@127.0.0.1:{port}/syncer?sslmode=disable",
    ],
)
def test_the_database_password_never_shows_wherever_the_url_carries_it(env, tmp_path, url):
    """Before: `?password=` leaked in "waiting for the database at ...": SQLAlchemy
    reorders the query, so the redacted URL no longer matched."""
    env = {**env, "SYNCER_DATABASE_URL": url.format(port=free_port()), "SYNCER_DB_WAIT": "1"}

    result = syncer_process("migrate", env=env, cwd=tmp_path)

    assert result.returncode == 1
    assert "waiting for the database at postgresql://syncer" in result.stderr
    output = result.stdout + result.stderr
    for password in ("Pa55-query-S3cret", "Pa55@query+S3cret", "Pa55@user+S3cret"):
        assert_nowhere(password, output)
    assert "Pa55" not in output


# --- bounded reads ------------------------------------------------------------------


def test_a_secret_file_that_is_dev_zero_is_refused_at_once(env, tmp_path):
    """Before: read until 8.8 GB RSS, no error (here: MemoryError under the 1 GiB limit)."""
    env = {**env, "MOONSHOT_API_KEY": "", "MOONSHOT_API_KEY_FILE": "/dev/zero"}

    result = syncer_process("sync", env=env, cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.strip() == (
        "syncer: configuration error: MOONSHOT_API_KEY_FILE: /dev/zero is not a regular file"
    )


def test_a_config_file_that_is_dev_zero_is_refused_at_once(env, tmp_path):
    result = syncer_process("sync", env={**env, "SYNCER_CONFIG": "/dev/zero"}, cwd=tmp_path)

    assert result.returncode == 2
    assert "SYNCER_CONFIG: /dev/zero is not a regular file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_fifo_is_refused_not_waited_on(env, tmp_path):
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    env = {**env, "MOONSHOT_API_KEY": "", "MOONSHOT_API_KEY_FILE": str(fifo)}

    result = syncer_process("sync", env=env, cwd=tmp_path, timeout=20)

    assert result.returncode == 2
    assert f"MOONSHOT_API_KEY_FILE: {fifo} is not a regular file" in result.stderr


@pytest.mark.parametrize("setting", ["MOONSHOT_API_KEY_FILE", "SYNCER_ALERT_URLS_FILE"])
def test_oversized_and_odd_secret_files_are_refused_with_one_line(tmp_path, setting):
    big = tmp_path / "big"
    big.write_bytes(b"k" * (MAX_SECRET_FILE_BYTES + 1))
    base = {"MOONSHOT_API_KEY": "sk-direct-key"} if setting != "MOONSHOT_API_KEY_FILE" else {}
    for path, complaint in [
        (big, f"is larger than {MAX_SECRET_FILE_BYTES} bytes"),
        (tmp_path, "is not a regular file"),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_settings({**base, setting: str(path)}, env_file=None)
        assert str(caught.value) == f"{setting}: {path} {complaint}"


def test_an_oversized_config_file_is_refused(tmp_path):
    config = tmp_path / "syncer.toml"
    config.write_text("# padding\n" * (MAX_CONFIG_FILE_BYTES // 10 + 1))

    with pytest.raises(ConfigError, match=f"larger than {MAX_CONFIG_FILE_BYTES} bytes"):
        load_settings({"SYNCER_CONFIG": str(config)}, env_file=None)


def test_a_toml_key_file_with_a_newline_is_stripped(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-toml-file\n")
    config = tmp_path / "syncer.toml"
    config.write_text(
        f'[[sources]]\nname = "kimi"\nprovider = "moonshot"\napi_key_file = "{key_file}"\n'
    )

    settings = load_settings({"SYNCER_CONFIG": str(config)}, env_file=None)

    assert settings.sources[0].api_key.reveal() == "sk-from-toml-file"
