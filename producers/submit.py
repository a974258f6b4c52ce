"""Submitting jobs from Python: record in the ledger, then publish; never lose one in between.

A job is recorded (with its idempotency key) and put in the ledger's outbox atomically, then its
message is published; if this process dies between the two, a worker's republisher sends it.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import islice
from typing import Literal

from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from tasks.models import JobModel
from worker.app import app
from worker.dispatch import publish, publish_many
from worker.gate import make_way
from worker.ledger import NewJob, now_ms
from worker.runtime import ledger
from worker.settings import get_settings

log = logging.getLogger(__name__)

Priority = Literal["realtime", "bulk"]
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


def submit(
    job: JobModel,
    priority: Priority = "realtime",
    idempotency_key: str | None = None,
    client: str = "",
) -> str:
    """Queue ``job`` for delivery and return its job id.

    priority: ``realtime`` (a service acting now) is always fetched before ``bulk`` (backfills).
    idempotency_key: the same key for the same destination returns the first job's id and
    queues nothing, so a retried request or a re-run backfill is not delivered twice.
    client: who submitted it, recorded on the job.
    """
    new = _new_job(job, priority, idempotency_key, client)
    book = ledger()
    job_id, created = book.create(new)
    if not created:
        return job_id
    try:
        publish(app, job_id, new.task, new.queue, priority)
    except (KombuError, RedisError, OSError):
        # Recorded in the outbox: a worker's republisher publishes it within a minute.
        log.warning("job %s recorded but not published yet; the republisher will send it", job_id)
        return job_id
    _make_way(new.destination, priority, 1)
    try:
        book.published(job_id)
    except RedisError:
        # The job is queued; at worst the republisher sends a duplicate message, which the
        # worker drops. Raising here would invite the caller to submit the job again.
        log.warning("job %s published; its outbox entry stays for the republisher", job_id)
    return job_id


#: Jobs per round trip of ``submit_many``.
BATCH = 1000


def submit_many(
    jobs: Iterable[JobModel],
    priority: Priority = "bulk",
    idempotency_keys: Sequence[str | None] | None = None,
    client: str = "",
) -> list[str]:
    """Queue many jobs; returns one job id per job, in order (for a job whose idempotency key
    was already used, that earlier job's id). Bulk by default: many jobs at once are a backfill.

    Writes are pipelined, ``BATCH`` jobs per round trip: record all (each atomically, into the
    outbox), publish all in one batch, then clear them from the outbox. A crash anywhere in
    between loses nothing: the republisher publishes what stayed in the outbox.

    ``jobs`` may be a stream (a generator over a file): a bad argument (not a job model, a
    malformed idempotency key) raises before its batch is recorded, but earlier batches stay
    queued. Callers that need all-or-nothing validate everything first.
    """
    keys = iter(idempotency_keys) if idempotency_keys is not None else None
    ids: list[str] = []
    book = ledger()
    pending = iter(jobs)
    while chunk := list(islice(pending, BATCH)):
        news = [_new_job(job, priority, next(keys, None) if keys else None, client)
                for job in chunk]  # fmt: skip
        created = book.create_many(news)
        fresh = [new for new, (_, made) in zip(news, created, strict=True) if made]
        ids += [job_id for job_id, _ in created]
        if not fresh:
            continue
        try:
            publish_many(app, [(n.id, n.task, n.queue, n.priority) for n in fresh])
        except (KombuError, RedisError, OSError):
            log.warning("%d jobs recorded but not all published; the republisher will send "
                        "them", len(fresh))  # fmt: skip
            continue
        for destination, count in Counter(n.destination for n in fresh).items():
            _make_way(destination, priority, count)
        try:
            book.published_many([n.id for n in fresh])
        except RedisError:
            log.warning("%d jobs published; their outbox entries stay for the republisher",
                        len(fresh))  # fmt: skip
    return ids


def _new_job(
    job: JobModel, priority: str, idempotency_key: str | None, client: str
) -> NewJob:
    if not isinstance(job, JobModel):
        raise TypeError(f"submit() takes a job model such as NoojeeLeadUpdate, not {type(job)}")
    if priority not in ("realtime", "bulk"):
        raise ValueError(f"priority must be 'realtime' or 'bulk', not {priority!r}")
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
        raise ValueError("idempotency_key must be 1-200 printable ASCII characters, no spaces")
    return NewJob(
        id=uuid.uuid4().hex,
        kind=job.kind,
        destination=job.destination,
        task=f"{job.destination}.deliver",
        queue=job.destination,
        priority=priority,
        payload=job.model_dump_json(),
        retry_until_ms=now_ms() + int(get_settings().retry.window_s * 1000),
        idempotency_key=idempotency_key,
        client=client,
    )


def _make_way(destination: str, priority: str, jobs: int) -> None:
    """Realtime jobs: free worker threads that wait at the destination's gate with bulk jobs."""
    if priority != "realtime":
        return
    try:
        make_way(ledger().r, get_settings().key_prefix, destination, jobs)
    except RedisError:  # only a delay: the job is queued and is fetched first anyway
        log.warning("could not ask the %s gate to make way for a realtime job", destination)
