"""The shipped Prometheus rules: valid, unit-tested with promtool, and about real metrics."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import sqlalchemy as sa
from conftest import REPO_ROOT, make_source
from prometheus_client.parser import text_string_to_metric_families

from syncer.db import sources
from syncer.metrics import Metrics

RULES_DIR = REPO_ROOT / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        if os.environ.get("SYNCER_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is required here (SYNCER_REQUIRE_PROMTOOL is set)")
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return subprocess.run(
        [tool, *args], cwd=RULES_DIR, capture_output=True, text=True, check=False, timeout=60
    )


def test_the_rules_file_is_valid():
    result = promtool("check", "rules", "alerts.yml")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_the_rules_pass_their_unit_tests():
    result = promtool("test", "rules", "alerts_test.yml")

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_the_rules_use_is_one_syncer_exports(engine):
    source = make_source("kimi", "moonshot", "http://127.0.0.1:9/v1", "sk-unused-key")
    with engine.begin() as conn:  # one successful sync, so every gauge has a sample
        conn.execute(
            sa.text(
                "INSERT INTO sync_runs (source, provider, started_at, finished_at, outcome)"
                " VALUES ('kimi', 'moonshot', now(), now(), 'ok')"
            )
        )
        sources.register(conn, [source])  # and a schedule, so it has a lag
    exposition = Metrics(engine, [source]).exposition().decode()
    exported = {
        sample.name
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }

    used = set(re.findall(r"\bsyncer_[a-z_]+\b", (RULES_DIR / "alerts.yml").read_text()))

    assert used
    assert used <= exported, used - exported
