"""Redis Sentinel: the primary is killed while jobs are delivering, and the fleet carries on.

A primary, a replica (two with ``WAIT``) and three sentinels (the embedded ``valkey-server``,
the sentinels with ``--sentinel``) on loopback, with a password; a Celery worker and a producer
process (and, in the first case, ``contactsync backfill``), all on
``CONTACTSYNC_REDIS_URL=sentinel://...``. The producer keeps submitting (with
idempotency keys, sending a batch again when Redis refuses it, as a service would); the primary
gets SIGKILL once jobs are being delivered; the sentinels promote a replica. Neither process is
restarted: jobs submitted after the failover must be delivered, and every job the new primary
knows must end.

What a failover may lose is measured, not hidden: a job the old primary acknowledged but had not
yet sent to a replica is gone (asynchronous replication). The test prints the jobs lost, the
duplicate calls and the time without deliveries. With ``CONTACTSYNC_REDIS_WAIT_REPLICAS=1`` a
submit returns only once a replica has its jobs, and none may be lost.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis

from sandbox.noojee import NoojeeSimConfig, serve
from tests.conftest import TEST_ENV, celery_worker, simulator_in_thread, wait_for
from worker.embedded import free_port, server_binary
from worker.ledger import TERMINAL, job_id_for

SERVICE = "cs-ha"
#: Jobs submitted while the primary is killed, and after the failover.
BEFORE, AFTER = 600, 100
#: Rows of the backfill that runs through the failover (the case without replicas behind).
BACKFILL_ROWS = 500
#: Jobs delivered before the primary is killed.
KILL_AFTER = 150
PRODUCER = textwrap.dedent("""
    import json, sys, time
    from redis.exceptions import RedisError
    from producers import submit_many
    from tasks.noojee import NoojeeLeadUpdate

    def job(lead):
        return NoojeeLeadUpdate(template_id=41, campaign_id=41, allocation_id=38,
                                external_lead_id=lead, disposition="Callback",
                                fields={"FirstPhone": "0383000000"})

    for line in sys.stdin:  # "PREFIX COUNT BATCH PAUSE_S"
        prefix, count, size, pause = line.split()
        leads = [f"{prefix}-{n}" for n in range(int(count))]
        for start in range(0, len(leads), int(size)):
            batch = leads[start:start + int(size)]
            while True:  # what a service does when Redis refuses: the same batch again
                try:
                    submit_many([job(lead) for lead in batch], priority="bulk",
                                idempotency_keys=batch)
                    break
                except RedisError as exc:
                    print(json.dumps({"error": type(exc).__name__, "t": time.monotonic()}),
                          flush=True)
                    time.sleep(0.05)
            print(json.dumps({"accepted": batch, "t": time.monotonic()}), flush=True)
            time.sleep(float(pause))
        print(json.dumps({"done": prefix}), flush=True)
""")


def _stop(process: subprocess.Popen[Any]) -> None:
    process.kill()
    process.wait(10)


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _link_is(replica: redis.Redis, status: str) -> bool:
    """Whether a replica's link to its primary is ``up`` or ``down``, as it says."""
    return bool(replica.info("replication")["master_link_status"] == status)


def _knows(sentinel: redis.Redis, replicas: int) -> bool:
    """Whether a sentinel knows every replica and the two other sentinels."""
    slaves = sentinel.sentinel_slaves(SERVICE)
    others = cast(list[dict[str, Any]], sentinel.sentinel_sentinels(SERVICE))
    return len(slaves) == replicas and len(others) == 2


