"""kombu's Redis transport, with one redis-py client object per channel for its commands, and
its record of the messages a worker took kept without transactions.

kombu builds a new ``redis.Redis`` for every command it sends outside its event loop
(``Channel.conn_or_acquire``): every event a worker publishes for Flower, every message it
records as taken, every ack. ``Redis.__init__`` fills a dict of a few hundred response callbacks
each time: 8.6 % of a worker's CPU at a destination that answers at once (py-spy, ``python -m
bench cost``). A client is a thin handle on the channel's connection pool and safe to share
between threads, so each channel keeps one, made again when kombu replaces the pool (after a
fork, or a lost connection). ``worker.app`` selects this transport for ``redis://`` URLs
(``broker_transport``); ``worker.sentinel_transport`` mixes the same into kombu's Sentinel
channel. ``rediss://`` keeps kombu's own transport, which is where kombu turns that scheme into
TLS.

kombu records each message a worker takes in Redis (ZADD to the unacked index, HSET of the
whole message) and drops the record on the ack (ZREM, HDEL): 4 commands and 2 round trips a
job, a quarter of a worker's CPU against a destination that answers at once (py-spy, ``python
-m bench cost``). That record exists so that a message a dead worker took comes back. Here it
is not needed for that: the ledger knows every job whose message is out (its ``dispatched``
set), a claimed job is the ledger's from its claim on (a lease, ``reap``), and ``reconcile``
sends again the message of a queued job that is on neither a broker list nor with a worker.

So this QoS keeps the messages a channel took in memory only (kombu's own in-memory state,
which also applies the prefetch limit), and puts them back from there when the channel closes
or a message is rejected with requeue. What ``reconcile`` needs to know, which messages live
workers hold and since when, it gets from the unacked index, which a reporter thread per
channel brings up to date every ``REPORT_S`` in one round trip (ZADD of the tags taken since,
ZREM of those acked since). A message acked within ``REPORT_S``, nearly every one, costs no
command at all. The index lags the worker by at most ``REPORT_S``, less than ``CONFIRM_MS``
(worker/republisher.py): a job is sent again only when two reconcile rounds that far apart
found its message nowhere, so a message being taken is seen with its worker by the second.
A worker that dies loses what it held unclaimed: ``reconcile`` sends those again, within
seconds of the death (the quick rounds after the liveness sweep finds it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

#: How often a channel brings the unacked index up to date with the messages it holds (s).
REPORT_S = 0.2


class SharedClient:
    """A kombu Redis channel mixin: one client for the commands kombu sends outside its loop."""

    _shared_client: Any = None
    pool: Any
    _create_client: Any

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        shared = self._shared_client
        if shared is None or shared.connection_pool is not pool:
            # (Two threads may both make one here: either will do.)
            shared = self._shared_client = self._create_client()
        yield shared


class QoS(kombu_redis.QoS):
    """The messages a channel took, in memory; the unacked index brought up to date in batches
    (see the module's docstring). No unacked hash: nothing reads the messages back from Redis."""

    unacked_index_key: str
    _dirty: set[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._taken: dict[str, float] = {}  # delivery tag -> when taken (s): not yet acked
        self._reported: set[str] = set()  # the tags the index holds for this channel
        self._report_lock = threading.Lock()
        self._closed = threading.Event()
        self._reporter: threading.Thread | None = None

    def append(self, message: Any, delivery_tag: str) -> None:
        self._taken[delivery_tag] = time.time()
        virtual.QoS.append(self, message, delivery_tag)
        if self._reporter is None and not self._closed.is_set():
            self._reporter = threading.Thread(
                target=self._report_until_closed, name="contactsync-taken", daemon=True
            )
            self._reporter.start()

    def ack(self, delivery_tag: str) -> None:
        self._taken.pop(delivery_tag, None)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            if requeue:
                self.restore_by_tag(delivery_tag, leftmost=True)
        finally:
            # Even if putting it back failed (Redis is failing: that is when a worker requeues),
            # the worker no longer holds it, and the index must not say it does: reconcile then
            # sends its job's message again, instead of waiting out kombu's visibility timeout.
            self.ack(delivery_tag)

    def restore_unacked_once(self, stderr: Any = None) -> Any:
        self._closed.set()  # the channel closes: its reporter stops, whether or not it restores
        return super().restore_unacked_once(stderr)

    def restore_unacked(self, client: Any = None) -> None:
        """Put every message taken and not acked back on its list (the channel closes)."""
        self._flush()  # (acked ones leave the in-memory state)
        with self.channel.conn_or_acquire(client) as client:
            for tag in list(self._delivered):
                self.restore_by_tag(tag, client)
        self._delivered.clear()
        self._taken.clear()
        try:
            self.report()  # their index entries go
        except RedisError as exc:  # reconcile finds their jobs on the lists all the same
            log.debug("could not clear the record of the messages taken: %s", exc)

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        message = self._delivered.get(tag)
        if message is None or tag in self._dirty:
            return
        self._taken.pop(tag, None)
        info = message.delivery_info
        with self.channel.conn_or_acquire(client) as client:
            pipe = client.pipeline(transaction=False)
            self.channel._do_restore_message(
                message._raw, info["exchange"], info["routing_key"], pipe, leftmost
            )
            pipe.execute()

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        """kombu restores the recorded messages of workers that died; there are none to restore
        (``reconcile`` sends a lost job's message again)."""

    def report(self) -> None:
        """Bring the unacked index up to date: the tags taken and not yet acked, by when."""
        with self._report_lock:
            taken = dict(self._taken)
            added = {tag: at for tag, at in taken.items() if tag not in self._reported}
            gone = [tag for tag in self._reported if tag not in taken]
            if not (added or gone):
                return
            with self.channel.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=False)
                if added:
                    pipe.zadd(self.unacked_index_key, added)
                if gone:
                    pipe.zrem(self.unacked_index_key, *gone)
                pipe.execute()
            self._reported.difference_update(gone)
            self._reported.update(added)

    def _report_until_closed(self) -> None:
        while not self._closed.wait(REPORT_S):
            try:
                self.report()
            except RedisError as exc:  # the broker is away: the next round tries again
                log.debug("could not record the messages taken: %s", exc)
            except Exception:  # never let the thread die: reconcile relies on the index
                log.exception("could not record the messages taken")


class TakenInMemory:
    """A kombu Redis channel mixin: this module's QoS, and kombu's other way of putting a
    message back (recover, requeue) through it, from memory."""

    QoS = QoS
    qos: Any

    def _restore(self, message: Any, leftmost: bool = False) -> None:
        self.qos.restore_by_tag(message.delivery_tag, leftmost=leftmost)


class Channel(SharedClient, TakenInMemory, kombu_redis.Channel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel
