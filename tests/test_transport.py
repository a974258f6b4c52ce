"""The broker transport (worker/transport.py): one redis-py client per channel, and the messages a
worker took kept in memory, with the unacked index brought up to date in batches."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from tests.conftest import wait_for
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


def test_taking_and_acking_costs_no_command_and_the_index_follows_in_batches(
    tmp_path: Path,
) -> None:
    import redis

    from worker.embedded import EmbeddedRedis
    from worker.transport import REPORT_S

    with EmbeddedRedis.under(tmp_path) as server:
        stats = redis.Redis.from_url(server.url, decode_responses=True)
        with Connection(server.url, transport="worker.transport:Transport") as connection:
            queue = connection.SimpleQueue("transport-acks")
            for n in range(4):
                queue.put({"n": n})
            qos = connection.default_channel.qos
            qos._closed.set()  # no reporter thread: this test reports by hand
            stats.config_resetstat()
            taken = [queue.get(timeout=5) for _ in range(3)]
            taken[0].ack()
            taken[1].reject(requeue=False)
            commands = set(stats.info("commandstats")) - {"cmdstat_config|resetstat"}
            assert commands == {"cmdstat_brpop"}, commands  # 3 taken, 1 acked, 1 rejected
            assert stats.exists("unacked", "unacked_index") == 0
            qos.report()  # one round trip: only the message still held
            started = time.time()
            assert stats.zrange("unacked_index", 0, -1) == [taken[2].delivery_tag]
            assert stats.zscore("unacked_index", taken[2].delivery_tag) <= started
            fourth = queue.get(timeout=5)
            taken[2].ack()
            qos.report()
            assert stats.zrange("unacked_index", 0, -1) == [fourth.delivery_tag]
            assert stats.info("commandstats")["cmdstat_zadd"]["calls"] == 2
            assert "cmdstat_multi" not in stats.info("commandstats")
            queue.close()  # the channel closes: the message it took and did not ack goes back
        assert stats.exists("unacked", "unacked_index") == 0
        [back] = stats.lrange("transport-acks", 0, -1)
        assert base64.b64decode(json.loads(back)["body"]) == fourth.body
        assert REPORT_S * 1000 < 400  # within reconcile's CONFIRM_MS (below)


def test_the_reporter_records_a_held_message_within_its_period_and_a_requeue_puts_it_back(
    tmp_path: Path,
) -> None:
    import redis

    from worker.embedded import EmbeddedRedis
    from worker.republisher import CONFIRM_MS
    from worker.transport import REPORT_S

    assert REPORT_S * 1000 < CONFIRM_MS
    with EmbeddedRedis.under(tmp_path) as server:
        stats = redis.Redis.from_url(server.url, decode_responses=True)
        with Connection(server.url, transport="worker.transport:Transport") as connection:
            queue = connection.SimpleQueue("transport-held")
            queue.put({"n": 1})
            message = queue.get(timeout=5)
            wait_for(lambda: stats.zcard("unacked_index") == 1, REPORT_S * 10, "the report")
            message.requeue()  # (kombu's reject with requeue) back at the head, from memory
            [back] = stats.lrange("transport-held", 0, -1)
            assert base64.b64decode(json.loads(back)["body"]) == message.body
            assert json.loads(back)["headers"]["redelivered"] is True
            wait_for(lambda: stats.zcard("unacked_index") == 0, REPORT_S * 10, "the report")
            assert queue.get(timeout=5).body == message.body
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


def test_a_requeue_that_fails_leaves_the_message_no_longer_held(
    redis_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker requeues when Redis fails; if putting the message back fails too, the channel
    must not go on saying it holds it (reconcile would wait the visibility timeout)."""
    import redis

    with Connection(redis_server, transport="worker.transport:Transport") as connection:
        queue = connection.SimpleQueue("transport-failed-requeue")
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        qos = connection.default_channel.qos
        assert message.delivery_tag in qos._taken

        def broken(*_: Any, **__: Any) -> None:
            raise redis.ConnectionError("Redis is away")

        monkeypatch.setattr(connection.default_channel, "_do_restore_message", broken)
        with pytest.raises(redis.ConnectionError):
            message.requeue()
        assert message.delivery_tag not in qos._taken
        qos.report()
        assert message.delivery_tag not in qos._reported
        queue.close()
