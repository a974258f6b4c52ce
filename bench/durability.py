"""Durability: what the embedded server's ``appendfsync always`` costs against ``everysec``.

With ``everysec`` (the default) the append-only file is fsynced once a second: a power failure
(not a crash of the server alone: the kernel still writes what it was given) can lose the last
second of writes: jobs submitted, answers settled. ``always`` fsyncs before answering, once per
round of the server's event loop. Measured here on the embedded binary, on this machine's disk,
through the ledger's own scripts: recording jobs (``create_many``, as a backfill does) and
settling them (claim and transition to delivered, as workers do, from 8 threads).
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

JOBS, SETTLED, THREADS = 20_000, 4_000, 8


def noojee_jobs(count: int, first: int = 0) -> list[Any]:
    """``count`` Noojee updates, each of a lead of its own (``NewJob``s for ``create_many``)."""
    from worker.ledger import NewJob, now_ms

    return [
        NewJob(
            id=uuid.uuid4().hex,
            kind="noojee.update",
            destination="noojee",
            task="noojee.deliver",
            queue="noojee",
            priority="bulk",
            payload='{"fields": {"FirstPhone": "0383218199"}}',
            retry_until_ms=now_ms() + 86_400_000,
            entity=f"noojee:L{first + n}",
        )
        for n in range(count)
    ]


def measure(appendfsync: str) -> dict[str, Any]:
    import redis

    from worker.dispatch import Template
    from worker.embedded import EmbeddedRedis
    from worker.ledger import Ledger

    with EmbeddedRedis.under(Path(tempfile.mkdtemp(prefix="contactsync-fsync-"))) as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        client.config_set("appendfsync", appendfsync)
        ledger = Ledger(client, prefix="d:")
        template = Template("noojee", '{"headers": {"id": "@@job@@"}}')
        jobs = noojee_jobs(JOBS)
        started = time.perf_counter()
        for start in range(0, JOBS, 1000):
            chunk = jobs[start : start + 1000]
            ledger.create_many(chunk, [template] * len(chunk))
        created_s = time.perf_counter() - started

        todo = [job.id for job in jobs[:SETTLED]]
        lock = threading.Lock()

        def settle() -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    job_id = todo.pop()
                ledger.claim(job_id, "t")
                ledger.transition(job_id, "delivered", {"event": "delivered"}, token="t")

        threads = [threading.Thread(target=settle) for _ in range(THREADS)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        settled_s = time.perf_counter() - started
        client.close()
    return {"created_per_s": round(JOBS / created_s), "settled_per_s": round(SETTLED / settled_s)}


def run() -> dict[str, Any]:
    everysec, always = measure("everysec"), measure("always")
    return {
        "everysec": everysec,
        "always": always,
        "always_created_ratio": round(always["created_per_s"] / everysec["created_per_s"], 3),
        "always_settled_ratio": round(always["settled_per_s"] / everysec["settled_per_s"], 3),
        "met": True,  # figures for the README's choice, no target
    }
