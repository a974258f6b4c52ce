"""Fairness: do the other destinations keep flowing while a Noojee backfill saturates its gate?

One stack: the embedded Valkey, 4 Celery worker processes x 8 threads consuming every queue, and
the four simulators (Noojee: 4 slots of 100 ms ± 20 ms; the others 50 ms a call). The same
stream of Mission Capital, Trendsic and Expandable jobs is submitted twice, at a steady rate
(as services submit live updates), and measured:

1. **alone**: nothing else is queued;
2. **with the backfill**: 20,000 bulk Noojee jobs were submitted first, and the Noojee gate is
   full (every permit held, jobs waiting for one) for the whole stream.

The stream runs once as realtime jobs (what services submit) and once as bulk jobs (another
backfill), so the realtime jobs' head start at the gate (``make_way``) is not all that is
measured. The rate of a destination is its jobs delivered over the stream's window (first
submit to last delivery). The target: with the backfill, each destination's rate is at least
90 % of its rate alone. Latency (submit to delivered) is reported beside it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.gate import BASE_ENV, THREADS, WORKERS
from producers.submit import Priority

#: Jobs per second submitted to each of the three destinations, and for how long.
RATE, SECONDS = 15, 20
BACKFILL = 20_000
TARGET = 0.90
PRIORITIES: tuple[Priority, ...] = ("realtime", "bulk")
OTHERS = ("missioncapital", "trendsic", "expandable")
SIMULATOR_OPTIONS = {
    "missioncapital": ["--latency", "0.05", "--jitter", "0.01"],
    "trendsic": ["--latency", "0.05"],
    "expandable": ["--latency", "0.05"],
}
EXPANDABLE_CONTACTS = [("ABCCORP", "JHERNANDEZ"), ("ABCCORP", "MSMITH"), ("XYZINC", "TJONES")]


def lead_id(n: int) -> str:
    """A valid 18-character Salesforce Lead id (the case-checksum suffix computed)."""
    from tasks.missioncapital import id_suffix

    base = f"00QEa{n:010d}"
    return base + id_suffix(base)


def other_job(destination: str, n: int) -> Any:
    from tasks.models import validate_job

    if destination == "missioncapital":
        return validate_job("missioncapital.contact_user", {"application_id": lead_id(n)})
    if destination == "trendsic":
        return validate_job(
            "trendsic.contact_connection",
            {"contact_id": 1001 + n % 10, "agent_id": 7, "contact": {"Title": f"T{n}"}},
        )
    customer, contact = EXPANDABLE_CONTACTS[n % len(EXPANDABLE_CONTACTS)]
    return validate_job(
        "expandable.contact_update",
        {"CUSTOMER_ID": customer, "CUST_CONTACT": contact, "NOTES": f"bench {n}"},
    )


def stream(tag: int, priority: Priority) -> dict[str, list[str]]:
    """Submit RATE jobs a second to each destination for SECONDS; returns the job ids."""
    from producers import submit_many

    ids: dict[str, list[str]] = {d: [] for d in OTHERS}
    started = time.monotonic()
    for tick in range(SECONDS * 10):  # a tenth of the second's jobs every 100 ms
        for destination in OTHERS:
            first = tick * RATE // 10
            count = (tick + 1) * RATE // 10 - first
            jobs = [other_job(destination, tag * 1_000_000 + first + i) for i in range(count)]
            if jobs:
                ids[destination] += submit_many(jobs, priority=priority)
        delay = started + (tick + 1) / 10 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return ids


def settle(ids: dict[str, list[str]], timeout_s: float = 180) -> dict[str, Any]:
    """Wait until every job is final; per destination: rate, latency, states."""
    from worker.ledger import TERMINAL
    from worker.runtime import ledger

    book = ledger()
    deadline = time.monotonic() + timeout_s
    every = [i for group in ids.values() for i in group]
    while True:
        with book.r.pipeline(transaction=False) as pipe:
            for job_id in every:
                pipe.hget(book.job_key(job_id), "state")
            states = pipe.execute()
        if all(s in TERMINAL for s in states) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    figures: dict[str, Any] = {}
    for destination, group in ids.items():
        records = [book.get(i) for i in group]
        done = [r for r in records if r is not None and r.state == "delivered"]
        first = min(r.submitted_at_ms for r in records if r is not None)
        last = max((r.updated_at_ms for r in done), default=first)
        latencies = sorted((r.updated_at_ms - r.submitted_at_ms) / 1000 for r in done)
        figures[destination] = {
            "submitted": len(group),
            "delivered": len(done),
            "not_delivered": {
                s: sum(1 for r in records if r and r.state == s)
                for s in ("review", "rejected", "retrying", "queued", "running")
                if any(r and r.state == s for r in records)
            },
            "rate_per_s": round(len(done) / max(0.001, (last - first) / 1000), 2),
            "latency_p50_s": _pct(latencies, 0.50),
            "latency_p99_s": _pct(latencies, 0.99),
        }
    return figures


def _pct(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def noojee_saturated() -> dict[str, int]:
    from worker.broker import redis_client
    from worker.gate import gate_names, read_status
    from worker.settings import get_settings

    client, prefix = redis_client(), get_settings().key_prefix
    for name in gate_names(client, prefix):
        if name.startswith("noojee"):
            status = read_status(client, f"{prefix}gate:{name}:", name)
            waiting = sum(status.waiting.values())
            return {"limit": status.limit, "held": status.held, "waiting": waiting}
    return {"limit": 0, "held": 0, "waiting": 0}


@contextlib.contextmanager
def fresh_stack() -> Iterator[Any]:
    from worker.cli.stack import Stack, refresh_settings

    for name in [n for n in os.environ if n.startswith("CONTACTSYNC_")]:
        del os.environ[name]
    data_dir = Path(tempfile.mkdtemp(prefix="contactsync-bench-fairness-"))
    os.environ.update(
        {
            **BASE_ENV,
            "CONTACTSYNC_DATA_DIR": str(data_dir),
            "CONTACTSYNC_NOOJEE__ADAPTIVE": "false",
            "CONTACTSYNC_NOOJEE__MAX_CONCURRENCY": "4",
        }
    )
    refresh_settings()
    stack = Stack(
        data_dir,
        workers=WORKERS,
        flower=False,
        intake=False,
        simulator_args=[
            "--slots",
            "4",
            "--latency",
            "0.1",
            "--jitter",
            "0.02",
            "--queue-timeout",
            "2",
        ],
        simulator_options=SIMULATOR_OPTIONS,
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def run() -> dict[str, Any]:
    import httpx

    from producers import submit_many
    from tasks.noojee import NoojeeLeadUpdate

    alone: dict[str, Any] = {}
    with_backfill: dict[str, Any] = {}
    with fresh_stack() as stack:
        for n, priority in enumerate(PRIORITIES):
            alone[priority] = settle(stream(n, priority))
            print(
                f"  alone, {priority}: "
                + ", ".join(f"{d} {f['rate_per_s']}/s" for d, f in alone[priority].items()),
                flush=True,
            )
        for start in range(0, BACKFILL, 5_000):
            submit_many(
                [
                    NoojeeLeadUpdate(
                        template_id=41,
                        campaign_id=41,
                        allocation_id=38,
                        external_lead_id=f"BF-{n}",
                        disposition="Callback",
                        fields={"FirstPhone": f"0383{n:06d}", "Name": "Backfill"},
                    )
                    for n in range(start, start + 5_000)
                ],
                priority="bulk",
            )
        deadline = time.monotonic() + 60
        while not (gate := noojee_saturated())["waiting"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Noojee gate never filled: {gate}")
            time.sleep(0.1)

        def noojee_calls() -> int:
            return int(httpx.get(f"{stack.simulator_url}/_stats", timeout=10).json()["calls"])

        calls, started = noojee_calls(), time.monotonic()
        ids = {}
        for n, priority in enumerate(PRIORITIES):
            ids[priority] = stream(10 + n, priority)
        gate_at_end = noojee_saturated()
        noojee_rate = (noojee_calls() - calls) / (time.monotonic() - started)
        for priority in PRIORITIES:
            with_backfill[priority] = settle(ids[priority])
    ratios = {
        priority: {
            d: round(with_backfill[priority][d]["rate_per_s"] / alone[priority][d]["rate_per_s"], 3)
            if alone[priority][d]["rate_per_s"]
            else None
            for d in OTHERS
        }
        for priority in PRIORITIES
    }
    return {
        "title": f"{RATE} jobs/s to each of {', '.join(OTHERS)} for {SECONDS} s, as realtime "
        f"and as bulk jobs, alone and while {BACKFILL:,} bulk Noojee jobs saturate its "
        "gate (4 slots)",
        "target": f"each rate with the backfill >= {TARGET:.0%} of its rate alone",
        "setup": f"{WORKERS} workers x {THREADS} threads, every queue on every worker",
        "alone": alone,
        "with_backfill": with_backfill,
        "rate_ratio": ratios,
        "noojee_gate_at_start_of_stream": gate,
        "noojee_gate_at_end_of_stream": gate_at_end,
        "noojee_calls_per_s_during_stream": round(noojee_rate, 1),
        "met": all(r is not None and r >= TARGET for rs in ratios.values() for r in rs.values())
        and all(
            f["delivered"] == f["submitted"]
            for by_destination in with_backfill.values()
            for f in by_destination.values()
        ),
    }
