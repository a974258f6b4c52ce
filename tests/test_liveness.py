"""A killed worker's permits and claims come back when Redis sees its connections close, not
when their leases run out (worker/liveness.py), on a real server with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import redis

from tests.conftest import wait_for
from worker import liveness
from worker.gate import Gate, GateConfig
from worker.ledger import Ledger, NewJob, now_ms

pytestmark = pytest.mark.integration

HOLDER = textwrap.dedent("""
    import sys, time
    import redis
    from worker.gate import Gate, GateConfig
    from worker.ledger import Ledger
    from worker.liveness import Heartbeat, owner
    url, prefix, gate_name, job_id, heartbeat = sys.argv[1:6]
    client = redis.Redis.from_url(url, decode_responses=True)
    if heartbeat == "yes":
        Heartbeat(url, prefix).start()
    gate = Gate(client, gate_name, GateConfig(maximum=2, ttl_s=30), prefix=prefix)
    permit = gate.acquire(wait_s=5)
    ledger = Ledger(client, prefix=prefix, lease_ms=30_000)
    claim = ledger.claim(job_id, owner() + "/claim")
    print("holding", permit is not None, claim.status, flush=True)
    time.sleep(600)
""")


def hold(url: str, prefix: str, gate: str, job_id: str, heartbeat: bool) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, prefix, gate, job_id, "yes" if heartbeat else "no"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().split() == ["holding", "True", "claimed"]
    return process


def test_a_killed_worker_gives_back_its_permits_and_jobs_within_a_sweep_not_a_lease(
    redis_server: str,
) -> None:
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    prefix = f"live-{uuid.uuid4().hex[:6]}:"
    ledger = Ledger(client, prefix=prefix, lease_ms=30_000)
    gate_name = f"noojee:{uuid.uuid4().hex[:6]}"
    for job_id in ("with-heartbeat", "without"):
        ledger.create(
            NewJob(
                id=job_id,
                kind="noojee.update",
                destination="noojee",
                task="noojee.deliver",
                queue="noojee",
                priority="bulk",
                payload="{}",
                retry_until_ms=now_ms() + 60_000,
            )
        )
    ledger.due()  # (queued: recorded without a template, as the schedule holds them)
    beating = hold(redis_server, prefix, gate_name, "with-heartbeat", heartbeat=True)
    silent = hold(redis_server, prefix, gate_name, "without", heartbeat=False)
    gate = Gate(client, gate_name, GateConfig(maximum=2), prefix=prefix)
    try:
        # (A server that just started is given time for everyone to connect again.)
        wait_for(
            lambda: liveness.primary_settled(client, prefix),
            12,
            "the server to have been up, and the primary, a while",
        )
        wait_for(
            lambda: (
                len(client.zrange(liveness.registry_key(prefix), 0, -1)) == 1
                and liveness.dead_processes(client, prefix) == []
            ),
            10,
            "the registration",
        )
        assert liveness.sweep(client, prefix, lambda dead: ledger.reap(dead=dead)) == []
        os.kill(beating.pid, signal.SIGKILL)
        os.kill(silent.pid, signal.SIGKILL)
        beating.wait()
        silent.wait()
        killed = time.monotonic()

        def swept() -> list[str]:
            return liveness.sweep(client, prefix, lambda dead: ledger.reap(dead=dead))

        dead = wait_for(swept, 5, "the sweep to find the dead worker")
        took_s = time.monotonic() - killed
        assert dead == [f"{os.uname().nodename}/{beating.pid}"]
        # Its connections closed at once; its leases had 30 s more. (How fast, in figures: the
        # gate benchmark's scenario F.)
        assert took_s < 10, took_s
        assert gate.status().held == 1  # the silent one (no heartbeat) keeps its lease
        assert ledger.get("with-heartbeat").state == "queued"
        assert ledger.get("without").state == "running"
        assert gate.status().expired_total == 1
    finally:
        for process in (beating, silent):
            process.kill()
            process.wait()


def test_a_heartbeat_outlasts_its_own_beat() -> None:
    """A heartbeat's read blocks for a whole beat (BLPOP BEAT_S): a client that gives up on a
    read sooner (redis-py 8's default is 5 s, BEAT_S is 5) drops the connection at each beat's
    end, and for that moment the fleet takes a live worker for dead and runs its jobs twice."""
    client = liveness.Heartbeat("redis://127.0.0.1:1/0", "cs:").connect()
    timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    assert timeout is None or timeout > liveness.BEAT_S + 1
