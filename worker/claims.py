"""Keeping a worker's claims on its running jobs alive.

A claim is a lease (``Ledger.lease_ms``): while a job runs, one thread per process renews every
claim the process holds, every third of the lease. A killed worker stops renewing, and its jobs
are queued again within one lease (``Ledger.reap``, run by every worker's republisher), so the
jobs held behind them on the same record wait that long, not kombu's visibility timeout.
"""

from __future__ import annotations

import logging
import threading

from worker.ledger import Ledger

log = logging.getLogger(__name__)


class ClaimKeeper:
    """Renews the claims this process holds on one thread (started on first use)."""

    _process: ClaimKeeper | None = None
    _process_lock = threading.Lock()

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._held: dict[str, str] = {}
        self._settling: set[str] = set()
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

    def settling(self, job_id: str) -> None:
        """The job is about to give its claim up (it settles, or goes back to its queue): keep
        renewing it until it has, but a claim found gone from now on was given up, not lost."""
        with self._lock:
            if job_id in self._held:
                self._settling.add(job_id)

    def renew_once(self) -> list[str]:
        """Renew every held claim; returns (and forgets) the ids whose claim was already gone."""
        with self._lock:
            held = dict(self._held)
        try:
            lost = self.ledger.renew(held)
        except Exception as exc:  # keep renewing: this thread must not die
            log.warning("could not renew the claims of %d running job(s): %s", len(held), exc)
            return []
        with self._lock:  # a job that settled meanwhile gave its claim up: nothing was lost
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
        stop = threading.Event()
        while True:
            # A timer, not synchronisation: claims must be renewed well before they expire.
            stop.wait(interval_s)
            with self._lock:
                if not self._held:
                    continue
            self.renew_once()
