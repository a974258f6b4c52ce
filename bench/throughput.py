"""Delivery through the real stack (embedded Valkey, one Celery worker, the Noojee simulator):
how fast ``submit`` records and publishes, how fast jobs drain through a PBX with 4 slots of
~100 ms, and how busy that keeps the PBX. No concurrency gate yet: the worker's threads are the
only limit, so calls beyond the slots queue inside the PBX (its ``peak_queued``)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).parent / "results"
JOBS = 2000
SLOTS = 4
THREADS = 8


def run(jobs: int = JOBS, slots: int = SLOTS, threads: int = THREADS) -> dict[str, Any]:
    from worker.stack import Stack

    for name in [n for n in os.environ if n.startswith("CONTACTSYNC_")]:
        del os.environ[name]
    data_dir = Path(tempfile.mkdtemp(prefix="contactsync-bench-"))
    os.environ.update({"CONTACTSYNC_DATA_DIR": str(data_dir),
                       "CONTACTSYNC_WORKER_CONCURRENCY": str(threads)})  # fmt: skip
    stack = Stack(data_dir, flower=False, simulator_args=[
        "--slots", str(slots), "--latency", "0.1", "--jitter", "0.02", "--queue-timeout", "60"])
    stack.start()
    try:
        from producers import submit
        from tasks.noojee import NoojeeLeadUpdate
        from worker.runtime import ledger

        sample = [NoojeeLeadUpdate(
            template_id=41, campaign_id=41, allocation_id=38, external_lead_id=f"B-{n}",
            disposition="Callback", fields={"FirstPhone": f"0383{n:06d}", "Name": "Bench Lead"},
        ) for n in range(jobs)]  # fmt: skip
        httpx.post(f"{stack.simulator_url}/_reset").raise_for_status()
        started = time.monotonic()
        ids = [submit(job, priority="bulk") for job in sample]
        submitted = time.monotonic()
        book = ledger()
        while book.counts()["delivered"] < jobs:
            if time.monotonic() - started > 600:
                raise RuntimeError("benchmark did not drain within 600 s")
            time.sleep(0.1)
        drained = time.monotonic()
        stats = httpx.get(f"{stack.simulator_url}/_stats").json()
        elapsed = drained - started
        return {
            "benchmark": "delivery throughput, no gate",
            "jobs": jobs, "pbx_slots": slots, "worker_threads": threads,
            "submit_jobs_per_s": round(len(ids) / (submitted - started)),
            "elapsed_s": round(elapsed, 2),
            "delivered_jobs_per_s": round(jobs / elapsed, 1),
            "ideal_jobs_per_s": round(slots / 0.105, 1),
            "pbx_utilisation": round(stats["busy_slot_s"] / (elapsed * slots), 3),
            "pbx_peak_in_flight": stats["peak_in_flight"],
            "pbx_peak_queued": stats["peak_queued"],
            "answers": stats["answers"],
        }
    finally:
        stack.stop()


def main() -> None:
    result = run()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(f"written to {RESULTS / 'throughput.json'}")


if __name__ == "__main__":
    main()
