"""Where Redis is, and the one factory for clients of it.

Every process (producer, worker, CLI) resolves the same URL the same way: the configured
``CONTACTSYNC_REDIS_URL``, else the embedded server that `contactsync up` runs under the data dir.
There is no silent fallback to whatever listens on localhost: jobs written to an unrelated Redis
would never be delivered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from worker.embedded import running_url
from worker.sentinel import SentinelURL, is_sentinel_url
from worker.sentinel import parse as parse_sentinel_url
from worker.settings import get_settings

#: What the Celery app points at when nothing is configured, so that importing it never fails;
#: the ledger (and so every producer and worker) refuses to run without a real answer.
UNCONFIGURED_BROKER = "redis://127.0.0.1:6379/0"

T = TypeVar("T")


class RedisNotConfigured(RuntimeError):
    """Neither CONTACTSYNC_REDIS_URL nor a running embedded server says which Redis to use."""


def redis_url() -> str:
    """The broker/state URL this process should use."""
    settings = get_settings()
    url = settings.redis_url or running_url(settings.data_dir)
    if url is None:
        raise RedisNotConfigured(
            "no Redis to use: set CONTACTSYNC_REDIS_URL (e.g. redis://127.0.0.1:6379/0), or run "
            f"`contactsync up` in this directory (it looks for one under {settings.data_dir}/)"
        )
    return url


def broker_url() -> str:
    """The URL for the Celery app: ``redis_url()``, or a placeholder when none is configured."""
    try:
        return redis_url()
    except RedisNotConfigured:
        return UNCONFIGURED_BROKER


class UntilFailedOver(Retry):
    """redis-py's retry for clients of a Sentinel service: a command that met a connection
    error (the primary died, the sentinels name no primary yet, or it became a replica) is sent
    again, after a short backoff, until ``budget_s`` has passed since its first failure; each try
    reconnects and so asks the sentinels where the primary is now. Timeouts are not retried.

    redis-py nests retries (connecting retries, and so does the command around it): only the
    outermost call on a thread retries here, so the budget holds once, not once per level."""

    _inside = threading.local()

    def __init__(self, budget_s: float) -> None:
        super().__init__(ExponentialWithJitterBackoff(base=0.05, cap=0.5), -1, (ConnectionError,))
        self.budget_s = budget_s

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        if getattr(self._inside, "active", False):
            return do()  # the outer call retries
        self._inside.active = True
        try:
            return self._retry(do, fail, is_retryable, with_failure_count)
        finally:
            self._inside.active = False

    def _retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None,
        with_count: bool,
    ) -> T:
        self._backoff.reset()
        failures, give_up = 0, 0.0
        while True:
            try:
                return do()
            except ConnectionError as error:
                if is_retryable is not None and not is_retryable(error):
                    raise
                failures += 1
                fail(error, failures) if with_count else fail(error)
                now = time.monotonic()
                give_up = give_up or now + self.budget_s
                if now >= give_up:
                    raise
                time.sleep(min(self._backoff.compute(failures), give_up - now))


class FollowingConnection(SentinelManagedConnection):
    """A connection to the primary that asks the sentinels again whenever it reconnects.

    redis-py's own asks them in ``connect()`` only: a command retried on the same connection
    after it broke reconnects through ``connect_check_health`` to the address it had, the dead
    primary's, until the retries run out."""

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self._sock:
            return
        if retry_socket_connect:  # a reconnect (send_packed_command...): where is it now?
            self.connect()
        else:  # connect_to(), from connect(): the address the sentinels just gave
            super().connect_check_health(check_health, retry_socket_connect)


@lru_cache(maxsize=8)
def _sentinels(url: str) -> Sentinel:
    """One set of connections to the sentinels per URL per process, shared by its clients."""
    where = parse_sentinel_url(url)
    return Sentinel(list(where.sentinels), sentinel_kwargs=sentinel_kwargs(where))


def sentinel_kwargs(where: SentinelURL) -> dict[str, Any]:
    """Options of the connections to the sentinels: no retry of their own (redis-py's default
    would spend seconds on a sentinel that is down before asking the next one)."""
    return {**where.sentinel_kwargs(), "retry": Retry(NoBackoff(), 0)}


def connect(url: str, **options: Any) -> redis.Redis:
    """The one way a client of ``url`` is built, with the caller's ``options`` (timeouts,
    ``client_name``, ``decode_responses``...).

    ``sentinel://``: a client of the service's current primary (``master_for``). Each new
    connection asks the sentinels where the primary is; a connection error, or a primary that
    has become a replica (READONLY), drops the connection, and the command is sent again
    (``UntilFailedOver``, for up to ``CONTACTSYNC_REDIS_FAILOVER_WAIT_S``) to whichever server
    the sentinels name by then. Anything else: ``redis.Redis.from_url``, as always (no retry)."""
    if is_sentinel_url(url):
        where = parse_sentinel_url(url)
        retry = UntilFailedOver(get_settings().redis_failover_wait_s)
        client: redis.Redis = _sentinels(url).master_for(
            where.service,
            redis_class=redis.Redis,
            connection_class=FollowingConnection,
            retry=retry,
            **where.master_kwargs(),
            **options,
        )
        return client
    return redis.Redis.from_url(url, **options)


@lru_cache(maxsize=8)
def redis_client(url: str | None = None) -> redis.Redis:
    """A thread-safe, pooled client (one per URL per process); replies are ``str``."""
    return connect(
        url or redis_url(),
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=25,
    )
