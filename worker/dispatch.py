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


def publish_many(app: Celery, jobs: list[tuple[str, str, str, str]]) -> None:
    """Publish (job id, task, queue, priority) messages through one producer, batched by kombu
    into pipelines of Redis commands (kombu's ``Producer.batch``)."""
    with app.producer_or_acquire() as producer, producer.batch(max_size=1000):
        for job_id, task, queue, priority in jobs:
            app.send_task(task, args=[job_id], task_id=job_id, queue=queue,
                          priority=PRIORITY[priority], producer=producer)  # fmt: skip
