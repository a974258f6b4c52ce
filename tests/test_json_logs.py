"""CONTACTSYNC_LOG_FORMAT=json: one JSON object per log line, with the job's id, destination,
outcome and latency where known: a worker run with the setting, its every line parsed."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import celery_worker, new_lead_id, sample_update, wait_for, wait_for_state
from worker.logs import JsonFormatter


def test_a_record_becomes_one_json_line_with_the_fields_given_and_an_escaped_traceback() -> None:
    record = logging.LogRecord(
        "tasks.delivery", logging.INFO, __file__, 1, "job %s delivered", ("j1",), None
    )
    record.__dict__.update(
        job_id="j1", destination="noojee", outcome="delivered", latency_ms=31, unrelated="not shown"
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "job j1 delivered" and line["level"] == "INFO"
    assert (line["job_id"], line["destination"], line["outcome"], line["latency_ms"]) == (
        "j1",
        "noojee",
        "delivered",
        31,
    )
    assert "unrelated" not in line and line["ts"].endswith("+00:00")
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed\nhere", (), sys.exc_info()
        )
    text = JsonFormatter().format(failed)
    assert "\n" not in text and json.loads(text)["exc_type"] == "ValueError"


@pytest.mark.integration
def test_a_worker_with_json_logs_writes_only_json_lines_with_job_fields(
    stack: Any, ledger: Any, tmp_path: Any
) -> None:
    from producers import submit_many

    errors = tmp_path / "worker.err"
    env = {**os.environ, "CONTACTSYNC_LOG_FORMAT": "json", "CONTACTSYNC_METRICS_PORT": "0"}
    with errors.open("w") as sink:
        worker = subprocess.Popen(
            celery_worker("-Q", "noojee", "-c", "2", "-n", "jsonlogs@%h"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
        try:
            wait_for(lambda: "ready" in errors.read_text(), 30, "the worker to start")
            ids = submit_many([sample_update(new_lead_id()) for _ in range(40)], client="crm")

            def settled_here() -> bool:
                return '"outcome": "delivered"' in errors.read_text()

            wait_for(settled_here, 30, "the JSON worker to deliver one of the jobs")
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    for job_id in ids:
        wait_for_state(ledger, job_id, ("delivered", "merged"))
    lines = [json.loads(line) for line in errors.read_text().splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    delivered = [line for line in lines if line.get("outcome") == "delivered"]
    assert delivered and all(
        line["destination"] == "noojee"
        and line["job_id"] in ids
        and line["code"] == "0"
        and line["latency_ms"] >= 0
        for line in delivered
    )
    # One line per job: Celery's own per-message lines are off at INFO (worker/app.py).
    assert not [
        line
        for line in lines
        if line["logger"] == "celery.worker.strategy" or "succeeded in" in line["message"]
    ]


@pytest.mark.parametrize(("root", "celery"), [(logging.INFO, logging.WARNING), (logging.DEBUG, 0)])
def test_celerys_per_message_lines_are_off_unless_debugging(root: int, celery: int) -> None:
    from worker.app import _quiet_http_logs

    before = logging.getLogger().level
    logging.getLogger().setLevel(root)
    try:
        _quiet_http_logs()
        for name in ("celery.worker.strategy", "celery.app.trace"):
            assert logging.getLogger(name).level == celery
    finally:
        logging.getLogger().setLevel(before)
        _quiet_http_logs()
