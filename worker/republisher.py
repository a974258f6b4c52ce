"""Puts jobs whose time has come back on their queues: due retries, requeued jobs and jobs
recorded to be published later, all on the ledger's ``schedule``; and jobs whose worker died
while running them (their claim's lease ran out: ``Ledger.reap``).

Retries wait in Redis, not in a worker's memory: a Celery countdown on Redis is held by the worker
that fetched it and redelivered only after ``visibility_timeout``. Every worker runs one
republisher; ``claim_due.lua`` leases each due job to one of them.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, bootsteps

from worker.ledger import HELD, Ledger

log = logging.getLogger(__name__)

TICK_S = 0.5
LEASE_MS = 30_000
#: Every this many ticks (a minute), forget rejected jobs whose records have expired.
PRUNE_EVERY_TICKS = 120


class Republisher:
    """One pass publishes every due job; ``run`` repeats it every ``TICK_S`` until stopped."""

    def __init__(self, app: Celery, ledger: Ledger) -> None:
        self.app = app
        self.ledger = ledger
        self.stopped = threading.Event()

    def run_once(self) -> int:
        from worker.dispatch import publish

        sent = 0
        for job_id in self.ledger.claim_due("schedule", LEASE_MS):
            record = self.ledger.get(job_id)
            if record is not None and not record.terminal and record.state != HELD:
                publish(self.app, job_id, record.task, record.queue, record.priority)
                sent += 1
            self.ledger.release("schedule", job_id)
        reaped = self.ledger.reap()
        if reaped:
            log.warning("queued %d job(s) again whose worker stopped renewing its claim (killed?): "
                        "%s", len(reaped), ", ".join(reaped[:10]))  # fmt: skip
        return sent + len(reaped)

    def run(self) -> None:
        ticks = 0
        while not self.stopped.is_set():
            try:
                self.run_once()
                if ticks % PRUNE_EVERY_TICKS == 0:
                    self.ledger.prune_rejected()
            except Exception:  # keep going: a Redis blip must not stop retries for good
                log.exception("republisher pass failed; trying again in %s s", TICK_S)
            ticks += 1
            self.stopped.wait(TICK_S)


class RepublisherStep(bootsteps.StartStopStep):
    """Runs a ``Republisher`` thread inside every worker process."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.republisher: Republisher | None = None
        self.thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        from worker.runtime import ledger

        self.republisher = Republisher(parent.app, ledger())
        self.thread = threading.Thread(
            target=self.republisher.run, name="contactsync-republisher", daemon=True
        )
        self.thread.start()

    def stop(self, parent: Any) -> None:
        if self.republisher is not None and self.thread is not None:
            self.republisher.stopped.set()
            self.thread.join(timeout=5)