def _answers(port: int, password: str | None = None) -> bool:
    try:
        return bool(redis.Redis(port=port, password=password, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


@dataclass
class Cluster:
    """A primary, a replica and three sentinels on loopback, all from the embedded binary."""

    base: Path
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    primary: int = field(default_factory=free_port)
    count: int = 1  # replicas
    replicas: list[int] = field(default_factory=list)
    sentinels: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"sentinel://:{self.password}@{hosts}/{SERVICE}/0"

    def _server(self, port: int, *extra: str) -> None:
        folder = self.base / str(port)
        folder.mkdir(parents=True)
        conf = folder / "server.conf"
        conf.write_text(f"requirepass {self.password}\nmasterauth {self.password}\n")
        self.processes[port] = _spawn(
            [
                str(server_binary()),
                str(conf),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(folder),
                "--save",
                "",
                "--appendonly",
                "no",
                *extra,
            ],
            folder / "server.log",
        )

    def _sentinel(self, port: int) -> None:
        folder = self.base / str(port)
        folder.mkdir(parents=True)
        conf = folder / "sentinel.conf"  # the sentinel rewrites it: it must be writable
        conf.write_text(
            textwrap.dedent(f"""\
            port {port}
            bind 127.0.0.1
            dir {folder}
            sentinel monitor {SERVICE} 127.0.0.1 {self.primary} 2
            sentinel auth-pass {SERVICE} {self.password}
            sentinel down-after-milliseconds {SERVICE} 1000
            sentinel failover-timeout {SERVICE} 5000
            sentinel parallel-syncs {SERVICE} 1
            """)
        )
        self.processes[port] = _spawn(
            [str(server_binary()), str(conf), "--sentinel"], folder / "sentinel.log"
        )

    def start(self) -> None:
        self.replicas = [free_port() for _ in range(self.count)]
        self._server(self.primary)
        for port in self.replicas:
            self._server(port, "--replicaof", "127.0.0.1", str(self.primary))
        for port in self.sentinels:
            self._sentinel(port)
        for port in (self.primary, *self.replicas):
            wait_for(partial(_answers, port, self.password), 15, f"server on {port}")
        for port in self.replicas:
            replica = redis.Redis(port=port, password=self.password, decode_responses=True)
            wait_for(partial(_link_is, replica, "up"), 15, "the replicas in sync")
        for port in self.sentinels:  # each knows the replicas and the two other sentinels
            sentinel = redis.Redis(port=port, decode_responses=True)
            wait_for(
                partial(_knows, sentinel, self.count),
                30,
                f"sentinel {port} to know the replicas and the other sentinels",
            )

    def primary_now(self) -> int:
        """The primary's port as a majority of sentinels name it."""
        named = []
        for port in self.sentinels:
            try:
                sentinel = redis.Redis(port=port, socket_timeout=1)
                address = cast(tuple[str, int], sentinel.sentinel_get_master_addr_by_name(SERVICE))
                named.append(address[1])
            except redis.RedisError:
                continue
        return max(set(named), key=named.count) if named else 0

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait(10)


@contextmanager
def cluster(base: Path, replicas: int) -> Iterator[Cluster]:
    running = Cluster(base, count=replicas)
    try:
        running.start()
        yield running
    finally:
        running.stop()


class Lines:
    """A child's stdout, read line by line (JSON) in a thread."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        assert process.stdout is not None
        stdout = process.stdout
        threading.Thread(target=self._read, args=(stdout,), daemon=True).start()

    def _read(self, stdout: Any) -> None:
        for line in stdout:
            self._queue.put(json.loads(line))

    def drain(self) -> list[dict[str, Any]]:
        while not self._queue.empty():
            self.seen.append(self._queue.get_nowait())
        return self.seen

    def has(self, key: str, value: Any = None) -> bool:
        return any(key in line and (value is None or line[key] == value) for line in self.drain())


class Deliveries:
    """Samples the simulator's call count every 20 ms in a thread: when calls happened."""

    def __init__(self, sim: httpx.Client) -> None:
        self.sim = sim
        self.changes: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last = -1
        while not self.stop.wait(0.02):
            calls = int(self.sim.get("/_stats").json()["calls"])
            if calls != last:
                self.changes.append((time.monotonic(), calls))
                last = calls

    def longest_gap_after(self, moment: float) -> float:
        """The longest time without a new call, from the last call before ``moment`` on."""
        times = [t for t, _ in self.changes]
        before = [t for t in times if t <= moment]
        after = [t for t in times if t > moment]
        points = before[-1:] + after
        return max((b - a for a, b in itertools.pairwise(points)), default=0.0)


def _replicas_fall_behind(ha: Cluster, out: Lines) -> None:
    """Cut every replica off the primary (a wrong masterauth, its link killed), and let the
    producer go on for a while: what it submits now is on the primary alone."""
    for port in ha.replicas:
        replica = redis.Redis(port=port, password=ha.password, decode_responses=True)
        replica.config_set("masterauth", "not-the-password")
        replica.client_kill_filter(_type="master")
        wait_for(partial(_link_is, replica, "down"), 10, "the replica cut off")
    counted = len(out.drain())
    wait_for(lambda: len(out.drain()) >= counted + 10, 30, "10 more submits or refusals")


def _replicas_catch_up(ha: Cluster) -> None:
    for port in ha.replicas:  # so that they can follow whichever primary the sentinels name
        redis.Redis(port=port, password=ha.password).config_set("masterauth", ha.password)


def _start_backfill(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`contactsync backfill` of BACKFILL_ROWS leads, pausing while 100 jobs are queued: it is
    still submitting when the primary dies."""
    leads = tmp_path / "leads.csv"
    leads.write_text(
        "external_lead_id,FirstPhone\n"
        + "".join(f"c-{n},0383000000\n" for n in range(BACKFILL_ROWS))
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker.cli",
            "backfill",
            str(leads),
            "-d",
            "noojee",
            "--kind",
            "update",
            "--set",
            "template_id=41",
            "--set",
            "campaign_id=41",
            "--set",
            "allocation_id=38",
            "--set",
            "disposition=Callback",
            "--max-queue-depth",
            "100",
        ],
        env=env,
        cwd=tmp_path,
        stdout=(tmp_path / "backfill.log").open("wb"),
        stderr=subprocess.STDOUT,
    )


def _run_failover(tmp_path: Path, wait_replicas: int, behind: bool) -> dict[str, Any]:
    with ExitStack() as stack:
        # WAIT 1 needs a replica after the failover too: two replicas, one becomes the primary.
        ha = stack.enter_context(cluster(tmp_path / "ha", 1 + wait_replicas))
        sim = stack.enter_context(
            simulator_in_thread(
                serve, NoojeeSimConfig(slots=8, latency_s=0.02, jitter_s=0.005, queue_timeout_s=2)
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTSYNC_")}
        env.update(
            {
                **TEST_ENV,
                "CONTACTSYNC_REDIS_URL": ha.url,
                "CONTACTSYNC_DATA_DIR": str(tmp_path / "data"),
                "CONTACTSYNC_NOOJEE__BASE_URL": str(sim.base_url),
                "CONTACTSYNC_NOOJEE__API_KEY": "sandbox-key",
                "CONTACTSYNC_REDIS_WAIT_REPLICAS": str(wait_replicas),
                # (A replica cut off longer than 10 x down-after is never promoted.)
                "CONTACTSYNC_REDIS_WAIT_TIMEOUT_MS": "200",
                "PYTHONUNBUFFERED": "1",
            }
        )
        log = tmp_path / "worker.log"
        worker = subprocess.Popen(
            celery_worker("-Q", "noojee", "-n", "ha@%h"),
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        stack.callback(_stop, worker)
        producer = subprocess.Popen(
            [sys.executable, "-c", PRODUCER],
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        stack.callback(_stop, producer)
        assert producer.stdin is not None
        out = Lines(producer)
        wait_for(lambda: "ready." in log.read_text(), 60, "the worker")
        deliveries = Deliveries(sim)
        stack.callback(deliveries.stop.set)

        def delivered() -> dict[str, int]:
            return dict(sim.get("/_stats").json()["calls_by_lead"])

        # Submitting BEFORE jobs, 5 at a time, for a few seconds; the kill lands in the middle.
        producer.stdin.write(f"a {BEFORE} 5 0.02\n")
        producer.stdin.flush()
        backfill = None if behind else _start_backfill(tmp_path, env)

        def ready_to_kill() -> bool:
            assert ha.processes[ha.primary].poll() is None, "the primary died before the kill"
            return len(delivered()) >= KILL_AFTER

        wait_for(ready_to_kill, 60, f"{KILL_AFTER} deliveries")
        if behind:
            _replicas_fall_behind(ha, out)
        killed_at = time.monotonic()
        ha.processes[ha.primary].send_signal(signal.SIGKILL)
        if behind:
            _replicas_catch_up(ha)
        wait_for(lambda: ha.primary_now() in ha.replicas, 30, "the sentinels to promote a replica")
        promoted_s = time.monotonic() - killed_at
        wait_for(lambda: out.has("done", "a"), 60, "the producer to finish its first jobs")
        times = [line["t"] for line in out.drain() if "accepted" in line]
        assert times[-1] > killed_at, "the producer had finished before the kill: kill earlier"
        stalled = [b - a for a, b in itertools.pairwise(times) if b > killed_at]

        producer.stdin.write(f"b {AFTER} 10 0\n")  # after the failover, same producer process
        producer.stdin.flush()
        wait_for(lambda: out.has("done", "b"), 30, "the producer to submit after the failover")
        after = [f"b-{n}" for n in range(AFTER)]
        wait_for(
            lambda: all(lead in delivered() for lead in after),
            45,
            "every job submitted after the failover to be delivered",
        )

        # Every job the new primary knows ends; the ones it never heard of are the ones lost.
        state = redis.Redis(port=ha.primary_now(), password=ha.password, decode_responses=True)
        accepted = [
            lead
            for line in out.drain()
            if "accepted" in line
            for lead in line["accepted"]
            if lead.startswith("a-")
        ]

        def unsettled() -> list[str]:
            calls = delivered()
            return [
                lead
                for lead in accepted
                if lead not in calls
                and state.hget(f"cs:job:{job_id_for('noojee', lead)}", "state")
                not in (None, *TERMINAL)
            ]

        wait_for(lambda: not unsettled(), 45, "every job the new primary knows to end")
        rows = [f"c-{n}" for n in range(BACKFILL_ROWS)] if backfill is not None else []
        if backfill is not None:  # it went on by itself: every row queued, then delivered
            assert backfill.wait(60) == 0, "the backfill did not finish on its own"
            wait_for(
                lambda: all(lead in delivered() for lead in rows),
                30,
                "every row of the backfill to be delivered",
            )
        deliveries.stop.set()
        calls = delivered()
        lost = [lead for lead in accepted if lead not in calls]
        assert worker.poll() is None and producer.poll() is None, "a process did not carry on"
        return {
            "accepted": len(accepted),
            "backfill_rows_delivered": sum(lead in calls for lead in rows),
            "lost": len(lost),
            "lost_absent_from_ledger": sum(
                state.exists(f"cs:job:{job_id_for('noojee', lead)}") == 0 for lead in lost
            ),
            "duplicates": sum(n - 1 for n in calls.values() if n > 1),
            "promoted_s": round(promoted_s, 2),
            "no_deliveries_s": round(deliveries.longest_gap_after(killed_at), 2),
            "producer_errors": sum("error" in line for line in out.drain()),
            "producer_stalled_s": round(max(stalled), 2),
        }


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_failover_the_worker_and_a_producer_carry_on(tmp_path: Path) -> None:
    """The primary dies with its replica in step. ``python -m bench failover`` runs this
    harness with the replicas cut off for a while first (replication lag, made long enough to
    count what it costs), without and with ``WAIT``: jobs lost, and 0 lost with ``WAIT``."""
    figures = _run_failover(tmp_path, wait_replicas=0, behind=False)
    print(f"failover, replicas in step: {figures}")
    assert figures["accepted"] == BEFORE  # (and _run_failover: every process carried on)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_command_in_flight_when_the_primary_dies_is_answered_by_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocked reads (BLPOP, as the heartbeat's) on the primary when it gets SIGKILL: each is
    sent again, on a connection that asks the sentinels where the primary is now, and answered
    by the promoted replica; none fails, none waits out the whole failover budget."""
    from worker.broker import connect
    from worker.settings import get_settings

    monkeypatch.setenv("CONTACTSYNC_REDIS_FAILOVER_WAIT_S", "20")
    get_settings.cache_clear()
    with cluster(tmp_path / "ha", 1) as ha:
        try:
            client = connect(ha.url, decode_responses=True, socket_timeout=30)
        finally:
            get_settings.cache_clear()
        client.ping()
        took: list[float] = []
        errors: list[str] = []

        def blocked_read(n: int) -> None:
            started = time.monotonic()
            try:
                client.blpop([f"never-{n}"], timeout=1)
            except redis.RedisError as exc:
                errors.append(type(exc).__name__)
            took.append(time.monotonic() - started)

        readers = [threading.Thread(target=blocked_read, args=(n,)) for n in range(3)]
        for reader in readers:
            reader.start()
        wait_for(
            lambda: (
                redis.Redis(port=ha.primary, password=ha.password).info("clients")[
                    "blocked_clients"
                ]
                == 3
            ),
            5,
            "the reads blocked",
        )
        killed = time.monotonic()
        ha.processes[ha.primary].send_signal(signal.SIGKILL)
        for reader in readers:
            reader.join(30)
        promoted_s = time.monotonic() - killed
        assert ha.primary_now() in ha.replicas
        assert errors == []
        assert max(took) < 12, took  # the failover (about 2.5 s) and a BLPOP, not the budget
        assert client.set("after", "1") and client.get("after") == "1"
        print(f"blocked reads answered {max(took):.2f} s after the kill ({promoted_s:.2f} s)")
