"""Celery's worker consumer, with its task events for Flower sent in batches.

A worker buffers its task events (received, started, succeeded, and ours: retried, review,
deadletter, superseded) and Celery's consumer publishes the buffer as soon as its event loop
comes round, which at a steady load is about once per event: 1.8 PUBLISH a delivered job, each
through kombu's whole producer path (message, headers, serializer, fanout). That was 17 % of a
worker's CPU against a destination that answers at once (py-spy, ``python -m bench cost``).

This consumer publishes the buffer at most every ``EVENT_FLUSH_S`` instead (and at once when it
holds Celery's ``buffer_limit`` of 24 events, as before). Flower sees each event at most that
much later, which no one watching it can tell; the events and their order are unchanged. The
buffer is published too when the consumer shuts down, so a warm shutdown loses none.
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from vine import promise

#: The longest a task event waits in the worker before it is published for Flower.
EVENT_FLUSH_S = 0.1


class Consumer(CeleryConsumer):
    """``worker_consumer``: Celery's consumer, with task events published in batches."""

    hub: Any
    # Set by any thread that buffers an event while no publish is scheduled; cleared by the loop
    # thread just before it publishes, so an event buffered during a publish schedules the next.
    _flush_scheduled = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._schedule_flush_promise = promise(self._schedule_flush)

    def on_send_event_buffered(self) -> None:
        if self.hub and not self._flush_scheduled:
            # (Two threads may both get here: the second publish finds little or nothing.)
            self._flush_scheduled = True
            self.hub.call_soon(self._schedule_flush_promise)

    def _schedule_flush(self) -> None:  # in the event loop's thread: its timer is not shared
        self.hub.call_later(EVENT_FLUSH_S, self._flush_batch)

    def _flush_batch(self) -> None:
        self._flush_scheduled = False
        self._flush_events()

    def shutdown(self) -> None:
        self._flush_events()
        super().shutdown()
