"""The rounds every worker makes besides delivering: it queues again the jobs whose time has
come (due retries, a paused destination's jobs, jobs recorded to be sent later; all on the
ledger's ``schedule``), the jobs whose worker died while running them (their claim's lease ran
out), and, once every ``RECONCILE_S`` for the fleet, the messages lost in transit; it also feeds
a backlog onto the broker lists as they empty.

Retries wait in Redis, not in a worker's memory: a Celery countdown on Redis is held by the worker
that fetched it and redelivered only after ``visibility_timeout``. Every step is one script of
the ledger, safe to run from every worker at once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, bootsteps

from worker import liveness
from worker.aof import AofRewriter
from worker.ledger import Ledger, now_ms

log = logging.getLogger(__name__)

TICK_S = 0.5
#: How often one worker of the fleet checks each queue for lost messages.
RECONCILE_S = 5.0
#: How long a message may be between the broker list and the unacked index (a BRPOP answer on
#: its way to the worker, and the index brought up to date within worker/transport.py's
#: ``REPORT_S``) before its job is found to have none. A worker may also hold a message it took
#: without claiming its job (all its threads busy, at a full gate): the ordinary round leaves
#: it that long, up to kombu's visibility timeout (``Republisher.held_ms``).
TRANSIT_GRACE_MS = 10_000
#: How often one worker of the fleet looks for dead worker processes (worker/liveness.py).
SWEEP_MS = 400
#: For this long after a worker was found dead, every round reconciles every queue with
#: ``QUICK_GRACE_MS`` instead of ``TRANSIT_GRACE_MS``: the messages the dead worker had taken
#: but not claimed (or was taking) are sent again within seconds, not ten. A live worker
#: usually claims a message within milliseconds of taking it; one slower than this (its threads
#: busy) gets a duplicate, which its claim drops.
QUICK_WINDOW_MS = 4_000
QUICK_GRACE_MS = 1_000
QUICK_TURN_MS = int(TICK_S * 1000)
#: A job is sent again only if its message was missing at two rounds at least this far apart:
#: a message BRPOP has just answered is on neither the list nor the unacked index until its
#: channel's next report (``REPORT_S``, less than this), however long it had waited on the list
#: (a backlog at a full gate).
#: Less than ``QUICK_TURN_MS``, so two quick rounds in a row can confirm a dead worker's.
CONFIRM_MS = 400
#: Every this many ticks (a minute), forget rejected jobs whose records have expired.
PRUNE_EVERY_TICKS = 120
#: Every this many ticks (10 s), see whether the fleet's AOF rewrite is due (``worker/aof.py``).
AOF_EVERY_TICKS = 20


class Republisher:
    """One pass (``run_once``) makes every round; ``run`` repeats it every ``TICK_S``."""

    def __init__(
        self, app: Celery, ledger: Ledger, queues: list[str], aof: AofRewriter | None = None
    ) -> None:
        self.app = app
        self.ledger = ledger
        self.queues = queues
        self.aof = aof
        options = app.conf.broker_transport_options or {}
        self.unacked_key = (
            f"{options.get('global_keyprefix', '')}{options.get('unacked_key', 'unacked')}"
        )
        # A message a live worker holds without claiming its job (its threads all busy) counts
        # as with it up to kombu's visibility timeout (one held longer is sent again, and a
        # claim drops one of the two). A dead worker's are found within seconds of its death
        # (the quick round above), so the ordinary round waits that long before it sends one
        # again.
        visibility_ms = int(float(options.get("visibility_timeout", 0)) * 1000)
        self.held_ms = max(TRANSIT_GRACE_MS, 3 * ledger.lease_ms, visibility_ms)
        self.stopped = threading.Event()

    def run_once(self) -> int:
        """Queue due jobs and dead workers' jobs, and reconcile the queues whose turn it is;
        returns how many jobs were queued again."""
        queued = self.ledger.due()
        reaped = self.ledger.reap()
        if self.ledger.r.set(f"{self.ledger.prefix}sweep", "1", nx=True, px=SWEEP_MS):
            dead = liveness.sweep(self.ledger.r, self.ledger.prefix, self._reap_dead)
            if dead:
                self.ledger.r.set(f"{self.ledger.prefix}died", "1", px=QUICK_WINDOW_MS)
                log.warning(
                    "worker process(es) %s died: their permits and jobs are back", ", ".join(dead)
                )
        if reaped:
            log.warning(
                "queued %d job(s) again whose worker stopped renewing its claim (killed?): %s",
                len(reaped),
                ", ".join(reaped[:10]),
            )
        lost: list[str] = []
        quick = bool(self.ledger.r.exists(f"{self.ledger.prefix}died"))
        for queue in self.queues:
            turn = f"{self.ledger.prefix}reconcile:{queue}"
            if quick and self.ledger.r.set(f"{turn}:quick", "1", nx=True, px=QUICK_TURN_MS):
                # A worker died just now: what it had taken comes back within seconds (one
                # worker of the fleet a round).
                lost += self.ledger.reconcile(
                    queue, QUICK_GRACE_MS, self.unacked_key, QUICK_GRACE_MS, CONFIRM_MS
                )[1]
            elif not quick and self.ledger.r.set(turn, "1", nx=True, px=int(RECONCILE_S * 1000)):
                lost += self.ledger.reconcile(
                    queue, TRANSIT_GRACE_MS, self.unacked_key, self.held_ms, CONFIRM_MS
                )[1]
            else:
                self.ledger.feed(queue)
        if lost:
            log.warning(
                "sent again %d job(s) whose message was lost in transit (a worker killed "
                "as it took it?): %s",
                len(lost),
                ", ".join(lost[:10]),
            )
        return len(queued) + len(reaped) + len(lost)

    def forget_old_takes(self) -> None:
        """Drop the unacked index's entries older than ``held_ms``: messages a killed worker
        held (nobody acks them; reconcile no longer counts them as with a worker either)."""
        self.ledger.r.zremrangebyscore(
            f"{self.unacked_key}_index", "-inf", (now_ms() - self.held_ms) / 1000
        )

    def _reap_dead(self, dead: list[str]) -> None:
        reaped = self.ledger.reap(dead=dead)
        if reaped:
            log.warning(
                "queued %d job(s) of dead worker(s) again: %s", len(reaped), ", ".join(reaped[:10])
            )

    def run(self) -> None:
        ticks = 0
        while not self.stopped.is_set():
            try:
                self.run_once()
                if ticks % PRUNE_EVERY_TICKS == 0:
                    self.ledger.prune_rejected()
                    self.forget_old_takes()
                if self.aof is not None and ticks % AOF_EVERY_TICKS == 0:
                    self.aof.check()
            except Exception:  # keep going: a Redis blip must not stop retries for good
                log.exception("republisher pass failed; trying again in %s s", TICK_S)
            ticks += 1
            self.stopped.wait(TICK_S)


def store_templates(app: Celery, ledger: Ledger, queues: list[str]) -> None:
    """Store the message template of every queue and priority, so that the ledger's scripts can
    queue any job (``create`` stores those of the jobs it records, but a worker may meet a
    queue first)."""
    from worker.app import PRIORITY
    from worker.dispatch import Messages

    messages = Messages(app)
    ledger.store_templates(
        [
            (queue, priority, messages.template(f"{queue}.deliver", queue, priority))
            for queue in queues
            for priority in PRIORITY
        ]
    )


class RepublisherStep(bootsteps.StartStopStep):
    """Runs a ``Republisher`` thread inside every worker process."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.republisher: Republisher | None = None
        self.thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        from worker.app import destinations
        from worker.broker import redis_url
        from worker.runtime import ledger
        from worker.settings import get_settings

        queues = destinations()
        store_templates(parent.app, ledger(), queues)
        settings = get_settings()
        liveness.Heartbeat(redis_url(), settings.key_prefix).start()
        aof = AofRewriter(ledger().r, settings.key_prefix, settings.aof_rewrite_after_deliveries)
        self.republisher = Republisher(parent.app, ledger(), queues, aof)
        self.thread = threading.Thread(
            target=self.republisher.run, name="contactsync-republisher", daemon=True
        )
        self.thread.start()

    def stop(self, parent: Any) -> None:
        if self.republisher is not None and self.thread is not None:
            self.republisher.stopped.set()
            self.thread.join(timeout=5)
