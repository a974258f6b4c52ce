"""Which worker processes are alive, as Redis sees them: by their connections.

A killed worker holds gate permits and job claims until their leases run out. Its TCP
connections, though, close the moment the kernel reaps it, and Redis drops them at once. So
every worker process keeps one dedicated connection open, named ``cs-live:HOST/PID`` (a
``Heartbeat``), and registers itself; a sweep (``sweep``, one worker of the fleet at a time,
every round of the republisher) lists the clients, and a registered process with no such
connection is dead: its permits go back to the gates and its claimed jobs are queued again
at once. A process that never registered (a script, a test, an older version) is left to the
leases, as before.

A live worker that lost Redis for a while is no different from a dead one here, as it is for
the leases: it could not renew them either. Right after the server itself restarts, or a
replica is promoted in a failover, nobody has reconnected yet, so the sweep waits until the
server has been up, and the primary, a few seconds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import cast

import redis

from worker.broker import connect as connect_redis
from worker.gate import HOST, Gate, GateConfig, gate_names

log = logging.getLogger(__name__)

#: The name every process's heartbeat connection carries, before its owner ("host/pid").
NAME_PREFIX = "cs-live:"
#: How long a heartbeat connection blocks before it registers again (s).
BEAT_S = 5
#: A registration younger than this is not judged (its connection may be a moment behind).
SETTLE_MS = 2_000
#: The server must have been up this long before a missing connection means a dead process.
SERVER_UP_S = 5


def owner() -> str:
    """This process, as tokens name it: ``host/pid`` (claims and permits are host/pid/random)."""
    return f"{HOST}/{os.getpid()}"


def registry_key(prefix: str) -> str:
    return f"{prefix}live"


class Heartbeat:
    """One connection kept open for the life of the process, and the registration that says
    this process holds one (a daemon thread; ``start`` once per process)."""

    _started: set[int] = set()
    _lock = threading.Lock()

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix

    def start(self) -> None:
        with self._lock:
            if os.getpid() in self._started:
                return
            self._started.add(os.getpid())
        threading.Thread(target=self._run, name="contactsync-heartbeat", daemon=True).start()

    def connect(self) -> redis.Redis:
        """The heartbeat's own client. Its reads may block a whole beat: redis-py (8 and later)
        gives up on a read after 5 s by default, which would drop the connection at the end of
        each beat and have the fleet take this process for dead for a moment."""
        return connect_redis(
            self.url,
            client_name=f"{NAME_PREFIX}{owner()}",
            socket_connect_timeout=5,
            socket_timeout=BEAT_S + 10,
        )

    def _run(self) -> None:
        me = owner()
        while True:
            try:
                conn = self.connect()
                while True:
                    # When it first registered (NX): a registration is judged once settled, and
                    # a process wrongly forgotten (cut off from Redis a while) registers again.
                    conn.zadd(registry_key(self.prefix), {me: int(time.time() * 1000)}, nx=True)
                    # Blocks on a key nobody writes: the connection stays open and named.
                    conn.blpop([f"{self.prefix}live:{me}:never"], timeout=BEAT_S)
            except redis.RedisError as exc:
                log.warning(
                    "heartbeat connection lost (%s); connecting again: until it is back, "
                    "the fleet may take this worker for dead",
                    type(exc).__name__,
                )
                time.sleep(0.2)  # Redis is away: try again shortly, not in a tight loop


def primary_settled(client: redis.Redis, prefix: str) -> bool:
    """Whether this server has been up, and the primary the fleet uses, for ``SERVER_UP_S``.
    Right after it started, or after the sentinels promoted it (a replica up for hours, but no
    heartbeat has reconnected to it yet), a missing connection says nothing. A promotion gives
    the server a new replication id: the first sweep to see it notes it, with the time."""
    if int(cast(dict[str, int], client.info("server"))["uptime_in_seconds"]) < SERVER_UP_S:
        return False
    replid = str(cast(dict[str, str], client.info("replication")).get("master_replid", ""))
    key, now = f"{prefix}live:primary", int(time.time() * 1000)
    seen = client.get(key)
    noted, _, since = (seen.decode() if isinstance(seen, bytes) else str(seen or "")).partition(" ")
    if noted != replid or not since.isdigit():
        client.set(key, f"{replid} {now}")
        return False
    return now - int(since) >= SERVER_UP_S * 1000


def dead_processes(client: redis.Redis, prefix: str) -> list[str]:
    """Registered processes without their heartbeat connection ("host/pid"), or [] while the
    server has not been up long enough to tell (or will not list its clients)."""
    try:
        if not primary_settled(client, prefix):
            return []
        clients = client.client_list()
    except redis.ResponseError as exc:  # CLIENT LIST refused (ACLs): the leases will do
        log.debug("cannot list clients: %s", exc)
        return []
    live = {
        str(c.get("name", ""))[len(NAME_PREFIX) :]
        for c in clients
        if str(c.get("name", "")).startswith(NAME_PREFIX)
    }
    settled = int(time.time() * 1000) - SETTLE_MS
    registered = cast(list[str], client.zrange(registry_key(prefix), "-inf", settled, byscore=True))
    return [process for process in registered if process not in live]


def sweep(
    client: redis.Redis, prefix: str, reap: Callable[[list[str]], object] | None = None
) -> list[str]:
    """Find the dead processes, give their permits back at every gate, queue their claimed
    jobs again (``reap``, given them), and forget them; returns them."""
    dead = dead_processes(client, prefix)
    if not dead:
        return []
    for name in gate_names(client, prefix):
        gate = Gate(client, name, GateConfig(maximum=1), prefix=prefix)
        gone, passed = gate.sweep(dead)
        if gone or passed:
            log.warning(
                "gate %s: %d permit(s) of dead worker(s) given back, %d waiter(s) passed over",
                name,
                gone,
                passed,
            )
    if reap is not None:
        reap(dead)
    client.zrem(registry_key(prefix), *dead)
    return dead
