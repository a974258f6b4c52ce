"""Publishing a recorded job's message: the one place a job is put on its queue.

The message carries only the job id; the payload stays in the ledger, so no personal data ever
reaches a task argument, Flower or a worker log. The Celery task id is the job id, so Flower shows
one row per job across its retries.
"""

from __future__ import annotations

from celery import Celery

from worker.app import PRIORITY


def publish(app: Celery, job_id: str, task: str, queue: str, priority: str) -> None:
    app.send_task(
        task, args=[job_id], task_id=job_id, queue=queue, priority=PRIORITY[priority]
    )
