"""The docker compose deployment, checked without a Docker engine.

The compose file is validated against the compose-spec schema and its wiring is
asserted; the Dockerfile is linted with hadolint; the container's start sequence
(`syncer migrate`, then `syncer run --no-migrate`, SIGTERM, restart) is reproduced with
real processes against real PostgreSQL, from an install made the way the image makes
it; and the README's Deploy section is held to the files.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import posixpath
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import sqlalchemy as sa
import yaml
from psycopg import sql

from syncer import config
from syncer.config import load_database_settings, load_settings
from syncer.db.engine import create_db_engine
from syncer.providers import provider_names
from syncer.redaction import Secret
from syncer.simulator import Fault, Simulator

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMPOSE_FILE = REPO / "docker-compose.yml"
SECRET_NAMES = re.compile(r"(API_KEY|PASSWORD|DATABASE_URL|ALERT_URLS)$")
# What each syncer container's command reads of the settings .env hands it.
LOADERS = {"migrate": load_database_settings, "run": load_settings}
# Both providers' keys switch on the settings read only for a configured provider.
WITH_EVERY_SOURCE = {f"{name.upper()}_API_KEY": f"sk-deploy-{name}" for name in provider_names()}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return document


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


# --- The compose file ----------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_spec():
    result = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", COMPOSE_FILE],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_db_is_pinned_postgres_with_a_named_volume_and_pg_isready(compose, services):
    db = services["db"]
    assert re.fullmatch(r"postgres:\d+", db["image"])
    assert db["restart"] == "unless-stopped"
    source, _, target = db["volumes"][0].partition(":")
    assert target == "/var/lib/postgresql/data"
    assert source in compose["volumes"]  # a named volume, not a bind mount
    test = db["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert test[1] == "pg_isready"
    assert f"--username={db['environment']['POSTGRES_USER']}" in test
    assert f"--dbname={db['environment']['POSTGRES_DB']}" in test


def test_migrate_is_a_one_shot_after_db_is_healthy(services):
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert "healthcheck" not in migrate


def test_syncer_runs_after_migrate_completed_and_restarts(services):
    syncer = services["syncer"]
    assert syncer["command"] == ["run", "--no-migrate"]
    assert syncer["restart"] == "unless-stopped"
    assert syncer["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert syncer["depends_on"]["db"]["condition"] == "service_healthy"
    assert syncer["init"] is True
    assert syncer["stop_signal"] == "SIGTERM"
    assert syncer["env_file"] == ".env"
    assert "ports" not in syncer  # published ports would clash with --scale syncer=2


def test_syncer_healthcheck_asks_healthz_on_the_http_port_without_curl(services):
    syncer = services["syncer"]
    test = syncer["healthcheck"]["test"]
    port = syncer["environment"]["SYNCER_HTTP_PORT"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert f"http://localhost:{port}/healthz" in test[3]
    assert syncer["environment"]["SYNCER_HTTP_HOST"] == "0.0.0.0"


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (None, False)])
def test_the_healthcheck_command_passes_only_on_a_2xx(services, status, healthy):
    code = services["syncer"]["healthcheck"]["test"][3]
    with _stub_server(status) as port:
        result = subprocess.run(
            [sys.executable, "-c", code.replace("localhost:8080", f"localhost:{port}")],
            capture_output=True,
            timeout=30,
            check=False,
        )
    assert (result.returncode == 0) is healthy


def test_stop_grace_period_outlasts_one_sync(services):
    defaults = load_settings({}, env_file=None)
    one_sync = defaults.lock_timeout + defaults.http.retry_budget + defaults.http.request_deadline

    grace = _compose_seconds(services["syncer"]["stop_grace_period"])

    assert grace >= one_sync + 15  # and time to write the listing and stop


def test_no_secret_is_written_into_the_compose_file(compose, services):
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert not re.search(r"sk-[A-Za-z0-9]", text)
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text)  # no user:password@ in a URL
    for name, service in services.items():
        for variable, value in service.get("environment", {}).items():
            if SECRET_NAMES.search(variable):
                pytest.fail(f"{name}: {variable} is set inline; use {variable}_FILE")
            if variable.endswith("_FILE"):
                secret = value.removeprefix("/run/secrets/")
                assert value.startswith("/run/secrets/"), (name, variable)
                assert secret in service["secrets"], (name, variable)
                assert secret in compose["secrets"]


def test_secrets_come_from_files_and_each_is_used(compose, services):
    used = {secret for service in services.values() for secret in service.get("secrets", [])}
    assert used == set(compose["secrets"])
    for name, secret in compose["secrets"].items():
        assert secret == {"file": f"./secrets/{name}"}
    assert {"siliconflow_api_key", "moonshot_api_key", "database_url"} <= set(
        services["syncer"]["secrets"]
    )


def test_what_env_names_as_a_secret_file_is_mounted_where_it_is_read(services, monkeypatch):
    """A `*_FILE` that .env may name must exist in every container that reads it.

    Compose hands .env to migrate and syncer alike; migrate once read the keys' files,
    which only syncer mounts, and failed on a fresh host.
    """
    named = _secret_files_env_names()
    assert {"MOONSHOT_API_KEY_FILE", "SILICONFLOW_API_KEY_FILE", "SYNCER_ALERT_URLS_FILE"} <= set(
        named
    )
    for name, service in services.items():
        if service.get("env_file") != ".env":
            continue
        read = _settings_read(monkeypatch, LOADERS[service["command"][0]])
        for variable, secret in named.items():
            if variable in read and variable not in service.get("environment", {}):
                assert secret in service.get("secrets", []), f"{name} reads {variable}"
    assert services["migrate"]["secrets"] == ["database_url"]  # the URL, nothing else


def test_one_image_is_built_once_for_migrate_and_syncer_and_never_pulled(services):
    assert [name for name, service in services.items() if "build" in service] == ["syncer"]
    image = services["syncer"]["image"]
    users = [name for name, service in services.items() if service["image"] == image]
    assert users == ["migrate", "syncer"]
    for name in users:
        # Pulling a locally built tag would ask a registry for it, and fail.
        assert services[name]["pull_policy"] == "never", name


def test_every_named_volume_is_declared(compose, services):
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith("./") or source in compose["volumes"], volume


def test_images_are_pinned_and_logs_bounded(services):
    for name, service in services.items():
        image = service["image"]
        assert ":" in image, name
        assert not image.endswith(":latest"), name
        assert service["logging"]["options"]["max-size"], name


def test_prometheus_profile_loads_the_shipped_config_and_rules(services):
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prometheus["image"])
    mounts = dict(_bind_mount(volume) for volume in prometheus["volumes"] if "./" in volume)
    config_path = next(
        arg.partition("=")[2] for arg in prometheus["command"] if arg.startswith("--config.file=")
    )
    assert mounts[config_path] == "./deploy/prometheus/prometheus.yml"
    scrape = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    (rules,) = scrape["rule_files"]
    assert mounts[posixpath.join(posixpath.dirname(config_path), rules)] == (
        "./deploy/prometheus/alerts.yml"
    )
    (job,) = scrape["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["syncer"]
    assert str(discovery["port"]) == services["syncer"]["environment"]["SYNCER_HTTP_PORT"]
    # The shipped rules select this job by name.
    alerts = (REPO / "deploy/prometheus/alerts.yml").read_text(encoding="utf-8")
    assert set(re.findall(r'job="([^"]+)"', alerts)) == {job["job_name"]}


def test_prometheus_config_passes_promtool():
    tool = shutil.which("promtool")
    if tool is None:
        if os.environ.get("SYNCER_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is required here (SYNCER_REQUIRE_PROMTOOL is set)")
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")

    result = subprocess.run(
        [tool, "check", "config", "prometheus.yml"],
        cwd=REPO / "deploy" / "prometheus",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


# --- .env.example --------------------------------------------------------------------


def test_env_example_documents_exactly_the_settings_syncer_reads(monkeypatch):
    assert set(_env_example()) == _settings_read(monkeypatch) | _compose_variables()


def test_compose_reads_only_variables_of_its_own_from_env():
    # Settings go to syncer through env_file; compose interpolates nothing of syncer's.
    assert _compose_variables() == {"SYNCER_IMAGE", "PROMETHEUS_PORT"}


def test_env_example_defaults_are_the_real_defaults():
    baseline = load_settings(WITH_EVERY_SOURCE, env_file=None)
    for name, value in _env_example().items():
        if value and not name.endswith("_FILE"):
            explicit = load_settings({**WITH_EVERY_SOURCE, name: value}, env_file=None)
            assert explicit == baseline, f".env.example: {name}={value} is not the default"


# --- The Dockerfile --------------------------------------------------------------------


def test_dockerfile_passes_hadolint_with_no_findings():
    result = subprocess.run(
        [BIN / "hadolint", "--failure-threshold", "style", "--format", "json", "Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == []


def test_dockerfile_runs_syncer_as_a_non_root_exec_form_entrypoint():
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    for line in text.splitlines():
        if "hadolint ignore" in line:
            assert re.search(r"ignore=\S+\s+\S", line), f"an ignore without a reason: {line}"
    final = text.rpartition("\nFROM ")[2]
    assert 'ENTRYPOINT ["syncer"]' in final
    assert 'CMD ["run"]' in final
    user = re.search(r"^USER (\S+)", final, re.MULTILINE)
    assert user
    assert user.group(1).split(":")[0] not in ("root", "0")
    assert "uv" not in re.findall(r"COPY --from=(\S+)", final)  # no uv in the final image
    assert "uv sync --locked --no-dev" in text
    assert re.search(r"FROM ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+ ", text)


# --- The start sequence, with real processes ------------------------------------------


@pytest.fixture(scope="module")
def image_install(tmp_path_factory) -> list[str]:
    """`syncer` installed the way the Dockerfile installs it: non-editable, from uv.lock.

    Without uv (pytest run outside `uv run`), the current interpreter stands in.
    """
    uv = shutil.which("uv")
    if uv is None:
        return [sys.executable, "-m", "syncer"]
    venv = tmp_path_factory.mktemp("image") / "venv"
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    subprocess.run(
        [uv, "sync", "--locked", "--no-dev", "--no-editable", "--quiet"],
        env={**env, "UV_PROJECT_ENVIRONMENT": str(venv)},
        cwd=REPO,
        check=True,
        timeout=120,
    )
    return [str(venv / "bin" / "syncer")]


@pytest.fixture
def simulator():
    with Simulator(seed=4) as sim:
        yield sim


@pytest.fixture
def container_env(simulator, tmp_path) -> dict[str, str]:
    """What the syncer container sees: settings, and secrets as files (the *_FILE forms)."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "moonshot_api_key").write_text(simulator.api_key("moonshot") + "\n")
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SYNCER_", "SILICONFLOW_", "MOONSHOT_", "DATABASE_URL"))
    }
    return {
        **base,
        "SYNCER_LOG_FORMAT": "json",
        "SYNCER_HTTP_PORT": "0",  # the HTTP side is tested where it is built
        "SYNCER_INTERVAL": "1h",  # only the sync at start
        "SYNCER_DB_WAIT": "10",
        "MOONSHOT_API_KEY_FILE": str(secrets / "moonshot_api_key"),
        "MOONSHOT_BASE_URL": simulator.base_url("moonshot"),
    }


