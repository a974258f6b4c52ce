"""What a Redis Sentinel failover costs: the primary SIGKILLed while jobs are delivering.

The harness of ``tests/test_failover.py`` (a primary, replicas and three sentinels from the
embedded binary on loopback, a real Celery worker and a producer process on
``CONTACTSYNC_REDIS_URL=sentinel://...``), in its three cases: the primary killed with the
replicas in step; with the replicas cut off for a while first and no ``WAIT`` (what asynchronous
replication loses); and the same with ``CONTACTSYNC_REDIS_WAIT_REPLICAS=1``. Reported: jobs
accepted and lost, duplicate calls, when a replica was promoted, the longest time without a
delivery, and how long the producer stalled. Target: 0 lost with ``WAIT`` on. (``make test``
runs the first case; the other two, slower, are measured here.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

CASES = {"in step": (0, False), "replicas behind": (0, True), "replicas behind, WAIT 1": (1, True)}
SHOWN = ("accepted", "lost", "duplicates", "promoted_s", "no_deliveries_s", "producer_stalled_s")


def run() -> dict[str, Any]:
    from tests.test_failover import _run_failover

    results = {
        name: _run_failover(Path(tempfile.mkdtemp(prefix="contactsync-failover-")), *case)
        for name, case in CASES.items()
    }
    return {"cases": results, "met": results["replicas behind, WAIT 1"]["lost"] == 0}


def table(result: dict[str, Any]) -> str:
    verdict = "MET" if result["met"] else "NOT MET"
    header = "".join(f"{name:>26}" for name in result["cases"])
    lines = [f"failover: 0 jobs lost with WAIT on → {verdict}", f"   {'':26}{header}"]
    for key in SHOWN:
        lines.append(f"   {key:26}" + "".join(f"{c[key]:>26}" for c in result["cases"].values()))
    return "\n".join(lines)
