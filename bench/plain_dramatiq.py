"""Plain Dramatiq, the cost benchmark's second baseline (``bench/cost.py``): one actor on the
same Redis making the same HTTP call as contactsync's Noojee delivery (``bench/plain_call.py``),
the job's data in the message, Dramatiq's defaults otherwise (its default middleware, prefetch
of twice the threads, polling an empty queue with backoff).

Run by the benchmark as ``dramatiq bench.plain_dramatiq -p 4 -t 8 -Q noojee`` (a parent that
forks the worker processes); the broker is ``BENCH_REDIS_URL``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench import plain_call

REDIS_URL_VARIABLE = "BENCH_REDIS_URL"
QUEUE = "noojee"

# Dramatiq's workers log at INFO; httpx would log every request there (the apiKey in its URL).
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def _update_lead(params: dict[str, Any], body: dict[str, Any]) -> None:
    # Returns nothing: Dramatiq logs a warning for every value an actor returns without the
    # Results middleware, work a plain actor would not do.
    plain_call.update_lead(params, body)


def make_actor(redis_url: str) -> dramatiq.Actor[Any, Any]:
    """The actor on a broker of its own on ``redis_url`` (``actor.broker``); ``actor.send``
    queues a job. No retries: the benchmark's simulator answers every call 0."""
    declare = dramatiq.actor(
        actor_name="update_lead", queue_name=QUEUE, max_retries=0, broker=RedisBroker(url=redis_url)
    )
    return declare(_update_lead)


#: For ``dramatiq bench.plain_dramatiq`` (it takes the module's ``broker``); a placeholder URL
#: when imported elsewhere (nothing connects until a message is sent).
update_lead = make_actor(os.environ.get(REDIS_URL_VARIABLE, "redis://127.0.0.1:6379/0"))
broker = update_lead.broker
dramatiq.set_broker(broker)
