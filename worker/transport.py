"""kombu's Redis transport, with one redis-py client object per channel for its commands.

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


class Channel(SharedClient, kombu_redis.Channel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel
