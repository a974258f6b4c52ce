"""Chaos: nothing lost, nothing stuck, while workers and the Redis server are SIGKILLed.

One fleet as in the gate benchmark (the embedded Valkey, 4 Celery worker processes x 8 threads,
the Noojee simulator; here 16 slots of 100 ms and the gate fixed at 16, so a run takes seconds,
not minutes: the subject is loss, not the gate). 5,000 Noojee jobs of 5,000 leads are submitted
at once; then, until every job has ended, a worker chosen at random is SIGKILLed and started
again every 2-4 s, and the Redis server is SIGKILLed once midway and started again (its
append-only file replayed, as `contactsync up` does).

Reported per run: jobs submitted and delivered at the simulator (leads it stored), duplicates
(leads called more than once: at least once, each explained by a kill mid-call, a job whose
worker's lease expired, or by the Redis crash), **lost** (not delivered and not ended), **stuck**
(not ended within the bound after the chaos stopped: a claim's lease plus a reconcile round plus
a minute to work the queue off), and throughput against the same run without kills. Targets: 0
lost and 0 stuck in every one of 5 runs; throughput with kills >= 70 % of without.
"""

from __future__ import annotations

import random
import time
from typing import Any

import httpx

from bench.gate import BASE_ENV, fresh_stack

JOBS, RUNS, SLOTS = 5000, 5, 16
FIXED_16 = {"CONTACTSYNC_NOOJEE__ADAPTIVE": "false", "CONTACTSYNC_NOOJEE__MAX_CONCURRENCY": "16"}
#: Leases short enough that a killed worker costs seconds, as a chaos-hardened fleet would set.
CHAOS_ENV = {**FIXED_16, "CONTACTSYNC_JOB_LEASE_TTL_S": "3", "CONTACTSYNC_GATE__LEASE_TTL_S": "3"}
BOUND_S = 3 + 15 + 60
TARGET_THROUGHPUT = 0.70


def one_run(chaos: bool, seed: int) -> dict[str, Any]:
    from producers import submit_many
    from tasks.noojee import NoojeeLeadUpdate
    from worker.runtime import ledger

    rng = random.Random(seed)
    with fresh_stack("gate", SLOTS, CHAOS_ENV) as run:
        stack, book = run.stack, ledger()
        leads = [f"X{seed}-{n}" for n in range(JOBS)]
        started = time.monotonic()
        ids = submit_many(
            [
                NoojeeLeadUpdate(
                    template_id=41,
                    campaign_id=41,
                    allocation_id=38,
                    external_lead_id=lead,
                    disposition="Callback",
                    fields={"FirstPhone": "0383218199", "Name": "Chaos"},
                )
                for lead in leads
            ]
        )
        kills, crashed_at, calm_since = 0, None, None
        next_kill = time.monotonic() + rng.uniform(2, 4)
        deadline = None
        while True:
            ended = _ended(book, ids)
            now = time.monotonic()
            if ended == len(ids):
                break
            if chaos and ended < len(ids) * 0.95 and now >= next_kill:
                name = rng.choice([f"w{n}" for n in range(1, 5)])
                stack.kill_child(f"worker-{name}")
                stack.start_worker(name)
                kills += 1
                next_kill = now + rng.uniform(2, 4)
            if chaos and crashed_at is None and ended >= len(ids) // 2:
                assert stack.redis is not None
                server = stack.redis._process
                assert server is not None
                server.kill()  # SIGKILL
                server.wait()
                crashed_at = time.time()
                stack.redis.restart()
            if calm_since is None and (not chaos or ended >= len(ids) * 0.95):
                calm_since, deadline = now, now + BOUND_S
            if deadline is not None and now > deadline:
                break
            time.sleep(0.25)  # a watcher's round, not synchronisation
        elapsed = time.monotonic() - started
        records = book.get_many(ids)
        stats = httpx.get(f"{run.sim}/_stats", timeout=30).json()
        calls = stats["calls_by_lead"]
        stored = sum(1 for lead in leads if calls.get(lead, 0) >= 1)
        not_ended = [r for r in records if r is None or not r.terminal]
        lost = [
            lead
            for lead, r in zip(leads, records, strict=True)
            if not calls.get(lead) and (r is None or not r.terminal)
        ]
        duplicates = [
            (lead, r) for lead, r in zip(leads, records, strict=True) if calls.get(lead, 0) > 1
        ]
        explained = sum(1 for _, r in duplicates if r is not None and _explained(book, r.id))
        return {
            "chaos": chaos,
            "jobs": JOBS,
            "worker_kills": kills,
            "redis_kills": 1 if crashed_at else 0,
            "delivered_at_simulator": stored,
            "ended_in_ledger": len(ids) - len(not_ended),
            "duplicates": len(duplicates),
            "duplicates_explained_by_a_kill": explained,
            "lost": len(lost),
            "stuck_after_bound": len(not_ended),
            "seconds": round(elapsed, 1),
            "jobs_per_s": round(JOBS / elapsed, 1),
        }


def _ended(book: Any, ids: list[str]) -> int:
    pipe = book.r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(book.job_key(job_id), "state")
    from worker.ledger import TERMINAL

    return sum(1 for state in pipe.execute() if state in TERMINAL)


def _explained(book: Any, job_id: str) -> bool:
    """A job called twice whose history shows why: its worker's lease expired (killed
    mid-call), or its message was sent again (lost in transit). A duplicate whose record lost
    that entry with the Redis crash's last second is not counted here."""
    record = book.get(job_id, with_history=True)
    events = {e.get("event") for e in (record.history if record else [])}
    return bool(events & {"lease-expired", "message-lost"})


def run() -> dict[str, Any]:
    baseline = one_run(chaos=False, seed=0)
    runs = [one_run(chaos=True, seed=n) for n in range(1, RUNS + 1)]
    ratio = round(min(r["jobs_per_s"] for r in runs) / baseline["jobs_per_s"], 3)
    met = (
        all(r["lost"] == 0 and r["stuck_after_bound"] == 0 for r in runs)
        and ratio >= TARGET_THROUGHPUT
    )
    return {
        "without_kills": baseline,
        "with_kills": runs,
        "worst_throughput_ratio": ratio,
        "met": met,
        "env": {**BASE_ENV, **CHAOS_ENV},
    }
