"""Quiet requeues: a job that got no gate permit within its wait goes back to its queue.

That is normal operation at a full gate, not an error; but Celery logs every ``Reject`` as a
WARNING with a traceback (``celery.app.trace``, ``log_policy_reject``), which at a low limit with
many waiting threads is thousands of lines a minute. This filter drops exactly those records
(recognised by their reason, ``NO_PERMIT``) and logs one INFO line per interval per process with
how many jobs went back and at which gates; each one is still logged at DEBUG.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

log = logging.getLogger(__name__)

#: The reason of the ``Reject`` that sends a job without a permit back to its queue
#: (``tasks/delivery.py``); followed by the gate's name.
NO_PERMIT = "no gate permit within the wait at"
#: Celery's logger of task outcomes, rejections included.
CELERY_TRACE_LOGGER = "celery.app.trace"


class NoPermitSummary(logging.Filter):
    """Drops Celery's record of a no-permit requeue; logs a summary every ``interval_s``."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._gates: Counter[str] = Counter()
        self._since = clock()

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        if not isinstance(data, dict):
            return True
        _, marker, gate = str(data.get("exc", "")).partition(NO_PERMIT)
        if not marker:
            return True
        log.debug(
            "job %s went back to its queue: no permit at gate %s", data.get("id"), gate.strip()
        )
        with self._lock:
            self._gates[gate.strip()] += 1
            now = self.clock()
            if now - self._since < self.interval_s:
                return False
            gates, since = self._gates, self._since
            self._gates, self._since = Counter(), now
        at = ", ".join(f"{name}: {n}" for name, n in gates.most_common())
        log.info(
            "%d job(s) went back to their queue without a gate permit in the last %.0f s "
            "(%s): the gate was full, they will be fetched again",
            sum(gates.values()),
            now - since,
            at,
        )
        return False


#: One per process: the counts are the process's.
SUMMARY = NoPermitSummary()


def install() -> None:
    """Add the filter to Celery's trace logger (once; safe to call again)."""
    logger = logging.getLogger(CELERY_TRACE_LOGGER)
    if SUMMARY not in logger.filters:
        logger.addFilter(SUMMARY)
