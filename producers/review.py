"""Resolving jobs that need a person: requeue (optionally edited, re-validated) or discard.

Each resolution is one ledger transition with an audit entry in the job's history.
"""

from __future__ import annotations

import json
from typing import Any

from tasks.models import JobValidationError, model_for, validate_job
from worker.app import app
from worker.dispatch import publish
from worker.ledger import QUEUED, REJECTED, REVIEW, LedgerConflict, now_ms
from worker.runtime import ledger
from worker.settings import get_settings

#: A requeued job is also put on the schedule this far ahead, in case publishing fails.
REQUEUE_GRACE_MS = 30_000


def requeue(job_id: str, changes: dict[str, str], by: str) -> None:
    """Send a job in review or rejected to its destination again.

    changes: edits applied first; a name of the job model (``disposition``, ``njDisposition``)
    sets that field, any other name a lead field (``fields.NAME``). The edited job is validated
    like a new one (``JobValidationError``); the retry window, fault count and backoff start
    afresh.
    """
    book = ledger()
    record = book.get(job_id)
    if record is None:
        raise LedgerConflict(f"job {job_id} does not exist (or its record has expired)")
    if record.state not in (REVIEW, REJECTED):
        raise LedgerConflict(f"job {job_id} is {record.state}, not review or rejected")
    model = model_for(record.kind)
    data: dict[str, Any] = json.loads(record.payload)
    names = {alias: name for name, f in model.model_fields.items() for alias in (name, f.alias)}
    for key, value in changes.items():
        if key in names:
            data[names[key]] = value
        else:
            data.setdefault("fields", {})[key.removeprefix("fields.")] = value
    job = validate_job(record.kind, data)
    due = now_ms() + REQUEUE_GRACE_MS
    window_ms = int(get_settings().retry.window_s * 1000)
    entry = {"event": "requeued", "by": by, "edited": ",".join(sorted(changes)) or "-"}
    book.transition(job_id, QUEUED, entry, allowed=(REVIEW, REJECTED), due_ms=due, fields={
        "payload": job.model_dump_json(), "faults": 0, "retries": 0,
        "retry_until_ms": now_ms() + window_ms,
    })  # fmt: skip
    publish(app, job_id, record.task, record.queue, record.priority)


def discard(job_id: str, reason: str, by: str) -> None:
    """Give up on a job in review: it ends ``rejected`` with the operator's reason."""
    if not reason.strip():
        raise ValueError("a reason is required to discard a job")
    entry = {"event": "discarded", "by": by, "code": "discarded",
             "reason": f"discarded by {by}: {reason}"}  # fmt: skip
    ledger().transition(job_id, REJECTED, entry, allowed=(REVIEW,))


__all__ = ["JobValidationError", "LedgerConflict", "discard", "requeue"]
