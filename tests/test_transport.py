"""The broker transport (worker/transport.py): one redis-py client per channel, and kombu's record
of taken messages kept without MULTI/EXEC."""

from __future__ import annotations

import base64
import json
from pathlib import Path

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


def test_a_taken_message_is_recorded_and_acked_without_transactions_and_restored_if_not(
    tmp_path: Path,
) -> None:
    import redis

    from worker.embedded import EmbeddedRedis

    with EmbeddedRedis.under(tmp_path) as server:
        stats = redis.Redis.from_url(server.url, decode_responses=True)
        with Connection(server.url, transport="worker.transport:Transport") as connection:
            queue = connection.SimpleQueue("transport-acks")
            for n in range(3):
                queue.put({"n": n})
            stats.config_resetstat()
            taken = [queue.get(timeout=5) for _ in range(3)]
            assert stats.hlen("unacked") == 3 and stats.zcard("unacked_index") == 3
            taken[0].ack()
            taken[1].reject(requeue=False)
            assert stats.hlen("unacked") == 1 and stats.zcard("unacked_index") == 1
            commands = stats.info("commandstats")
            assert "cmdstat_multi" not in commands and "cmdstat_exec" not in commands
            assert commands["cmdstat_zadd"]["calls"] == 3 and commands["cmdstat_hdel"]["calls"] == 2
            queue.close()  # the channel closes: the message it took and did not ack goes back
        assert stats.hlen("unacked") == 0 and stats.zcard("unacked_index") == 0
        [back] = stats.lrange("transport-acks", 0, -1)
        assert base64.b64decode(json.loads(back)["body"]) == taken[2].body


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
