"""Keeping a worker's claims on its running jobs alive.

A claim is a lease (``Ledger.lease_ms``): while a job runs, one thread per process renews every
claim the process holds, every third of the lease. A killed worker stops renewing, and its jobs
are queued again within one lease (``Ledger.reap``, run by every worker's republisher), so the
jobs held behind them on the same record wait that long, not kombu's visibility timeout.

The same thread tells the ledger which running jobs are calling their destination (holding a
permit, their call under way) rather than waiting at the gate: a call that has run for
``CALLING_AFTER_MS`` is marked, with the time it started, at the thread's next round. A call
that ends sooner is never written: nearly every call, which spares each job a command and a
round trip, while the console still tells a stuck call from a job waiting for a permit.
"""

from __future__ import annotations

import logging
import threading
import time

from worker.ledger import Ledger, now_ms

log = logging.getLogger(__name__)

#: A call that has run this long is marked as calling in the ledger (within one more second).
CALLING_AFTER_MS = 1000


class ClaimKeeper:
    """Renews the claims this process holds on one thread (started on first use)."""

    _process: ClaimKeeper | None = None
    _process_lock = threading.Lock()

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._held: dict[str, str] = {}
        self._settling: set[str] = set()
        self._calling: dict[str, int] = {}  # job id -> when its call started (ms), not written
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_process(cls, ledger: Ledger) -> ClaimKeeper:
        with cls._process_lock:
            if cls._process is None or cls._process.ledger is not ledger:
                cls._process = cls(ledger)
            return cls._process

    def hold(self, job_id: str, token: str) -> None:
        with self._lock:
            self._held[job_id] = token
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="contactsync-claim-keeper", daemon=True
                )
                self._thread.start()

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._held.pop(job_id, None)
            self._settling.discard(job_id)
            self._calling.pop(job_id, None)

    def calling(self, job_id: str, at_ms: int) -> None:
        """The job's call started at ``at_ms`` (it holds its permit): marked in the ledger once
        it has run ``CALLING_AFTER_MS``."""
        with self._lock:
            if job_id in self._held:
                self._calling[job_id] = at_ms

    def called(self, job_id: str) -> None:
        """The call has its answer: if it was never marked, it will not be."""
        with self._lock:
            self._calling.pop(job_id, None)

    def settling(self, job_id: str) -> None:
        """The job is about to give its claim up (it settles, or goes back to its queue): keep
        renewing it until it has, but a claim found gone from now on was given up, not lost."""
        with self._lock:
            if job_id in self._held:
                self._settling.add(job_id)

    def due_marks(self, now: int) -> dict[str, int]:
        """The calls that have run ``CALLING_AFTER_MS`` and are not marked yet."""
        with self._lock:
            return {
                job_id: at for job_id, at in self._calling.items() if now - at >= CALLING_AFTER_MS
            }

    def renew_once(self, marks: dict[str, int] | None = None) -> list[str]:
        """Renew every held claim, and mark the calls in ``marks`` (job id -> when the call
        started) as calling; returns (and forgets) the ids whose claim was already gone."""
        with self._lock:
            held = dict(self._held)
        marks = {job_id: at for job_id, at in (marks or {}).items() if job_id in held}
        try:
            lost = self.ledger.renew(held, marks)
        except Exception as exc:  # keep renewing: this thread must not die
            log.warning("could not renew the claims of %d running job(s): %s", len(held), exc)
            return []
        with self._lock:
            for job_id, at in marks.items():  # marked, unless a new call of it started meanwhile
                if self._calling.get(job_id) == at:
                    del self._calling[job_id]
            # A job that settled meanwhile gave its claim up: nothing was lost.
            lost = [
                job_id
                for job_id in lost
                if self._held.get(job_id) == held[job_id] and job_id not in self._settling
            ]
            for job_id in lost:
                del self._held[job_id]
        for job_id in lost:
            log.warning(
                "job %s: this worker's claim expired while it ran (the job may run elsewhere now)",
                job_id,
            )
        return lost

    def _run(self) -> None:
        interval_s = self.ledger.lease_ms / 3000
        tick_s = min(interval_s, CALLING_AFTER_MS / 1000)
        renewed = time.monotonic()
        stop = threading.Event()
        while True:
            # A timer, not synchronisation: claims must be renewed well before they expire, and
            # long calls marked within a second or so.
            stop.wait(tick_s)
            with self._lock:
                if not self._held:
                    continue
            marks = self.due_marks(now_ms())
            if marks or time.monotonic() - renewed >= interval_s - tick_s / 2:
                renewed = time.monotonic()
                self.renew_once(marks)
