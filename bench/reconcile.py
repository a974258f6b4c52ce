"""What keeping "queued" a promise costs with a backlog of 1,000,000 jobs.

The rounds every worker makes (``worker/republisher.py``): ``due`` (the schedule), ``reap``
(expired claims), ``reconcile`` (one queue's broker lists and the unacked index against the
jobs said to have a message, once every ``RECONCILE_S`` for the fleet) and ``feed`` (ready jobs
onto the lists as they empty). A backlog waits in the ledger's ready set without a message; the
broker lists hold at most the window. Each round is timed here with an empty queue and with
1,000,000 queued jobs, on the embedded server through the ledger's own scripts: its cost must
not grow with the backlog.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

BACKLOG, CHUNK, ROUNDS = 1_000_000, 1000, 50
#: What a job's message looks like to reconcile.lua: the task id in its headers.
MESSAGE = '{"headers": {"id": "@@job@@"}, "properties": {"delivery_tag": "@@job@@.@@pushed@@"}}'


def _timed(step: Any) -> dict[str, float]:
    """Milliseconds per call of ``step`` over ``ROUNDS`` calls: p50 and max."""
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        step()
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(statistics.median(times), 3), "max_ms": round(max(times), 3)}


def _rounds(ledger: Any) -> dict[str, dict[str, float]]:
    return {
        "due": _timed(ledger.due),
        "reap": _timed(ledger.reap),
        "reconcile": _timed(lambda: ledger.reconcile("noojee", 10_000, "unacked", 30_000)),
        "feed": _timed(lambda: ledger.feed("noojee")),
    }


def run() -> dict[str, Any]:
    import redis

    from bench.durability import noojee_jobs
    from worker.dispatch import Template
    from worker.embedded import EmbeddedRedis
    from worker.ledger import Ledger

    root = Path(tempfile.mkdtemp(prefix="contactsync-reconcile-"))
    with EmbeddedRedis.under(root) as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        ledger = Ledger(client, prefix="r:", window=200)
        template = Template("noojee:9", MESSAGE)
        empty = _rounds(ledger)
        started = time.perf_counter()
        for first in range(0, BACKLOG, CHUNK):
            jobs = noojee_jobs(CHUNK, first)
            ledger.create_many(jobs, [template] * CHUNK)
        filled_s = time.perf_counter() - started
        on_list = client.llen("noojee:9")
        waiting = ledger.waiting("noojee")
        full = _rounds(ledger)
        used_mb = int(client.info("memory")["used_memory"]) / 2**20
        client.close()
    result = {
        "backlog": BACKLOG,
        "filling_it_s": round(filled_s, 1),
        "on_the_broker_list": on_list,
        "waiting_in_the_ledger": waiting,
        "redis_memory_mb": round(used_mb),
        "rounds_empty": empty,
        "rounds_with_backlog": full,
    }
    return {**result, "met": _flat(empty, full)}


def _flat(empty: dict[str, dict[str, float]], full: dict[str, dict[str, float]]) -> bool:
    """Each round costs about the same with the backlog as without: at most twice, or 2 ms
    more."""
    return all(
        full[name]["p50_ms"] <= max(2 * empty[name]["p50_ms"], empty[name]["p50_ms"] + 2)
        for name in empty
    )


def table(result: dict[str, Any]) -> str:
    verdict = "MET" if result["met"] else "NOT MET"
    lines = [
        f"reconcile: each round costs the same with {result['backlog']:,} jobs queued → {verdict}",
        f"   {'filling the backlog took (s)':44}{result['filling_it_s']:>12}",
        f"   {'messages on the broker list':44}{result['on_the_broker_list']:>12,}",
        f"   {'jobs waiting in the ledger':44}{result['waiting_in_the_ledger']:>12,}",
        f"   {'Redis memory (MB)':44}{result['redis_memory_mb']:>12,}",
        f"   {'round, p50 / max (ms)':44}{'empty queue':>20}{'with the backlog':>22}",
    ]
    for name, empty in result["rounds_empty"].items():
        full = result["rounds_with_backlog"][name]
        lines.append(
            f"   {name:44}{empty['p50_ms']:>9} / {empty['max_ms']:<8}"
            f"{full['p50_ms']:>11} / {full['max_ms']:<8}"
        )
    return "\n".join(lines)
