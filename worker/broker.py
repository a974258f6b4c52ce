"""Where Redis is, and the one factory for clients of it.

Every process (producer, worker, CLI) resolves the same URL the same way: the configured
``CONTACTSYNC_REDIS_URL``, else the embedded server that `contactsync up` runs under the data dir.
There is no silent fallback to whatever listens on localhost: jobs written to an unrelated Redis
would never be delivered.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import redis
from redis.sentinel import Sentinel

from worker.embedded import running_url
from worker.sentinel import is_sentinel_url
from worker.sentinel import parse as parse_sentinel_url
from worker.settings import get_settings

#: What the Celery app points at when nothing is configured, so that importing it never fails;
#: the ledger (and so every producer and worker) refuses to run without a real answer.
UNCONFIGURED_BROKER = "redis://127.0.0.1:6379/0"


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


@lru_cache(maxsize=8)
def _sentinels(url: str) -> Sentinel:
    """One set of connections to the sentinels per URL per process, shared by its clients."""
    where = parse_sentinel_url(url)
    return Sentinel(list(where.sentinels), sentinel_kwargs=where.sentinel_kwargs())


def connect(url: str, **options: Any) -> redis.Redis:
    """The one way a client of ``url`` is built, with the caller's ``options`` (timeouts,
    ``client_name``, ``decode_responses``...).

    ``sentinel://``: a client of the service's current primary (``master_for``). Each new
    connection asks the sentinels where the primary is; a connection error, or a primary
    that has become a replica (READONLY), drops the connection, so the next command, or redis-py's
    retry of this one, goes to whichever server the sentinels name by then. Anything else:
    ``redis.Redis.from_url``, as always."""
    if is_sentinel_url(url):
        where = parse_sentinel_url(url)
        client: redis.Redis = _sentinels(url).master_for(
            where.service, redis_class=redis.Redis, **where.master_kwargs(), **options
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
