"""The delivery base task's rules (calling, in-process retries, settlement) with a scripted
connector and the ledger on fakeredis: no server, no worker."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
from celery.exceptions import Ignore, Reject

from tasks import delivery
from tasks.delivery import Answer, DeliveryTask, NotConfigured
from tasks.outcomes import Delivered, Outcome, Rejected, Retry, Review
from tests.test_ledger import new_job
from worker.ledger import Ledger, now_ms
from worker.settings import RetrySettings, Settings

SECRET = "k-secret-api-key"


@dataclass
class ScriptedConnector:
    """Answers with the next outcome of ``script`` (the last one repeats)."""

    script: list[Outcome | Exception]
    answer: str = "HTTP 200 {}"
    calls: int = 0
    gate: Any = None

    def send(self, job: Any) -> Answer:
        self.calls += 1
        step = self.script[min(self.calls, len(self.script)) - 1]
        if isinstance(step, Exception):
            raise step
        return Answer(step, self.answer)

    def prepare(self, job: Any) -> Any:
        return lambda: self.send(job)

    def secrets(self) -> list[str]:
        return [SECRET]


@dataclass
class Harness:
    ledger: Ledger
    task: DeliveryTask
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def job(
        self,
        window_ms: int = 60_000,
        kind: str = "noojee.update",
        data: dict[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        payload = json.dumps(
            data
            or {
                "template_id": 41,
                "campaign_id": 41,
                "allocation_id": 38,
                "external_lead_id": "L1",
                "disposition": "Sale",
                "fields": {"FirstPhone": "0383218199"},
            }
        )
        destination = kind.partition(".")[0]
        self.ledger.create(
            new_job(
                payload=payload,
                retry_until_ms=now_ms() + window_ms,
                kind=kind,
                destination=destination,
                queue=destination,
                task=f"{destination}.deliver",
            )
        )
        if fields:
            self.ledger.r.hset(self.ledger.job_key("j1"), mapping=fields)
        return "j1"

    def run(self, connector: ScriptedConnector) -> Any:
        type(self.task)._connector = connector
        try:
            self.task.deliver("j1")
        except Ignore:
            pass
        return self.ledger.get("j1", with_history=True)


@functools.cache
def _test_task() -> DeliveryTask:
    """A task on the real Celery app (so it has a request context), registered once."""
    from worker.app import app

    @app.task(base=DeliveryTask, bind=True, name="test.deliver", shared=False)
    def deliver(self: DeliveryTask, job_id: str) -> dict[str, Any]:
        return self.deliver(job_id)

    return app.tasks["test.deliver"]  # type: ignore[no-any-return]


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    import tasks.noojee  # noqa: F401  (registers the job kind the payload uses)

    ledger = Ledger(fakeredis.FakeRedis(decode_responses=True), prefix="t:", retention_s=3600)
    settings = Settings(  # explicit: other tests' CONTACTSYNC_* variables must not leak in
        visibility_timeout_s=600,
        retry=RetrySettings(base_delay_s=5, max_delay_s=600, fault_attempts=5, fast_window_s=1),
    )
    monkeypatch.setattr(delivery, "get_settings", lambda: settings)
    monkeypatch.setattr(delivery, "runtime_ledger", lambda: ledger)
    # The destination's pause lives in Redis too: on fakeredis here, so the tests need no
    # server (they used to pass only after an integration test had pointed the process at one).
    monkeypatch.setattr(delivery, "redis_client", lambda: ledger.r)

    task = _test_task()
    h = Harness(ledger, task)
    monkeypatch.setattr(task, "send_event", lambda kind, **f: h.events.append((kind, f)))
    type(task)._pause = None
    yield h
    type(task)._connector = None
    type(task)._pause = None


def test_delivered_drops_the_payload(harness: Harness) -> None:
    harness.job()
    record = harness.run(ScriptedConnector([Delivered()]))
    assert (record.state, record.payload) == ("delivered", "")
    assert harness.events == []  # Celery itself reports SUCCESS


def test_busy_answers_are_retried_in_process_first(harness: Harness) -> None:
    harness.job()
    connector = ScriptedConnector([Retry("109", "busy", busy=True), Delivered()])
    record = harness.run(connector)
    assert (record.state, connector.calls) == ("delivered", 2)


def test_faults_back_off_through_redis_from_the_first_one(harness: Harness) -> None:
    harness.job()
    connector = ScriptedConnector([Retry("ConnectError", "refused", bounded=True)])
    record = harness.run(connector)
    assert (record.state, connector.calls, record.faults, record.retries) == ("retrying", 1, 1, 1)
    due = harness.ledger.r.zscore(harness.ledger.set_key("schedule"), "j1")
    assert due == record.next_attempt_at_ms
    assert now_ms() + 2_400 <= due <= now_ms() + 5_000  # base 5 s, jittered down to half
    assert harness.events[0][0] == "task-retried"


def test_faults_beyond_the_budget_go_to_review(harness: Harness) -> None:
    harness.job(faults=4)
    record = harness.run(ScriptedConnector([Retry("103", "exception", bounded=True)]))
    assert (record.state, record.last_code) == ("review", "103")
    assert record.last_reason.startswith("gave up after 5 faults")
    assert harness.events[0][0] == "task-review"


def test_backoff_doubles_with_each_retry_and_is_capped(harness: Harness) -> None:
    harness.job(retries=3)
    record = harness.run(ScriptedConnector([Retry("109", "busy")]))
    assert now_ms() + 19_000 <= record.next_attempt_at_ms <= now_ms() + 40_000  # 5 s * 2**3


def test_the_last_retry_lands_at_the_end_of_the_window(harness: Harness) -> None:
    harness.job(window_ms=1_000, retries=6)  # backoff would be 160-320 s
    record = harness.run(ScriptedConnector([Retry("109", "busy")]))
    assert record.state == "retrying"
    assert record.next_attempt_at_ms == record.retry_until_ms


def test_a_retry_after_the_window_closed_goes_to_review_never_silence(harness: Harness) -> None:
    harness.job(window_ms=0)
    record = harness.run(ScriptedConnector([Retry("109", "busy")]))
    assert record.state == "review"
    assert "retry window closed" in record.last_reason


def test_rejected_is_dead_lettered_with_its_reason(harness: Harness) -> None:
    harness.job()
    record = harness.run(ScriptedConnector([Rejected("104", "DNC")]))
    assert (record.state, record.last_reason) == ("rejected", "DNC")
    assert harness.ledger.listing("rejected")[0][0] == "j1"
    assert harness.events == [
        (
            "task-deadletter",
            {
                "reason": "104: DNC",
                "result": (
                    "REJECTED: 104: DNC (job state: rejected; act on it in the console, "
                    "/console/jobs/j1, or `contactsync jobs show j1`)"
                ),
            },
        )
    ]  # what Flower shows as the task's Result


def test_review_keeps_the_payload_for_the_operator(harness: Harness) -> None:
    harness.job()
    record = harness.run(ScriptedConnector([Review("110", "conflict")]))
    assert record.state == "review"
    assert json.loads(record.payload)["fields"] == {"FirstPhone": "0383218199"}


def test_a_recorded_answer_that_was_never_settled_is_settled_without_calling_again(
    harness: Harness,
) -> None:
    job_id = harness.job()
    harness.ledger.record_attempt(
        job_id,
        {"event": "attempt", "outcome": "review", "code": "110", "reason": "conflict"},
        fault=False,
    )
    connector = ScriptedConnector([Delivered()])
    record = harness.run(connector)  # as if Redis failed after the 110 was recorded
    assert (record.state, record.last_code, connector.calls) == ("review", "110", 0)


def test_answers_and_reasons_are_scrubbed_of_credentials(harness: Harness) -> None:
    harness.job()
    connector = ScriptedConnector(
        [Review("500", f"echoed apiKey={SECRET}")], answer=f"<html>GET /x?apiKey={SECRET}</html>"
    )
    record = harness.run(connector)
    stored = json.dumps(harness.ledger.r.hgetall(harness.ledger.job_key("j1")))
    stored += json.dumps(record.history) + json.dumps(harness.events)
    assert SECRET not in stored


def test_a_destination_without_configuration_keeps_its_jobs_waiting(harness: Harness) -> None:
    harness.job()
    record = harness.run(ScriptedConnector([NotConfigured("CONTACTSYNC_X__URL is not set")]))
    assert (record.state, record.last_code, record.faults) == ("retrying", "not-configured", 0)


def test_a_bug_in_a_connector_goes_to_review_without_quoting_the_payload(
    harness: Harness,
) -> None:
    harness.job()
    record = harness.run(ScriptedConnector([ValueError("bad value 0383218199")]))
    assert (record.state, record.last_code) == ("review", "internal-error")
    assert "0383218199" not in record.last_reason


def test_a_redis_failure_mid_job_puts_the_message_back(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    harness.job()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("connection reset")

    monkeypatch.setattr(harness.ledger, "transition", broken)  # as it settles
    type(harness.task)._connector = ScriptedConnector([Delivered()])
    with pytest.raises(Reject) as rejected:
        harness.task.deliver("j1")
    assert rejected.value.requeue is True
    record = harness.ledger.get("j1")
    assert record is not None and record.lock == ""  # no lease to wait out


#: A job of each destination that carries a phone number and a name (Mission Capital's job
#: holds only the application id, which is public).
PERSONAL_JOBS = {
    "noojee.update": {
        "template_id": 41,
        "campaign_id": 41,
        "allocation_id": 38,
        "external_lead_id": "L1",
        "disposition": "Sale",
        "fields": {"MobilePhone": "0412345678", "Name": "Jane Smith"},
    },
    "trendsic.contact_connection": {
        "contact_id": 7,
        "agent_id": 3,
        "contact": {"Phone": "0412345678", "Name": "Jane Smith"},
    },
    "expandable.contact_update": {
        "CUSTOMER_ID": "C1",
        "CUST_CONTACT": "1",
        "CELL_PHONE_NO": "0412345678",
        "FIRST_NAME": "Jane Smith",
    },
}


@pytest.mark.parametrize("kind", sorted(PERSONAL_JOBS))
def test_a_destination_message_echoing_the_jobs_phone_and_name_is_stored_masked(
    harness: Harness, kind: str
) -> None:
    from tasks.models import load_kinds

    load_kinds()
    harness.job(kind=kind, data=PERSONAL_JOBS[kind])
    echo = 'LEAD_NOT_UPDATED: lead MobilePhone=0412345678, Name=JANE SMITH ("Jane Smith")'
    connector = ScriptedConnector(
        [Review("110", f"conflict: {echo}")],
        answer=f'HTTP 400 {{"code": 110, "message": "{echo}"}}',
    )
    record = harness.run(connector)

    kept = harness.ledger.r.hgetall(harness.ledger.job_key("j1"))
    kept.pop("payload")  # the job itself, kept for the operator (masked when shown)
    stored = json.dumps(kept) + json.dumps(record.history) + json.dumps(harness.events)
    assert record.state == "review"
    assert "0412345678" not in stored and "jane smith" not in stored.lower()
    assert "0***78" in record.last_answer and "J***th" in record.last_answer  # as the payload
    assert "LEAD_NOT_UPDATED" in record.last_answer and "conflict" in record.last_reason


def test_public_fields_and_short_values_are_not_scrubbed() -> None:
    from worker.redaction import personal_values, scrub_personal

    values = personal_values(
        {
            "template_id": 41,
            "disposition": "Sale",
            "State": "WA",
            "fields": {"Name": "Zoë Ng", "Phone": "0412345678"},
        },
        public={"template_id", "disposition"},
    )
    assert values == ["Zoë Ng", "0412345678"]
    text = 'Sale of Zoë Ng in WA, {"n": "Zo\\u00eb Ng"}, call 0412345678'
    assert scrub_personal(text, values) == 'Sale of Z***Ng in WA, {"n": "Z***Ng"}, call 0***78'
