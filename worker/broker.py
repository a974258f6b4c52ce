"""Where Redis is, and the one factory for clients of it.

Every process (producer, worker, CLI, Flower) resolves the same URL the same way: the configured
``CONTACTSYNC_REDIS_URL``, else the embedded server that `contactsync up` runs, else localhost.
"""

from __future__ import annotations

from functools import lru_cache

import redis

from worker.embedded import running_url
from worker.settings import get_settings

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def redis_url() -> str:
    """The broker/state URL this process should use."""
    settings = get_settings()
    return settings.redis_url or running_url(settings.data_dir) or DEFAULT_URL


@lru_cache(maxsize=8)
def redis_client(url: str | None = None) -> redis.Redis:
    """A thread-safe, pooled client (one per URL per process); replies are ``str``."""
    return redis.Redis.from_url(
        url or redis_url(),
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=25,
    )
