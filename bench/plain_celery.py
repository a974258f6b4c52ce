"""Plain Celery, the cost benchmark's baseline (``bench/cost.py``): one app on the same Redis,
one task that makes the same HTTP call as contactsync's Noojee delivery (``bench/plain_call.py``),
with the job's data in the message, as a Celery user without contactsync would write it.

At least once like contactsync (``task_acks_late``, prefetch 1), the threads pool; everything
else is Celery's default (no result backend, no task events). Run by the benchmark as
``celery -A bench.plain_celery worker -Q noojee --pool threads -c 8``; the broker is
``BENCH_REDIS_URL``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals

from bench import plain_call

REDIS_URL_VARIABLE = "BENCH_REDIS_URL"
TASK_NAME = "plain.update_lead"
QUEUE = "noojee"


def make_app(redis_url: str) -> Celery:
    """The app on ``redis_url``, its task registered (``app.tasks[TASK_NAME]``). Not the
    current app: the benchmark's own process also holds contactsync's."""
    app = Celery("plain", broker=redis_url, set_as_current=False)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=QUEUE,
        worker_pool="threads",
    )

    @app.task(name=TASK_NAME, shared=False)
    def update_lead(params: dict[str, Any], body: dict[str, Any]) -> None:
        plain_call.update_lead(params, body)  # nothing returned, as the Dramatiq actor

    return app


@signals.after_setup_logger.connect
def _quiet_http_logs(**_: Any) -> None:
    # As contactsync's workers do: httpx logs every request at INFO (the apiKey in its URL).
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


#: For ``celery -A bench.plain_celery``; a placeholder URL when imported elsewhere (nothing
#: connects until a message is sent).
app = make_app(os.environ.get(REDIS_URL_VARIABLE, "redis://127.0.0.1:6379/0"))
