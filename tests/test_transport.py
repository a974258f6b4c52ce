"""The broker transport keeps one redis-py client per channel (worker/transport.py)."""

from __future__ import annotations

import pytest
from kombu import Connection

from worker.app import broker_settings

pytestmark = pytest.mark.integration


def test_a_channel_sends_its_commands_through_one_client_until_its_pool_is_replaced(
    redis_server: str,
) -> None:
    with Connection(redis_server, transport="worker.transport:Transport") as connection:
        channel = connection.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.connection_pool is channel.pool
        given = object()
        with channel.conn_or_acquire(given) as passed:
            assert passed is given
        channel._disconnect_pools()  # what kombu does after a fork or a lost connection
        with channel.conn_or_acquire() as after:
            assert after is not first and after.connection_pool is channel.pool
            assert after.ping()
        # and kombu's own commands work through it: a message in, and out again
        queue = connection.SimpleQueue("transport-test")
        queue.put({"n": 1})
        assert queue.get(timeout=5).payload == {"n": 1}
        queue.close()


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("redis://127.0.0.1:6399/0", "worker.transport:Transport"),
        ("rediss://cache.internal:6380/0", None),  # kombu's own: it turns the scheme into TLS
    ],
)
def test_the_app_uses_the_shared_client_transport_for_plain_redis_urls(
    monkeypatch: pytest.MonkeyPatch, url: str, transport: str | None
) -> None:
    monkeypatch.setattr("worker.app.broker_url", lambda: url)
    assert broker_settings()["broker_transport"] == transport