def test_container_lifecycle_migrate_run_sigterm_mid_sync_and_restart(
    image_install, databases, simulator, container_env, services, tmp_path
):
    """The compose start sequence, and two stops in the middle of a sync.

    A stop while the provider is failing abandons the sync once the retry budget is
    spent (a `failed` run, no file touched); a stop while a slow listing is in flight
    lets it finish (all of it applied). Either way syncer exits 0 within the grace
    period, and the next start syncs what changed meanwhile.
    """
    url = databases.create()
    (tmp_path / "secrets" / "database_url").write_text(url)
    env = {
        **container_env,
        "SYNCER_DATABASE_URL_FILE": str(tmp_path / "secrets" / "database_url"),
        # A restarted service keeps each source's schedule (no burst of syncs after a
        # restart): a short interval makes the next start's sync come within seconds.
        "SYNCER_INTERVAL": "3",
    }
    grace = _compose_seconds(services["syncer"]["stop_grace_period"])
    simulator.add_files("moonshot", 12, status="processing")
    engine = create_db_engine(Secret(url), lock_timeout=5)
    try:
        # `migrate`, from the installed package in a directory without migrations/.
        migrated = subprocess.run(
            [*image_install, "migrate"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert migrated.returncode == 0, migrated.stderr
        assert "database schema is up to date" in migrated.stdout

        # `syncer`, stopped while the provider fails: gives up within the retry budget.
        simulator.set_persistent_fault("moonshot", Fault.status(503))
        _stop_mid_sync(image_install, {**env, "SYNCER_RETRY_TIMEOUT": "1.5"}, simulator, grace)
        (failed,) = _query(engine, "SELECT outcome, error FROM sync_runs")
        assert failed["outcome"] == "failed"
        assert "HTTP 503" in failed["error"]
        assert _query(engine, "SELECT count(*) AS n FROM files") == [{"n": 0}]
        _assert_consistent(engine)

        # Restarted, and stopped while a slow listing is in flight: it completes.
        simulator.set_persistent_fault("moonshot", Fault.slow(1.5))
        _stop_mid_sync(image_install, env, simulator, grace)
        outcomes = _query(engine, "SELECT outcome FROM sync_runs ORDER BY id")
        assert [run["outcome"] for run in outcomes] == ["failed", "ok"]
        assert _present(engine) == _listed(simulator)  # the whole listing, not a part
        _assert_consistent(engine)

        # Restarted once more: it syncs what changed while it was down.
        simulator.set_persistent_fault("moonshot", None)
        assert simulator.step("moonshot")
        with _running(image_install, env) as service:
            _wait_until(lambda: _present(engine) == _listed(simulator), service)
            service.send_signal(signal.SIGTERM)
            _, stderr = service.communicate(timeout=30)
        assert service.returncode == 0, stderr
        assert "sk-sim-moonshot" not in stderr
        _assert_consistent(engine)
    finally:
        engine.dispose()


def _stop_mid_sync(
    command: list[str], env: dict[str, str], simulator: Simulator, grace: float
) -> None:
    """Start `syncer run --no-migrate`, SIGTERM it during its first sync, expect exit 0."""
    requests = simulator.request_count("moonshot")
    with _running(command, env) as service:
        _wait_until(lambda: simulator.request_count("moonshot") > requests, service)
        stopped_at = time.monotonic()
        service.send_signal(signal.SIGTERM)
        _, stderr = service.communicate(timeout=min(grace, 60))
    assert service.returncode == 0, stderr
    assert time.monotonic() - stopped_at < grace
    assert "received SIGTERM" in stderr
    assert "sk-sim-moonshot" not in stderr


# --- Waiting for the database at start ------------------------------------------------


def test_migrate_waits_for_a_database_that_appears_later(image_install, databases, tmp_path):
    admin = sa.make_url(databases.admin_url)
    name = f"syncer_test_late_{os.getpid()}_{time.monotonic_ns()}"
    password = admin.password or "hunter2-Pa55"  # trust auth ignores it; it must not show
    url = admin.set(database=name, password=password).render_as_string(hide_password=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCER_", "DATABASE_URL"))}
    env |= {"SYNCER_DATABASE_URL": url, "SYNCER_DB_WAIT": "30", "SYNCER_LOG_FORMAT": "json"}
    process = subprocess.Popen(
        [*image_install, "migrate"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = _LineCollector(process.stderr)
    try:
        assert stderr.wait_for("waiting for the database at", timeout=30), stderr.text()
        assert process.poll() is None  # waiting, not crashed
        with psycopg.connect(databases.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        databases.created.append(name)
        stdout, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr.text()
    assert "database schema is up to date" in stdout
    assert 'database \\"' + name in stderr.text()  # the cause, in the JSON log line
    assert password not in stderr.text()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()


def test_migrate_gives_up_after_db_wait_with_one_clear_line(image_install, tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCER_", "DATABASE_URL"))}
    env |= {
        "SYNCER_DATABASE_URL": f"postgresql://syncer:hunter2-Pa55@127.0.0.1:{port}/syncer",
        "SYNCER_DB_WAIT": "1",
        "SYNCER_LOG_FORMAT": "json",
    }
    started = time.monotonic()

    result = subprocess.run(
        [*image_install, "migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert time.monotonic() - started < 20
    *logged, last = result.stderr.strip().splitlines()
    assert last.startswith("syncer: database unavailable: OperationalError: connection failed")
    assert "SYNCER_DB_WAIT=1)" in last
    retries = [json.loads(line)["message"] for line in logged]
    assert retries
    assert all(
        m.startswith("waiting for the database at postgresql://syncer:***@") for m in retries
    )
    assert "; retry 1 in " in retries[0]
    assert "hunter2-Pa55" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_needs_only_the_database_url(image_install, databases, tmp_path):
    # The .env of the README's Deploy section, in a container that mounts none of these.
    (tmp_path / ".env").write_text(
        "MOONSHOT_API_KEY_FILE=/run/secrets/moonshot_api_key\n"
        "SILICONFLOW_API_KEY_FILE=/run/secrets/siliconflow_api_key\n"
        "SYNCER_ALERT_URLS_FILE=/run/secrets/alert_urls\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCER_", "DATABASE_URL"))}
    env |= {"SYNCER_DATABASE_URL": databases.create(), "SYNCER_LOG_FORMAT": "json"}
    run = [*image_install, "run", "--no-migrate"]
    migrate = [*image_install, "migrate"]

    options: dict[str, Any] = {"env": env, "cwd": tmp_path, "capture_output": True, "text": True}
    refused = subprocess.run(run, **options, timeout=60, check=False)
    migrated = subprocess.run(migrate, **options, timeout=60, check=False)

    assert refused.returncode == 2  # the service does read them, and says which is missing
    assert re.search(
        r"[A-Z]+_API_KEY_FILE: cannot read /run/secrets/[a-z]+_api_key", refused.stderr
    )
    assert migrated.returncode == 0, migrated.stderr
    assert "database schema is up to date" in migrated.stdout


def test_without_a_database_url_the_image_says_what_to_set(image_install, tmp_path):
    if image_install[0] == sys.executable:
        pytest.skip("needs uv: the image's install leaves out the embedded PostgreSQL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCER_", "DATABASE_URL"))}
    env["SYNCER_DATA_DIR"] = str(tmp_path / "data")

    result = subprocess.run(
        [*image_install, "migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        (
            "syncer: configuration error: SYNCER_DATABASE_URL is not set and the embedded"
            " PostgreSQL is not installed: set SYNCER_DATABASE_URL, or install it with"
            " pip install 'syncer[embedded]'"
        )
    ]


# --- The README's Deploy section ------------------------------------------------------


def test_readme_deploy_steps_match_the_files(compose, services, monkeypatch):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    deploy = readme.partition("\n## Deploy\n")[2].partition("\n## ")[0]
    assert deploy, "README.md has no Deploy section"
    db = services["db"]

    for service in re.findall(
        r"docker compose [^`\n]*?(?:exec -T|run --rm --no-deps|logs -f|stop|start|pull) (\w+)",
        deploy,
    ):
        assert service in services, service
    assert "docker compose run --rm syncer" not in deploy  # it would run migrate again
    assert re.findall(r"--scale (\w+)=", deploy) == ["syncer"]
    assert set(re.findall(r"--profile (\w+)", deploy)) == {"prometheus"}
    for secret in set(re.findall(r"(?<![/\w])secrets/(\w+)", deploy)):
        assert secret in compose["secrets"], secret
    setup = deploy.partition("```sh\n")[2].partition("```")[0]
    created = set(re.findall(r"(?<![/\w])secrets/(\w+)", setup))
    assert created == set(compose["secrets"])  # the setup creates every secret file
    for secret in re.findall(r"/run/secrets/(\w+)", deploy):
        assert secret in services["syncer"]["secrets"], secret
    for path in re.findall(r"deploy/prometheus/[\w.]+", deploy):
        assert f"./{path}" in " ".join(services["prometheus"]["volumes"]), path
    volume = db["volumes"][0].partition(":")[0]
    assert f"`{compose['name']}_{volume}`" in deploy
    assert f"`{db['image']}`" in deploy
    user, host, database = re.findall(r"postgresql://(\w+):%s@(\w+):5432/(\w+)", deploy)[0]
    assert (user, host, database) == (
        db["environment"]["POSTGRES_USER"],
        "db",
        db["environment"]["POSTGRES_DB"],
    )
    assert f"--username={user}" in deploy
    settings = _settings_read(monkeypatch)
    for variable in set(re.findall(r"\b(?:SYNCER|MOONSHOT|SILICONFLOW)_[A-Z_]+\b", deploy)):
        assert variable in settings | _compose_variables(), variable
    grace_minutes = _compose_seconds(services["syncer"]["stop_grace_period"]) / 60
    assert f"`stop_grace_period` is {grace_minutes:g} minutes" in deploy


# --- Helpers ----------------------------------------------------------------------------


def _compose_seconds(duration: str) -> float:
    """A compose duration (`4m`, `1m30s`, `90s`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def _bind_mount(volume: str) -> tuple[str, str]:
    source, target = volume.split(":")[:2]
    return target, source


def _env_example() -> dict[str, str]:
    """Every `NAME=value` line of .env.example, commented out or not."""
    text = (REPO / ".env.example").read_text(encoding="utf-8")
    return dict(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]+)=(.*)$", text, re.MULTILINE))


def _settings_read(monkeypatch, loader=load_settings) -> set[str]:
    """The variables `loader` reads, with every provider configured."""
    read: set[str] = set()
    original = config._Environment.get

    def get(self: config._Environment, name: str) -> str | None:
        read.add(name)
        return original(self, name)

    monkeypatch.setattr(config._Environment, "get", get)
    loader(WITH_EVERY_SOURCE, env_file=None)
    monkeypatch.undo()
    return read


def _compose_variables() -> set[str]:
    """The variables docker-compose.yml interpolates (from .env or the environment)."""
    return set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text(encoding="utf-8")))


def _secret_files_env_names() -> dict[str, str]:
    """`NAME_FILE=/run/secrets/secret` as .env.example and the README's Deploy put them."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    deploy = readme.partition("\n## Deploy\n")[2].partition("\n## ")[0]
    text = (REPO / ".env.example").read_text(encoding="utf-8") + deploy
    return dict(re.findall(r"\b([A-Z][A-Z0-9_]*_FILE)=/run/secrets/(\w+)", text))


@contextmanager
def _stub_server(status: int | None) -> Iterator[int]:
    """A port whose /healthz answers `status`, or (None) where nothing listens."""
    if status is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        yield port
        return

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_port)
    finally:
        server.shutdown()
        server.server_close()


class _LineCollector:
    """Reads a pipe on a thread, so a test can wait for a line without blocking."""

    def __init__(self, pipe) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe) -> None:
        for line in pipe:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(
                lambda: any(text in line for line in self.lines), timeout=timeout
            )

    def text(self) -> str:
        with self._changed:
            return "".join(self.lines)


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """`syncer run --no-migrate`, as the syncer service runs it."""
    return subprocess.Popen(
        [*command, "run", "--no-migrate"],
        env=env,
        cwd=Path(env["MOONSHOT_API_KEY_FILE"]).parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextlib.contextmanager
def _running(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """`_start`, and a kill on the way out should the test fail before it stops it."""
    service = _start(command, env)
    try:
        yield service
    finally:
        if service.poll() is None:
            service.kill()
        service.communicate()


def _wait_until(condition, service: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            pytest.fail(f"syncer run exited early: {service.communicate()[1]}")
        if condition():
            return
        time.sleep(0.1)
    pytest.fail("condition not met in time")


def _query(engine: sa.Engine, statement: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(sa.text(statement))]


def _present(engine: sa.Engine) -> set[str]:
    rows = _query(engine, "SELECT file_id FROM current_files WHERE source = 'moonshot'")
    return {row["file_id"] for row in rows}


def _listed(simulator: Simulator) -> set[str]:
    return {file["id"] for file in simulator.files("moonshot")}


def _assert_consistent(engine: sa.Engine) -> None:
    """Every run finished, and its counts are exactly the events it wrote."""
    runs = _query(
        engine,
        "SELECT r.id, r.finished_at >= r.started_at AS finished,"
        " r.appeared + r.status_changed + r.changed + r.disappeared + r.reappeared AS counted,"
        " (SELECT count(*) FROM file_events e WHERE e.sync_run_id = r.id) AS events"
        " FROM sync_runs r",
    )
    for run in runs:
        assert run["finished"], run
        assert run["counted"] == run["events"], run
    orphans = _query(
        engine,
        "SELECT count(*) AS n FROM file_events e"
        " WHERE NOT EXISTS (SELECT 1 FROM sync_runs r WHERE r.id = e.sync_run_id)",
    )
    assert orphans == [{"n": 0}]
