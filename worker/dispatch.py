"""Publishing a recorded job's message: the one place a job's message is made or sent.

The message carries only the job id; the payload stays in the ledger, so no personal data ever
reaches a task argument, Flower or a worker log. The Celery task id is the job id, so Flower shows
one row per job across its retries.

New jobs are pushed by the ledger's own ``create.lua``, in the same atomic step that records
them (no window in which a job is recorded but not queued, and one round trip for a thousand
jobs): ``Messages`` renders, for that, exactly what ``send_task`` would put on kombu's Redis
list. Retries and requeues go through ``publish`` (Celery itself).
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass

from celery import Celery

from worker.app import PRIORITY

_ID, _TAG, _BODY = "@@job-id@@", "@@delivery-tag@@", "@@body@@"
#: A task message's body, ``json.dumps([[job_id], {}, embed])``, for a job id of hex digits.
_BODY_JSON = '[["%s"], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'


def publish(app: Celery, job_id: str, task: str, queue: str, priority: str) -> None:
    app.send_task(
        task, args=[job_id], task_id=job_id, queue=queue, priority=PRIORITY[priority]
    )


def queue_key(app: Celery, queue: str, priority: str) -> str:
    """The Redis list kombu's Redis transport keeps ``queue``'s messages of ``priority`` in
    (``Channel._q_for_pri``: the queue's name for the first priority step, ``name{sep}{step}``
    for the others)."""
    options = app.conf.broker_transport_options
    steps = sorted(options.get("priority_steps", [0, 3, 6, 9]))
    step = max(s for s in steps if s <= PRIORITY[priority])
    prefix = options.get("global_keyprefix", "")
    return f"{prefix}{queue}{options.get('sep', chr(6)) if step else ''}{step or ''}"


def delivery_tag() -> str:
    """A fresh tag for kombu's unacknowledged-message bookkeeping: 128 random bits written like
    the uuid4 kombu makes (``uuid.uuid4()`` itself costs a backfill 3 µs a job)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class Message:
    """One rendered message: the list it goes on and its text."""

    key: str
    text: str


class Messages:
    """Renders Celery task messages as the Redis transport stores them, from a template made
    once per (task, queue, priority) by Celery's own ``as_task_v2``, so the headers are the ones
    this Celery version writes. Only the job id, the body and kombu's delivery tag vary."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._templates: dict[tuple[str, str, str], tuple[str, list[str], list[str]]] = {}

    def render(self, job_id: str, task: str, queue: str, priority: str) -> Message:
        key, parts, slots = self._template(task, queue, priority)
        values = {
            _ID: job_id, _TAG: delivery_tag(),
            _BODY: base64.b64encode((_BODY_JSON % job_id).encode()).decode(),
        }
        text = [parts[0]]
        for slot, part in zip(slots, parts[1:], strict=True):
            text += (values[slot], part)
        return Message(key, "".join(text))

    def _template(self, task: str, queue: str, priority: str) -> tuple[str, list[str], list[str]]:
        """The list and the template's text cut at its placeholders: (key, parts, the
        placeholder between each two parts)."""
        found = self._templates.get((task, queue, priority))
        if found is None:
            made = self.app.amqp.as_task_v2(
                _ID, task, args=[_ID], reply_to=self.app.thread_oid,
                argsrepr=f"['{_ID}']", kwargsrepr="{}",
            )  # fmt: skip
            message = {
                "body": _BODY,
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": made.headers,
                "properties": {
                    **made.properties, "delivery_mode": 2,
                    "delivery_info": {"exchange": "", "routing_key": queue},
                    "priority": PRIORITY[priority], "body_encoding": "base64",
                    "delivery_tag": _TAG,
                },
            }  # fmt: skip
            pieces = re.split(f"({re.escape(_ID)}|{re.escape(_TAG)}|{re.escape(_BODY)})",
                              json.dumps(message))  # fmt: skip
            found = (queue_key(self.app, queue, priority), pieces[0::2], pieces[1::2])
            self._templates[(task, queue, priority)] = found
        return found
