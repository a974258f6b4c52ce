"""Submitting jobs from Python: record in the ledger, then publish; never lose one in between.

A job is recorded (with its idempotency key) and put in the ledger's outbox atomically, then its
message is published; if this process dies between the two, a worker's republisher sends it.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Literal

from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from tasks.models import JobModel
from worker.app import app
from worker.dispatch import publish
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
    if not isinstance(job, JobModel):
        raise TypeError(f"submit() takes a job model such as NoojeeLeadUpdate, not {type(job)}")
    if priority not in ("realtime", "bulk"):
        raise ValueError(f"priority must be 'realtime' or 'bulk', not {priority!r}")
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
        raise ValueError("idempotency_key must be 1-200 printable ASCII characters, no spaces")
    settings = get_settings()
    new = NewJob(
        id=uuid.uuid4().hex,
        kind=job.kind,
        destination=job.destination,
        task=f"{job.destination}.deliver",
        queue=job.destination,
        priority=priority,
        payload=job.model_dump_json(),
        retry_until_ms=now_ms() + int(settings.retry.window_s * 1000),
        idempotency_key=idempotency_key,
        client=client,
    )
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
    try:
        book.published(job_id)
    except RedisError:
        # The job is queued; at worst the republisher sends a duplicate message, which the
        # worker drops. Raising here would invite the caller to submit the job again.
        log.warning("job %s published; its outbox entry stays for the republisher", job_id)
    return job_id
