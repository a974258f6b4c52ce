"""The process-wide ledger, built once from the settings (the one place that wires them)."""

from __future__ import annotations

from functools import lru_cache

from worker.broker import redis_client
from worker.ledger import Ledger
from worker.settings import get_settings


@lru_cache(maxsize=1)
def ledger() -> Ledger:
    settings = get_settings()
    return Ledger(
        redis_client(),
        prefix=settings.key_prefix,
        retention_s=int(settings.retention_days * 86_400),
        lease_ms=int(settings.job_lease_ttl_s * 1000),
        window=settings.broker_window,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )
