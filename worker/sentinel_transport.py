"""kombu's Sentinel transport, with the broker's connections riding through a failover as the
other clients do (``worker.broker.UntilFailedOver``).

kombu's own retries a lost broker connection after 0, 2, 4, 6... s: a Celery worker would fetch
nothing for up to 6 s after the sentinels named the new primary. Here a connection that cannot
reach a primary keeps asking the sentinels (for up to ``CONTACTSYNC_REDIS_FAILOVER_WAIT_S``), so
the worker resumes as soon as the new primary is named. ``worker.app`` selects it for a
``sentinel://`` URL (``broker_transport``).
"""

from __future__ import annotations

from typing import Any

from kombu.transport.redis import SentinelChannel, SentinelTransport
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.broker import FollowingConnection, UntilFailedOver
from worker.settings import get_settings


class Channel(SentinelChannel):
    _given_sentinel_kwargs: dict[str, Any] | None = None

    @property
    def sentinel_kwargs(self) -> dict[str, Any]:
        """The transport option, without redis-py's retries on a sentinel that is down."""
        return {**(self._given_sentinel_kwargs or {}), "retry": Retry(NoBackoff(), 0)}

    @sentinel_kwargs.setter
    def sentinel_kwargs(self, value: dict[str, Any] | None) -> None:
        self._given_sentinel_kwargs = value

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = super()._connparams(asynchronous)
        params["retry"] = UntilFailedOver(get_settings().redis_failover_wait_s)
        if not asynchronous:
            # Commands (publish, ack, restore) retried on a broken connection ask the sentinels
            # where the primary is. Not the connection the worker's event loop reads messages
            # from: kombu polls its socket, so it must fail and be rebuilt by kombu, not be
            # reconnected under the poller's feet.
            params["connection_class"] = FollowingConnection
        return params


class Transport(SentinelTransport):
    Channel = Channel
