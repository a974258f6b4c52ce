"""The Celery app: broker, queues, serialization, acknowledgement and events.

``celery -A worker worker`` and ``celery -A worker flower`` use it as any Celery user expects.
One queue per registered destination (``worker/destinations.py``), named after it; realtime
jobs use kombu's priority 0 and bulk jobs priority 9 inside that queue, so realtime is always
fetched first.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from celery import Celery, signals
from kombu.entity import Queue
from pydantic import ValidationError
from pydantic_settings import SettingsError

from worker import requeue_log
from worker.broker import broker_url
from worker.destinations import names, registry
from worker.logs import configure as configure_logs
from worker.logs import use_format
from worker.sentinel import is_sentinel_url
from worker.sentinel import parse as parse_sentinel_url
from worker.settings import exit_for_settings, get_settings

#: kombu priority of each job priority; the Redis transport serves lower numbers first.
PRIORITY = {"realtime": 0, "bulk": 9}


def destinations() -> list[str]:
    """Destination names, sorted: every module that declares a ``Destination`` (a helper module
    in ``tasks/`` declares none, so it gets no queue)."""
    return names()


def _flower_defaults() -> None:
    # Flower reads its options from FLOWER_* variables and its command line, never from the app;
    # giving it ours here is what lets `celery -A worker flower` run with the settings alone.
    flower = get_settings().flower
    if flower.password is not None:
        secret = flower.password.get_secret_value()
        os.environ.setdefault("FLOWER_BASIC_AUTH", f"{flower.user}:{secret}")
    os.environ.setdefault("FLOWER_PORT", str(flower.port))


def broker_settings() -> dict[str, Any]:
    """``broker_url`` and ``broker_transport_options`` from the settings. A ``sentinel://`` URL
    becomes kombu's Sentinel transport (``worker.sentinel_transport``): one ``sentinel://`` per
    sentinel joined by ``;``, the service as ``master_name``, the sentinels' own options as
    ``sentinel_kwargs``."""
    url = broker_url()
    options: dict[str, Any] = {
        "visibility_timeout": get_settings().visibility_timeout_s,
        "priority_steps": sorted(PRIORITY.values()),
        "sep": ":",
        # Check for the messages of dead workers every 10 s, not every 100 s.
        "unacked_restore_throttle": 1,
    }
    # kombu's Redis transport, one client object a channel (worker/transport.py); rediss://
    # keeps kombu's own, which is where kombu turns that scheme into TLS.
    transport = "worker.transport:Transport" if url.startswith("redis://") else None
    if is_sentinel_url(url):
        where = parse_sentinel_url(url)
        url = where.kombu_url()
        options.update(where.kombu_transport_options())
        transport = "worker.sentinel_transport:Transport"
    return {"broker_url": url, "broker_transport_options": options, "broker_transport": transport}


def make_app() -> Celery:
    settings = get_settings()
    queues = destinations()
    celery = Celery("contactsync", include=[d.module for d in registry()])
    celery.conf.update(
        **broker_settings(),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        # At least once: the message is acknowledged only after the job settled in the ledger.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # No task has a rate limit (the gates limit calls in flight), so skip the token buckets.
        worker_disable_rate_limits=True,
        # The ledger is the record of every job; no result backend to fill.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        worker_send_task_events=True,
        # Task events go to Flower in batches, at most 0.1 s late (worker/consumer.py).
        worker_consumer="worker.consumer:Consumer",
        task_send_sent_event=True,
        task_queues=[Queue(name) for name in queues],
        task_default_queue=queues[0] if queues else "celery",
        task_create_missing_queues=False,
        # Delivery is I/O: threads keep many calls in flight for little memory.
        worker_pool="threads",
        worker_concurrency=settings.worker_concurrency,
        worker_hijack_root_logger=True,
    )
    return celery


@signals.worker_init.connect
def _prompt_thread_switches(**_: Any) -> None:
    # A thread woken by I/O (a permit handed over, an answer from the PBX) waits for the GIL
    # until the running thread yields it, by default up to 5 ms. A freed PBX slot stays idle
    # that long; 1 ms keeps the hand-off prompt at a small cost in throughput of Python code.
    sys.setswitchinterval(0.001)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _json_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    # CONTACTSYNC_LOG_FORMAT=json: the handlers Celery just set up write one JSON object a line.
    if logger is not None:
        use_format(logger, get_settings().log_format)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _quiet_http_logs(**_: Any) -> None:
    # httpx logs every request URL at INFO, and Noojee's apiKey travels in the URL.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Celery logs two INFO lines per message ("received", "succeeded in"): they say nothing the
    # one line per job that settles (tasks/delivery.py) does not, and cost 5 % of a worker's CPU
    # against a destination that answers at once. Kept at --loglevel DEBUG.
    debugging = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(logging.NOTSET if debugging else logging.WARNING)
    # A job that found its gate full goes back to its queue: a summary, not a traceback each.
    requeue_log.install()


def _build() -> Celery:
    """The app, or exit with the one-line message `contactsync` prints for the same bad
    setting: `celery -A worker ...` imports this module while loading ``-A``, where a pydantic
    error would surface as a traceback of Celery's import machinery."""
    try:
        if get_settings().log_format == "json":
            # JSON from the first line: what is logged (or warned, e.g. Celery's warning about
            # running as root) before Celery sets up its logging would otherwise be plain text.
            configure_logs("json", logging.WARNING)
            logging.captureWarnings(True)
        _flower_defaults()
        return make_app()
    except (ValidationError, SettingsError) as exc:
        exit_for_settings(exc)


_quiet_http_logs()
app = _build()

from worker.metrics import MetricsStep  # noqa: E402
from worker.republisher import RepublisherStep  # noqa: E402  (needs `app` defined)

app.steps["worker"].add(RepublisherStep)
app.steps["worker"].add(MetricsStep)
