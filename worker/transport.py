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

kombu records each message a worker takes (ZADD to the unacked index, HSET of the message) and
drops the record on the ack (ZREM, HDEL), each pair in MULTI/EXEC: 8 commands a job, 4 of them
MULTI and EXEC. Nothing needs the pairs atomic. Both commands of a pair still go in one round
trip, and a connection lost between them can leave only an index entry without its message,
which kombu's restore drops: the ack removes the message before its index entry, the reverse
of the order the record is written in. (kombu's restore of a message, which must be atomic,
runs its own WATCH/MULTI transaction and is unchanged.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis


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
    """kombu's record of the messages a channel took, kept without MULTI/EXEC."""

    unacked_key: str
    unacked_index_key: str

    @contextmanager
    def pipe_or_acquire(self, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        if pipe:
            yield pipe
        else:
            with self.channel.conn_or_acquire(client) as client:
                yield client.pipeline(transaction=False)

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        with self.pipe_or_acquire(pipe) as pipe:
            return pipe.hdel(self.unacked_key, delivery_tag).zrem(
                self.unacked_index_key, delivery_tag
            )


class Channel(SharedClient, kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
