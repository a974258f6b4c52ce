"""The ways in: how fast jobs are queued, what a queued and a delivered job cost Redis, what one
intake process takes, and a million-row dry-run backfill.

Every figure is measured in this run, on the embedded Valkey (no worker consumes the queues
unless a figure says so):

1. **enqueue**: ``submit_many`` of ``JOBS`` Noojee updates, a ``backfill`` of a CSV of as many
   rows (backpressure off), and a loop of Celery's ``apply_async`` over ``LOOP`` messages, the
   same destination and priority; each the best of ``RUNS``. Target: ≥ 20,000 jobs/s, and
   ≥ 10 times the loop.
2. **memory**: Valkey's ``used_memory`` per queued job; then per delivered job, the jobs queued a
   thousand at a time (as under backpressure) and each claimed, answered and delivered through
   the ledger's own scripts (the worker's path, without HTTP), its message consumed. Marginal
   figures (see ``memory_per_job``). Target for a delivered job: ≤ 256 bytes.
3. **intake**: one ``contactsync intake`` process; clients in another process post batches of
   100 jobs (target ≥ 5,000 jobs/s), then single jobs from 4 connections (target ≥ 500
   requests/s with p99 ≤ 25 ms).
4. **backfill dry run**: ``contactsync backfill FILE --dry-run`` of ``DRY_ROWS`` generated rows,
   in a process of its own: rows/s and peak RSS (target ≤ 200 MB).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

JOBS = 50_000
LOOP = 3_000
RUNS = 3
MEMORY_JOBS = 40_000
MEMORY_FIRST = 8_000
DRY_ROWS = 1_000_000
INTAKE_BATCHES = 200
INTAKE_BATCH = 100
INTAKE_SINGLES = 6_000
INTAKE_CONNECTIONS = 4
TOKEN = "bench-token-0123456789abcdef"


def sample(n: int) -> Any:
    from tasks.noojee import NoojeeLeadUpdate

    return NoojeeLeadUpdate(
        template_id=41,
        campaign_id=41,
        allocation_id=38,
        external_lead_id=f"B-{n:08d}",
        disposition="Callback",
        callback_date="2026/12/01 09:30",
        priority=10,
        fields={
            "FirstPhone": "03 9123 4567",
            "Name": "Jane Smith",
            "Email": "jane.smith@example.com",
        },
    )


def write_csv(path: Path, rows: int, start: int = 0) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(
            ["external_lead_id", "disposition", "callback_date", "FirstPhone", "Name", "Email"]
        )
        for n in range(start, start + rows):
            out.writerow(
                [
                    f"C-{n:08d}",
                    "Callback",
                    "2026/12/01 09:30",
                    "03 9123 4567",
                    "Jane Smith",
                    "jane.smith@example.com",
                ]
            )


BACKFILL_SETS = ("template_id=41", "campaign_id=41", "allocation_id=38")
#: Runs the CLI, then prints the process's peak resident memory: VmHWM, which starts afresh at
#: exec (getrusage's ru_maxrss would carry over the forking parent's size).
PEAK_RSS = """
import re, sys
from pathlib import Path
from worker.cli import main
sys.argv = sys.argv[1:]
try:
    main()
finally:
    peak = re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)
    print(f"peak_rss_kb={peak}", file=sys.stderr)
"""


@contextlib.contextmanager
def server() -> Iterator[Any]:
    """A private embedded Valkey, and this process's settings pointed at it."""
    from worker.cli.stack import refresh_settings
    from worker.embedded import EmbeddedRedis

    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis.under(Path(tmp)) as redis:
        os.environ["CONTACTSYNC_REDIS_URL"] = redis.url
        os.environ["CONTACTSYNC_DATA_DIR"] = tmp
        refresh_settings()
        yield redis


def used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def enqueue_rates(tmp: Path) -> dict[str, Any]:
    """Each rate is the best of ``RUNS`` runs, Redis emptied before each (as ``timeit`` takes
    the best: this machine's speed varies by a third from run to run; every run is reported)."""
    from producers import submit_many
    from producers.backfill import Backfill, run
    from tasks.noojee import deliver
    from worker.runtime import ledger

    client = ledger().r
    jobs = [sample(n) for n in range(JOBS)]
    csv_path = tmp / "enqueue.csv"
    write_csv(csv_path, JOBS)
    spec = Backfill(
        path=csv_path,
        kind="noojee.update",
        max_queue_depth=0,
        constants=dict(s.split("=") for s in BACKFILL_SETS),
    )
    submit_many(jobs[:1000])  # warm: scripts loaded, connections open

    def timed(work: Any, count: int) -> float:
        client.execute_command("FLUSHALL", "SYNC")
        started = time.perf_counter()
        work()
        return count / (time.perf_counter() - started)

    def backfill() -> float:
        client.execute_command("FLUSHALL", "SYNC")
        result = run(spec)
        assert result.enqueued == JOBS, result
        return result.enqueued / result.seconds

    def loop() -> None:
        for _ in range(LOOP):
            deliver.apply_async(args=[uuid.uuid4().hex], queue="noojee", priority=9)

    submit_runs = [timed(lambda: submit_many(jobs), JOBS) for _ in range(RUNS)]
    backfill_runs = [backfill() for _ in range(RUNS)]
    loop_runs = [timed(loop, LOOP) for _ in range(RUNS)]
    client.execute_command("FLUSHALL", "SYNC")
    submit_rate, backfill_rate, loop_rate = max(submit_runs), max(backfill_runs), max(loop_runs)
    return {
        "jobs": JOBS,
        "loop_messages": LOOP,
        "runs": RUNS,
        "submit_many_jobs_per_s": round(submit_rate),
        "backfill_rows_per_s": round(backfill_rate),
        "apply_async_loop_per_s": round(loop_rate),
        "submit_many_vs_loop": round(submit_rate / loop_rate, 1),
        "backfill_vs_loop": round(backfill_rate / loop_rate, 1),
        "submit_many_runs": [round(r) for r in submit_runs],
        "backfill_runs": [round(r) for r in backfill_runs],
        "apply_async_loop_runs": [round(r) for r in loop_runs],
        "met": min(submit_rate, backfill_rate) >= 20_000
        and min(submit_rate, backfill_rate) >= 10 * loop_rate,
    }


