"""Resolving jobs that need a person: requeue (optionally edited, re-validated) or discard.

Each resolution is one ledger transition with an audit entry in the job's history.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from tasks.models import JobValidationError, model_for, validate_job
from worker.codec import seal, unseal
from worker.ledger import QUEUED, REJECTED, REVIEW, LedgerConflict, now_ms
from worker.runtime import ledger
from worker.settings import get_settings


class NewerDelivered(LedgerConflict):
    """Requeueing this job would overwrite newer data: a job for the same record submitted
    after it has been delivered since. ``force`` sends it anyway."""


def requeue(job_id: str, changes: dict[str, str], by: str, force: bool = False) -> str:
    """Send a job in review or rejected to its destination again; returns its state now:
    ``queued``, or ``held`` behind jobs of the same record that are pending before it (it joins
    the end of its record's line, as a new job would).

    changes: edits applied first; a name of the job model (``disposition``, ``njDisposition``)
    sets that field, any other name a lead field (``fields.NAME``). The edited job is validated
    like a new one (``JobValidationError``); the retry window, fault count and backoff start
    afresh.
    force: send it even though a newer job of the same record has been delivered since
    (``NewerDelivered`` otherwise), and even if its version is older than one delivered: it
    will overwrite that newer data.
    """
    book = ledger()
    record = book.get(job_id)
    if record is None:
        raise LedgerConflict(f"job {job_id} does not exist (or its record has expired)")
    if record.state not in (REVIEW, REJECTED):
        raise LedgerConflict(f"job {job_id} is {record.state}, not review or rejected")
    newer = book.newer_delivered(record)
    if newer is not None and not force:
        raise NewerDelivered(
            f"job {newer.job_id}, submitted after job {job_id} for the same record, was "
            f"delivered at {_iso(newer.at_ms)}: requeueing {job_id} would overwrite its newer "
            'data. Requeue with force (CLI --force, HTTP "force": true) to send it anyway.'
        )
    data = apply_changes(record.kind, json.loads(unseal(record.payload)), changes)
    job = validate_job(record.kind, data)
    window_ms = int(get_settings().retry.window_s * 1000)
    entry = {"event": "requeued", "by": by, "edited": ",".join(sorted(changes)) or "-"}
    if force:
        entry["force"] = "1"
    _, state = book.transition_to(
        job_id,
        QUEUED,
        entry,
        allowed=(REVIEW, REJECTED),
        fields={
            "payload": seal(job.model_dump_json()),
            "faults": 0,
            "retries": 0,
            "retry_until_ms": now_ms() + window_ms,
            "force": "1" if force else "",
            # The payload as the operator left it is what it sends now: not parts to merge again.
            "carried": "",
        },
    )
    return state


def apply_changes(kind: str, data: dict[str, Any], changes: dict[str, str]) -> dict[str, Any]:
    """``data`` (a job's payload as stored) with an operator's text edits applied: a name of the
    job model (``disposition`` or its wire name ``njDisposition``) sets that field, a dotted
    path (``contact.first_name``) a field of a nested object, and any other name a lead field
    (``fields.NAME``). Text that replaces a number or a boolean is read as JSON when it is one
    (``"41"`` → 41), so a strict field can be edited from a form; anything else stays text and
    validation says what is wrong."""
    model = model_for(kind)
    names = {alias: name for name, f in model.model_fields.items() for alias in (name, f.alias)}
    for key, text in changes.items():
        head, _, rest = key.partition(".")
        head = names.get(head, head)
        if key in names:
            parent, leaf = data, names[key]
        elif rest and isinstance(data.get(head), dict) and head in model.model_fields:
            parent, leaf = data[head], rest
        else:
            parent, leaf = data.setdefault("fields", {}), key.removeprefix("fields.")
        parent[leaf] = _typed(parent.get(leaf), text)
    return data


def _typed(current: Any, text: str) -> Any:
    """``text`` as the type of the value it replaces, when it reads as one."""
    if isinstance(current, bool | int | float) and not isinstance(current, str):
        try:
            value = json.loads(text)
        except ValueError:
            return text
        if isinstance(value, bool | int | float):
            return value
    return text


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def discard(job_id: str, reason: str, by: str) -> None:
    """Give up on a job in review: it ends ``rejected`` with the operator's reason."""
    if not reason.strip():
        raise ValueError("a reason is required to discard a job")
    entry = {
        "event": "discarded",
        "by": by,
        "code": "discarded",
        "reason": f"discarded by {by}: {reason}",
    }
    ledger().transition(job_id, REJECTED, entry, allowed=(REVIEW,))


__all__ = [
    "JobValidationError",
    "LedgerConflict",
    "NewerDelivered",
    "apply_changes",
    "discard",
    "requeue",
]
