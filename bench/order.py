"""Order per record: what coalescing saves and what the hand-off between two jobs of one record
costs, on the same fleet as the gate benchmark (the embedded Valkey, 4 Celery worker processes x
8 threads, the Noojee simulator with 4 slots of 100 ms ± 20 ms).

1. **coalescing**: 500 leads x 20 updates each, as one bulk backfill (a CSV file, rounds
   interleaved: every lead's first update, then every lead's second, ...). Target: the PBX
   receives at most 2 calls per lead, and every lead ends holding its newest values.
2. **hand-off**: 4 leads (the PBX's slots) x 50 realtime updates each, with coalescing off, so
   each update is its own call: the time from one job's settle (its "delivered" entry) to the
   next same-lead job's call (its attempt's start), p50 and p99. It covers the release inside
   Redis, the message on the broker, a worker taking it, its claim, the gate and the request
   being built.

3. **unique**: the gate benchmark's scenario A (2,000 bulk jobs of 2,000 leads, gate fixed at
   4): unique records pay only the bookkeeping. Utilisation and the workers' CPU per delivered
   job (from /proc), to compare with the same run before order per record (the figures of both
   are in the notes of the issue that brought it).
"""

from __future__ import annotations

import csv
import itertools
import os
import time
from pathlib import Path
from typing import Any

import httpx

from bench.gate import FIXED_4, fresh_stack

LEADS, UPDATES = 500, 20
#: As many leads as the PBX has slots: the next job of a lead never waits for a permit behind
#: other leads' calls, so the figure is the hand-off itself.
CHAIN_LEADS, CHAIN_JOBS = 4, 50
MAX_CALLS_PER_LEAD = 2


def coalescing() -> dict[str, Any]:
    from producers.backfill import Backfill, run

    with fresh_stack("gate", 4, FIXED_4) as stack_run:
        path = Path(stack_run.stack.data_dir) / "updates.csv"
        newest: dict[str, dict[str, str]] = {}
        with path.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["external_lead_id", "FirstPhone", "Name", "City"])
            for round_ in range(UPDATES):
                for n in range(LEADS):
                    lead = f"C-{n}"
                    row = {
                        "FirstPhone": f"0383{round_:02d}{n:04d}",
                        "Name": f"name {round_}",
                        "City": f"city {round_}",
                    }
                    out.writerow([lead, *row.values()])
                    newest[lead] = row
        started = time.monotonic()
        result = run(
            Backfill(
                path,
                "noojee.update",
                max_queue_depth=0,
                wait=True,
                constants={
                    "template_id": "41",
                    "campaign_id": "41",
                    "allocation_id": "38",
                    "disposition": "Callback",
                },
            )
        )
        elapsed = time.monotonic() - started
        stats = stack_run.stats()
        calls = [stats["calls_by_lead"].get(lead, 0) for lead in newest]
        stale = [
            lead
            for lead, row in newest.items()
            if httpx.get(f"{stack_run.sim}/_leads/{lead}", timeout=10).json().get("Name")
            != row["Name"]
        ]
        jobs = result.jobs
        return {
            "jobs": LEADS * UPDATES,
            "elapsed_s": round(elapsed, 1),
            "calls": sum(calls),
            "calls_per_lead_max": max(calls),
            "calls_per_lead_mean": round(sum(calls) / len(calls), 2),
            "delivered": jobs.get("delivered", 0),
            "merged": jobs.get("merged", 0),
            "review_or_rejected": jobs.get("review", 0) + jobs.get("rejected", 0),
            "leads_not_holding_their_newest_values": len(stale),
            "answers_109": stats["answers"].get("109", 0),
            "met": max(calls) <= MAX_CALLS_PER_LEAD and not stale and jobs.get("pending") == 0,
        }


def hand_off() -> dict[str, Any]:
    from producers import submit_many
    from tasks.noojee import NoojeeLeadUpdate
    from worker.runtime import ledger

    env = {**FIXED_4, "CONTACTSYNC_NOOJEE__COALESCE": "false"}
    with fresh_stack("gate", 4, env):
        chains: list[list[str]] = [[] for _ in range(CHAIN_LEADS)]
        for step in range(CHAIN_JOBS):
            ids = submit_many(
                [
                    NoojeeLeadUpdate(
                        template_id=41,
                        campaign_id=41,
                        allocation_id=38,
                        external_lead_id=f"H-{n}",
                        disposition="Callback",
                        fields={"FirstPhone": "0383218199", "Name": f"{step}"},
                    )
                    for n in range(CHAIN_LEADS)
                ],
                priority="realtime",
            )
            for chain, job_id in zip(chains, ids, strict=True):
                chain.append(job_id)
        book = ledger()
        everyone = [job_id for chain in chains for job_id in chain]
        deadline = time.monotonic() + 300
        while any(r is None or r.state != "delivered" for r in book.get_many(everyone)):
            if time.monotonic() > deadline:
                raise RuntimeError("the chains did not finish within 300 s")
            time.sleep(0.2)
        gaps_ms: list[float] = []
        waits_ms: list[float] = []
        for chain in chains:
            records = [book.get(job_id, with_history=True) for job_id in chain]
            for before, after in itertools.pairwise(records):
                assert before is not None and after is not None
                settled = next(e["at"] for e in before.history if e["event"] == "delivered")
                first = [e for e in after.history if e["event"] == "attempt"][-1]
                called = first["at"] - first["latency_ms"]
                gaps_ms.append(called - settled)
                waits_ms.append(first["gate_wait_ms"])
        gaps_ms.sort()
        waits_ms.sort()
        return {
            "hand_offs": len(gaps_ms),
            "p50_ms": _quantile(gaps_ms, 0.50),
            "p99_ms": _quantile(gaps_ms, 0.99),
            "max_ms": gaps_ms[-1],
            "of_which_gate_wait_p50_ms": _quantile(waits_ms, 0.50),
            "of_which_gate_wait_p99_ms": _quantile(waits_ms, 0.99),
            "met": True,  # a figure to report: the issue sets no target
        }


def unique() -> dict[str, Any]:
    jobs = 2000
    with fresh_stack("gate", 4, FIXED_4) as stack_run:
        workers = [
            proc.pid for name, proc, _ in stack_run.stack._children if name.startswith("worker-")
        ]
        before = _cpu_s(workers)
        stack_run.submit(jobs)
        end = stack_run.wait_delivered(jobs)
        cpu_s = _cpu_s(workers) - before
        measured = stack_run.measures(end)
        return {
            "utilisation": measured["utilisation"],
            "answers_109": measured["answers_109"],
            "elapsed_s": measured["elapsed_s"],
            "worker_cpu_ms_per_job": round(cpu_s * 1000 / jobs, 2),
            "met": True,  # compared by hand with the run before order per record
        }


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (their threads included), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


def _quantile(ordered: list[float], q: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def run() -> dict[str, Any]:
    results: dict[str, Any] = {
        "coalescing": coalescing(),
        "hand_off": hand_off(),
        "unique": unique(),
    }
    results["met"] = all(entry["met"] for entry in results.values() if isinstance(entry, dict))
    return results
