"""Logs a pipeline can filter on, and a person can read; never a secret in either."""

from __future__ import annotations

import json
import logging

from receiver import TOKEN, Receiver
from test_cli import syncer

from syncer.delivery import build_targets
from syncer.logs import configure_logging
from syncer.redaction import Secret


def json_lines(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_each_sync_logs_one_json_line_with_its_figures(engine, env, simulator, tmp_path):
    simulator.add_files("moonshot", 3, status="processing")

    result = syncer("sync", "--source", "moonshot", env=env, cwd=tmp_path)

    (line,) = [entry for entry in json_lines(result.stderr) if entry.get("source") == "moonshot"]
    assert line["level"] == "info"
    assert line["outcome"] == "ok"
    assert line["run_id"] == 1
    assert isinstance(line["duration_seconds"], float)
    assert line["counts"]["appeared"] == 3
    assert line["counts"]["files_listed"] == 3
    assert line["message"].startswith("moonshot: ok in ")
    assert all(isinstance(entry["time"], str) for entry in json_lines(result.stderr))


def test_console_format_is_plain_lines_for_people(env, simulator, tmp_path):
    simulator.add_files("moonshot", 1, status="ok")
    env = {**env, "SYNCER_LOG_FORMAT": "console"}

    result = syncer("sync", "--source", "moonshot", env=env, cwd=tmp_path)

    assert json_lines(result.stderr) == []
    assert " INFO    syncer.sync: moonshot: ok in " in result.stderr


def test_alert_urls_are_masked_in_log_lines_and_their_fields(capsys):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with Receiver() as receiver:
            configure_logging("json", "INFO")
            build_targets([Secret(receiver.url)])  # registers the URL and its token parts
            logging.getLogger("syncer.test").warning(
                "posting to %s, then %s",
                receiver.url,
                f"127.0.0.1:{receiver.port}/hook/{TOKEN}",
                extra={"target": f"/hook/{TOKEN}"},
            )
        captured = capsys.readouterr().err
    finally:
        root.handlers[:], root.level = handlers, level

    (line,) = json_lines(captured)
    assert TOKEN not in captured
    assert line["message"] == f"posting to ***, then 127.0.0.1:{receiver.port}***"
    assert line["target"] == "***"
