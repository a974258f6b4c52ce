"""Submitting jobs from Python: validated job models in, job ids out.

Each job is recorded in the ledger and its Celery message queued by one Redis script, so no
crash can leave a job recorded but not queued; ``submit_many`` sends a thousand jobs a round
trip.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from itertools import islice
from typing import Literal

from redis.exceptions import RedisError

from tasks.models import JobModel, version_key
from worker.app import app
from worker.codec import seal
from worker.dispatch import Messages
from worker.gate import make_way
from worker.ledger import NewJob, job_id_for, now_ms
from worker.runtime import ledger
from worker.settings import get_settings

log = logging.getLogger(__name__)

Priority = Literal["realtime", "bulk"]
#: A producer's version of a job's data: an integer, or an RFC 3339 timestamp (str or aware
#: datetime).
Version = int | str | datetime
#: Jobs per round trip of ``submit_many``.
ROUND_TRIP = 1000
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


@lru_cache(maxsize=1)
def _messages() -> Messages:
    return Messages(app)


def submit(
    job: JobModel,
    priority: Priority = "realtime",
    idempotency_key: str | None = None,
    client: str = "",
    version: Version | None = None,
) -> str:
    """Queue ``job`` for delivery and return its job id.

    priority: ``realtime`` (a service acting now) is always fetched before ``bulk`` (backfills).
    idempotency_key: the same key for the same destination returns the first job's id and
    queues nothing, so a retried request or a re-run backfill is not delivered twice.
    client: who submitted it, recorded on the job.
    version: the producer's own version of this data (an integer, or an RFC 3339 timestamp
    with its offset): a job older than one already delivered for the same record is not sent
    (it ends ``superseded``). Without versions, submission order decides.

    Jobs for the same record (``job.entity_key()``) are delivered one at a time, in submission
    order; pending ones may be merged into one call.
    """
    return submit_many(
        [job], priority, [idempotency_key], client, versions=None if version is None else [version]
    )[0]


def submit_many(
    jobs: Iterable[JobModel],
    priority: Priority = "bulk",
    idempotency_keys: Sequence[str | None] | None = None,
    client: str = "",
    batch: str = "",
    versions: Sequence[Version | None] | None = None,
) -> list[str]:
    """Queue many jobs; returns one job id per job, in order (for a job whose idempotency key
    was already used, that earlier job's id). Bulk by default: many jobs at once are a backfill.

    batch: a name whose jobs are counted by state (``Ledger.batch_counts``), as a backfill
    shows its progress.

    Each job is recorded and queued atomically, ``ROUND_TRIP`` jobs a round trip. ``jobs`` may
    be a stream (a generator over a file): a bad argument (not a job model, a malformed
    idempotency key or version) raises before its round trip, but earlier ones stay queued.
    Callers that need all-or-nothing validate everything first (the intake does).
    versions: one per job (None for a job without one), as ``submit``'s ``version``.
    """
    return [
        job_id for job_id, _ in enqueue(jobs, priority, idempotency_keys, client, batch, versions)
    ]


def enqueue(
    jobs: Iterable[JobModel],
    priority: Priority = "bulk",
    idempotency_keys: Sequence[str | None] | None = None,
    client: str = "",
    batch: str = "",
    versions: Sequence[Version | None] | None = None,
) -> list[tuple[str, bool]]:
    """``submit_many``, telling for each job whether it is new (``True``) or its idempotency
    key named an earlier job (``False``)."""
    keys = iter(idempotency_keys) if idempotency_keys is not None else None
    given = iter(versions) if versions is not None else None
    results: list[tuple[str, bool]] = []
    book, messages = ledger(), _messages()
    retry_until = now_ms() + int(get_settings().retry.window_s * 1000)
    pending = iter(jobs)
    while chunk := list(islice(pending, ROUND_TRIP)):
        news = [
            _new_job(
                job,
                priority,
                next(keys, None) if keys else None,
                client,
                batch,
                retry_until,
                next(given, None) if given else None,
            )
            for job in chunk
        ]
        created = book.create_many(
            news, [messages.template(n.task, n.queue, n.priority) for n in news]
        )
        results += created
        fresh = Counter(n.destination for n, (_, made) in zip(news, created, strict=True) if made)
        for destination, count in fresh.items():
            _make_way(destination, priority, count)
    return results


def _new_job(
    job: JobModel,
    priority: str,
    idempotency_key: str | None,
    client: str,
    batch: str,
    retry_until_ms: int,
    version: Version | None = None,
) -> NewJob:
    if not isinstance(job, JobModel):
        raise TypeError(f"submit() takes a job model such as NoojeeLeadUpdate, not {type(job)}")
    if priority not in ("realtime", "bulk"):
        raise ValueError("priority must be 'realtime' or 'bulk'")
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
        raise ValueError("idempotency_key must be 1-255 printable ASCII characters, no spaces")
    destination = job.destination
    shown, vkey = version_key(version) if version is not None else ("", "")
    return NewJob(
        id=os.urandom(16).hex()
        if idempotency_key is None
        else job_id_for(destination, idempotency_key),
        kind=job.kind,
        destination=destination,
        task=f"{destination}.deliver",
        queue=destination,
        priority=priority,
        payload=seal(job.model_dump_json()),  # ciphertext when payload keys are set
        retry_until_ms=retry_until_ms,
        idempotency_key=idempotency_key,
        client=client,
        batch=batch,
        entity=job.entity_key(),
        version=shown,
        vkey=vkey,
    )


def _make_way(destination: str, priority: str, jobs: int) -> None:
    """Realtime jobs: free worker threads that wait at the destination's gate with bulk jobs."""
    if priority != "realtime":
        return
    try:
        make_way(ledger().r, get_settings().key_prefix, destination, jobs)
    except RedisError:  # only a delay: the job is queued and is fetched first anyway
        log.warning("could not ask the %s gate to make way for a realtime job", destination)
