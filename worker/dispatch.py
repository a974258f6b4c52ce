"""Publishing a recorded job's message: the one place a job's message is made or sent.

The message carries only the job id; the payload stays in the ledger, so no personal data ever
reaches a task argument, Flower or a worker log. The Celery task id is the job id, so Flower shows
one row per job across its retries.

Every message is pushed by one of the ledger's scripts, in the same atomic step that changes the
job's state (no window in which a job is queued without a message, and one round trip for a
thousand new jobs), from a ``Template`` of what ``send_task`` would put on kombu's Redis list,
stored in Redis for the scripts (``message:{queue}:{priority}``). Its delivery tag is the job id
and when it was pushed (``{id}.{ms}``): ``reconcile.lua`` finds a queue's jobs in the unacked
index by it, and no two messages of one job share a tag (see ``Messages``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from celery import Celery

from worker.app import PRIORITY

#: Where a template has the job id (the id is 32 hex digits: nothing in it needs escaping).
JOB_ID = "@@job@@"
#: Where a template's delivery tag has when the message was pushed (ms).
PUSHED = "@@pushed@@"


def queue_key(app: Celery, queue: str, priority: str) -> str:
    """The Redis list kombu's Redis transport keeps ``queue``'s messages of ``priority`` in
    (``Channel._q_for_pri``: the queue's name for the first priority step, ``name{sep}{step}``
    for the others)."""
    options = app.conf.broker_transport_options
    steps = sorted(options.get("priority_steps", [0, 3, 6, 9]))
    step = max(s for s in steps if s <= PRIORITY[priority])
    prefix = options.get("global_keyprefix", "")
    return f"{prefix}{queue}{options.get('sep', chr(6)) if step else ''}{step or ''}"


@dataclass(frozen=True)
class Template:
    """A job's Celery message as kombu's Redis transport stores it, with ``JOB_ID`` for the job
    id, and the list it goes on. ``lua/create.lua`` fills it in as it records the job."""

    key: str
    text: str

    def fill(self, job_id: str, pushed_ms: int = 0) -> str:
        """The message of ``job_id`` pushed at ``pushed_ms`` (what ledger_lib.lua's push
        makes)."""
        return self.text.replace(JOB_ID, job_id).replace(PUSHED, str(pushed_ms))


class Messages:
    """Message templates, one per (task, queue, priority), made by Celery's own ``as_task_v2``,
    so the headers are the ones this Celery version writes.

    Two things differ from ``send_task``'s messages, both read the same by kombu: the body is
    the JSON text itself rather than its base64 (no body encoding: Lua in Redis has no
    base64), and kombu's delivery tag is the job id and when the message was pushed. Tags must
    differ between two messages of one job: kombu acks a rejected message in a second round
    trip after putting it back, and with a shared tag that ack could erase the unacked record
    of the job's next message, which another worker has just taken (and the next reject of it
    would then put nothing back)."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._templates: dict[tuple[str, str, str], Template] = {}

    def template(self, task: str, queue: str, priority: str) -> Template:
        found = self._templates.get((task, queue, priority))
        if found is None:
            made = self.app.amqp.as_task_v2(
                JOB_ID,
                task,
                args=[JOB_ID],
                reply_to=self.app.thread_oid,
                argsrepr=f"['{JOB_ID}']",
                kwargsrepr="{}",
                ignore_result=None,
            )
            message = {
                "body": json.dumps(made.body),
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": made.headers,
                "properties": {
                    **made.properties,
                    "delivery_mode": 2,
                    "delivery_info": {"exchange": "", "routing_key": queue},
                    "priority": PRIORITY[priority],
                    "delivery_tag": f"{JOB_ID}.{PUSHED}",
                },
            }
            found = Template(queue_key(self.app, queue, priority), json.dumps(message))
            self._templates[(task, queue, priority)] = found
        return found
