"""A job that got no gate permit goes back to its queue quietly: no WARNING and traceback per
job (Celery's way of logging a ``Reject``), one INFO summary a minute per process instead.

The first tests run Celery's own tracer on a task that rejects, as a worker would; the last one
runs a fleet (32 threads) against a gate fixed at 1 and counts the lines its workers write.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.app.trace import build_tracer
from celery.exceptions import Reject

from sandbox.noojee import NoojeeSimConfig, serve
from tests.conftest import TEST_ENV, celery_worker, simulator_in_thread, wait_for
from worker.requeue_log import CELERY_TRACE_LOGGER, NO_PERMIT, SUMMARY, NoPermitSummary

app = Celery("requeue-log-test", set_as_current=False)


@app.task(bind=True, name="test.full_gate")
def full_gate(self: Any) -> None:
    raise Reject(f"{NO_PERMIT} noojee:3f2a9c1e0b", requeue=True)


@app.task(bind=True, name="test.other_reject")
def other_reject(self: Any) -> None:
    raise Reject("Redis failed", requeue=True)


def run(task: Any, job: str) -> None:
    """The task as a worker runs it: Celery's tracer, which logs how it ended."""
    build_tracer(task.name, task, eager=False, propagate=False, app=app)(
        job, (), {}, {"id": job, "hostname": "w1@test"}
    )


@pytest.fixture
def summary(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[NoPermitSummary, list[float]]]:
    """A summary filter on a clock the test moves, alone on Celery's trace logger."""
    now = [1000.0]
    fresh = NoPermitSummary(interval_s=60, clock=lambda: now[0])
    logger = logging.getLogger(CELERY_TRACE_LOGGER)
    monkeypatch.setattr(logger, "filters", [f for f in logger.filters if f is not SUMMARY])
    logger.addFilter(fresh)
    yield fresh, now


def test_no_permit_requeues_log_no_warning_and_one_summary_a_minute(
    summary: tuple[NoPermitSummary, list[float]], caplog: pytest.LogCaptureFixture
) -> None:
    _, now = summary
    caplog.set_level(logging.INFO)
    for n in range(300):
        run(full_gate, f"job-{n}")
        now[0] += 0.1  # 30 s of requeues
    assert caplog.records == []

    now[0] += 30
    run(full_gate, "job-301")
    [line] = caplog.records
    assert line.levelno == logging.INFO and line.exc_info is None
    assert line.getMessage().startswith("301 job(s) went back to their queue without a gate permit")
    assert "noojee:3f2a9c1e0b: 301" in line.getMessage()

    caplog.clear()
    run(full_gate, "job-302")  # a new minute has just begun
    assert caplog.records == []


def test_each_requeue_is_still_logged_at_debug(
    summary: tuple[NoPermitSummary, list[float]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="worker.requeue_log")
    run(full_gate, "job-7")
    assert [r.getMessage() for r in caplog.records if r.name == "worker.requeue_log"] == [
        "job job-7 went back to its queue: no permit at gate noojee:3f2a9c1e0b"
    ]


def test_other_rejects_keep_celerys_warning_and_traceback(
    summary: tuple[NoPermitSummary, list[float]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    run(other_reject, "job-8")
    [line] = caplog.records
    assert line.levelno == logging.WARNING and line.exc_info is not None
    assert "Redis failed" in line.getMessage()


# -- a fleet at a gate of 1 ---------------------------------------------------------------------
SUBMIT = textwrap.dedent("""
    from producers import submit_many
    from tasks.noojee import NoojeeLeadUpdate
    jobs = [NoojeeLeadUpdate(template_id=41, campaign_id=41, allocation_id=38,
                             external_lead_id=f"Q-{n}", disposition="Callback",
                             fields={"FirstPhone": f"0383{n:06d}"}) for n in range(1500)]
    submit_many(jobs, priority="bulk")
""")
#: Celery's own INFO line for every message a worker takes and every job that succeeds, and
#: ours for every job that ends (with its outcome and latency): the same with or without a gate,
#: and gone at --loglevel WARNING.
PER_MESSAGE = (" received", "] succeeded in ", " settled: ")
#: How long the fleet is watched at the gate of 1.
MEASURED_S = 10


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_fleet_waiting_at_a_gate_of_1_writes_almost_no_log_lines(
    redis_server: str, tmp_path: Path
) -> None:
    """2 workers x 16 threads on their own database; the gate fixed at 1; MEASURED_S s
    measured."""
    url = redis_server.rsplit("/", 1)[0] + "/3"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTSYNC_")}
    with simulator_in_thread(
        serve, NoojeeSimConfig(slots=4, latency_s=0.03, jitter_s=0.005, queue_timeout_s=2)
    ) as sim:
        env.update(
            {
                **TEST_ENV,
                "CONTACTSYNC_REDIS_URL": url,
                "CONTACTSYNC_DATA_DIR": str(tmp_path),
                "CONTACTSYNC_NOOJEE__BASE_URL": str(sim.base_url),
                "CONTACTSYNC_NOOJEE__API_KEY": "sandbox-key",
                "CONTACTSYNC_NOOJEE__ADAPTIVE": "false",
                "CONTACTSYNC_NOOJEE__MAX_CONCURRENCY": "1",
                "CONTACTSYNC_WORKER_CONCURRENCY": "16",
                "PYTHONUNBUFFERED": "1",
            }
        )
        logs = [tmp_path / f"w{n}.log" for n in (1, 2)]
        workers = [
            subprocess.Popen(
                celery_worker("-Q", "noojee", "-n", f"q{n}@%h"),
                env=env,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
            )
            for n, log in zip((1, 2), logs, strict=True)
        ]
        try:
            subprocess.run([sys.executable, "-c", SUBMIT], env=env, check=True, timeout=60)
            # Measure from when both workers are busy at the gate, for 20 s.
            wait_for(lambda: all("ready." in log.read_text() for log in logs), 60, "workers")
            wait_for(lambda: sim.get("/_stats").json()["calls"] >= 50, 30, "deliveries")
            start = [log.stat().st_size for log in logs]
            calls_before = sim.get("/_stats").json()["calls"]
            time.sleep(MEASURED_S)  # the measured run itself, not a wait for something to happen
            written = [
                log.read_bytes()[offset:].decode() for log, offset in zip(logs, start, strict=True)
            ]
            calls = sim.get("/_stats").json()["calls"] - calls_before
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(30)
    lines = [line for text in written for line in text.splitlines()]
    ours = [line for line in lines if not any(mark in line for mark in PER_MESSAGE)]
    print(
        f"{len(lines)} lines in {MEASURED_S} s, {len(ours)} besides Celery's per-message "
        f"ones; {calls} calls delivered"
    )
    assert calls > 5 * MEASURED_S  # the gate let one call at a time through, all along
    assert not [line for line in lines if "WARNING" in line or "Traceback" in line]
    assert len(ours) < 100 * MEASURED_S / 60, ours  # fewer than 100 a minute, fleet-wide