def _deliver(book: Any, ids: list[str]) -> None:
    """What a worker does for each job answered 0 at its first attempt, through the ledger's
    own scripts; then its message is gone from the queue (consumed)."""
    from worker.ledger import DELIVERED

    for job_id in ids:
        book.claim(job_id, "bench", 60_000)
        book.record_attempt(
            job_id, {"event": "attempt", "code": "0", "latency_ms": 120}, fault=False
        )
        book.transition(
            job_id,
            DELIVERED,
            {"event": "delivered", "code": "0", "reason": "delivered"},
            token="bench",
        )
    book.r.delete("noojee:9")


def memory_per_job() -> dict[str, Any]:
    """Marginal bytes per job: memory after ``MEMORY_JOBS`` jobs less memory after the first
    ``MEMORY_FIRST``, over the jobs in between, so fixed costs (connections, scripts, buffers)
    cancel out."""
    from producers import submit_many
    from worker.runtime import ledger

    book = ledger()
    client = book.r

    def settled() -> int:
        client.execute_command("MEMORY", "PURGE")
        return used_memory(client)

    jobs = [sample(n) for n in range(MEMORY_JOBS)]
    keys = [f"backfill:mem:{n}" for n in range(MEMORY_JOBS)]
    rest = MEMORY_JOBS - MEMORY_FIRST
    # Queued: all of them at once, nothing consuming.
    client.execute_command("FLUSHALL", "SYNC")
    submit_many(jobs[:MEMORY_FIRST], idempotency_keys=keys[:MEMORY_FIRST], client="backfill")
    at_first = settled()
    submit_many(jobs[MEMORY_FIRST:], idempotency_keys=keys[MEMORY_FIRST:], client="backfill")
    queued = (settled() - at_first) / rest
    message = client.lindex("noojee:9", 0) or ""
    # Delivered: as a backfill under backpressure, a thousand queued at a time, each delivered.
    client.execute_command("FLUSHALL", "SYNC")
    at_first = 0
    for start in range(0, MEMORY_JOBS, 1000):
        if start == MEMORY_FIRST:
            at_first = settled()
        _deliver(
            book,
            submit_many(
                jobs[start : start + 1000],
                client="backfill",
                idempotency_keys=keys[start : start + 1000],
            ),
        )
    delivered = (settled() - at_first) / rest
    client.execute_command("FLUSHALL", "SYNC")
    return {
        "jobs": MEMORY_JOBS,
        "bytes_per_queued_job": round(queued),
        "of_which_celery_message_bytes": len(message),
        "bytes_per_delivered_job": round(delivered),
        "met": delivered <= 256,
    }


def intake_rates(redis_url: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "CONTACTSYNC_REDIS_URL": redis_url,
        "CONTACTSYNC_INTAKE__TOKENS": json.dumps({"bench": TOKEN}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker.cli",
                "intake",
                "--port",
                "0",
                "--port-file",
                str(port_file),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the intake did not start")
                time.sleep(0.05)
            url = f"http://127.0.0.1:{port_file.read_text().strip()}"
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.intake_client",
                    url,
                    TOKEN,
                    str(INTAKE_BATCHES),
                    str(INTAKE_BATCH),
                    str(INTAKE_SINGLES),
                    str(INTAKE_CONNECTIONS),
                ],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            figures: dict[str, Any] = json.loads(out.stdout)
        finally:
            proc.terminate()
            proc.wait(10)
    figures["met"] = (
        figures["batch_jobs_per_s"] >= 5_000
        and figures["single_requests_per_s"] >= 500
        and figures["single_p99_ms"] <= 25
    )
    return figures


def dry_run_backfill(tmp: Path) -> dict[str, Any]:
    path = tmp / "million.csv"
    write_csv(path, DRY_ROWS)
    sets = [arg for s in BACKFILL_SETS for arg in ("--set", s)]
    args = [
        "contactsync",
        "backfill",
        str(path),
        "--destination",
        "noojee",
        "--kind",
        "update",
        *sets,
        "--dry-run",
    ]
    started = time.perf_counter()
    # The command as a person runs it, in a process that reports its own peak memory.
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    elapsed = time.perf_counter() - started
    if out.returncode != 0 or "peak_rss_kb=" not in out.stderr:
        raise RuntimeError(f"the dry run failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    peak_mb = int(out.stderr.rsplit("peak_rss_kb=", 1)[1].split()[0]) / 1024
    return {
        "rows": DRY_ROWS,
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "seconds_with_start_up": round(elapsed, 1),
        "rows_per_s": round(DRY_ROWS / elapsed),
        "peak_rss_mb": round(peak_mb),
        "met": peak_mb <= 200,
    }


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_dir, server() as redis:
        tmp = Path(tmp_dir)
        results: dict[str, Any] = {
            "enqueue": enqueue_rates(tmp),
            "memory": memory_per_job(),
            "intake": intake_rates(redis.url),
        }
        results["backfill_dry_run"] = dry_run_backfill(tmp)
    results["met"] = all(entry["met"] for entry in results.values() if isinstance(entry, dict))
    return results
