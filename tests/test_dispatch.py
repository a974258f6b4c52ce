"""The messages ``create.lua`` queues are the ones Celery would send: same headers, same
properties, the same body, read the same by kombu (on the embedded server, no worker)."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def test_a_filled_template_is_the_message_send_task_queues(redis_server: str, client: Any) -> None:
    from celery import Celery

    from worker.app import app as ours
    from worker.dispatch import Messages, queue_key

    app = Celery("contactsync", broker=redis_server)
    app.conf.broker_transport_options = ours.conf.broker_transport_options
    job_id = uuid.uuid4().hex
    for priority, kombu_priority in (("realtime", 0), ("bulk", 9)):
        queue = f"dispatch-test-{priority}"
        app.send_task(
            "noojee.deliver", args=[job_id], task_id=job_id, queue=queue, priority=kombu_priority
        )
        key = queue_key(app, queue, priority)
        celery_made = json.loads(client.rpop(key))
        template = Messages(app).template("noojee.deliver", queue, priority)
        assert template.key == key
        ours_made = json.loads(template.fill(job_id, 1764612345678))

        # The body: Celery's base64 of the JSON, ours the JSON itself (no body encoding).
        assert base64.b64decode(celery_made.pop("body")).decode() == ours_made.pop("body")
        assert celery_made["properties"].pop("body_encoding") == "base64"
        assert "body_encoding" not in ours_made["properties"]
        # kombu's delivery tag: a uuid4 of its own in Celery's, the job id and when in ours.
        celery_made["properties"].pop("delivery_tag")
        assert ours_made["properties"].pop("delivery_tag") == f"{job_id}.1764612345678"
        assert ours_made == celery_made


def test_kombu_reads_a_filled_template_as_it_reads_celery_s_message(redis_server: str) -> None:
    from kombu import Connection, Queue

    from worker.app import app as ours
    from worker.dispatch import Messages

    job_id = uuid.uuid4().hex
    with Connection(redis_server, transport_options=ours.conf.broker_transport_options) as conn:
        queue = Queue("dispatch-test-read", channel=conn.default_channel)
        queue.declare()
        template = Messages(ours).template("noojee.deliver", queue.name, "bulk")
        conn.default_channel.client.lpush(template.key, template.fill(job_id))
        message = queue.get(no_ack=True)
        assert message is not None
        assert message.decode() == [
            [job_id],
            {},
            {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
        ]
        assert message.headers["id"] == job_id and message.headers["task"] == "noojee.deliver"
        assert message.properties["priority"] == 9
