"""kombu's Sentinel transport, with the broker's connections waiting for a new primary.

kombu retries a lost broker connection after 0, 2, 4, 6... s: a Celery worker would fetch
nothing for up to 6 s after the sentinels named the new primary. Here a connection being made
keeps asking the sentinels (for up to ``CONTACTSYNC_REDIS_FAILOVER_WAIT_S``), so kombu's first
attempt succeeds as soon as the new primary is named. Commands are not retried: a command on a
broken connection fails at once, as kombu expects (it rebuilds its channel, and the worker's
event loop must not be reconnected under its poller's feet). ``worker.app`` selects it for a
``sentinel://`` URL (``broker_transport``). As in ``worker.transport``, a channel keeps one
client for the commands kombu sends outside its event loop, and keeps the messages it took in
memory, with the unacked index brought up to date in batches.
"""

from __future__ import annotations

from typing import Any

from kombu.transport.redis import SentinelChannel, SentinelTransport
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import SentinelManagedConnection

from worker.broker import UntilFailedOver
from worker.settings import get_settings
from worker.transport import SharedClient, TakenInMemory


class Connection(SentinelManagedConnection):
    def connect(self) -> None:
        """Ask the sentinels where the primary is, and connect, until it works or the failover
        budget is spent."""
        budget = UntilFailedOver(get_settings().redis_failover_wait_s)
        budget.call_with_retry(self._connect_retry, lambda error: None)


class Channel(SharedClient, TakenInMemory, SentinelChannel):
    connection_class = Connection
    _given_sentinel_kwargs: dict[str, Any] | None = None

    @property
    def sentinel_kwargs(self) -> dict[str, Any]:
        """The transport option, without redis-py's retries on a sentinel that is down."""
        return {**(self._given_sentinel_kwargs or {}), "retry": Retry(NoBackoff(), 0)}

    @sentinel_kwargs.setter
    def sentinel_kwargs(self, value: dict[str, Any] | None) -> None:
        self._given_sentinel_kwargs = value


class Transport(SentinelTransport):
    Channel = Channel
