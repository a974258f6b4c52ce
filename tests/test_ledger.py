"""The ledger's Lua scripts and the settlement rules, on fakeredis (no server needed)."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest
from celery.exceptions import Ignore

from tasks.outcomes import Delivered, Rejected, Retry, Review
from worker.ledger import Ledger, LedgerConflict, NewJob, now_ms
from worker.republisher import Republisher


@pytest.fixture
def ledger() -> Ledger:
    return Ledger(fakeredis.FakeRedis(decode_responses=True), prefix="t:", retention_s=3600)


def new_job(job_id: str = "j1", key: str | None = None, **overrides: Any) -> NewJob:
    values: dict[str, Any] = {
        "id": job_id, "kind": "noojee.update", "destination": "noojee", "task": "noojee.deliver",
        "queue": "noojee", "priority": "bulk", "payload": json.dumps({"x": 1}),
        "retry_until_ms": now_ms() + 60_000, "idempotency_key": key,
    }  # fmt: skip
    values.update(overrides)
    return NewJob(**values)


def test_same_idempotency_key_returns_the_first_job_and_records_nothing_new(
    ledger: Ledger,
) -> None:
    assert ledger.create(new_job("j1", key="k")) == ("j1", True)
    assert ledger.create(new_job("j2", key="k")) == ("j1", False)
    assert ledger.get("j2") is None
    assert ledger.counts()["queued"] == 1


def test_without_a_key_every_submission_is_a_new_job(ledger: Ledger) -> None:
    ledger.create(new_job("j1"))
    ledger.create(new_job("j2"))
    assert ledger.counts()["queued"] == 2


def test_new_job_waits_in_the_outbox_until_published(ledger: Ledger) -> None:
    ledger.create(new_job("j1"), outbox_grace_ms=0)
    ledger.create(new_job("j2"), outbox_grace_ms=0)
    ledger.published("j2")
    assert [job_id for job_id, _ in ledger.claim_due("outbox", lease_ms=1000)] == ["j1"]


def test_one_runner_per_job_and_terminal_jobs_are_not_claimed(ledger: Ledger) -> None:
    ledger.create(new_job())
    assert ledger.claim("j1", "a", 10_000).status == "claimed"
    assert ledger.claim("j1", "b", 10_000).status == "locked"
    ledger.transition("j1", "delivered", {"event": "delivered", "code": "0"}, token="a")
    assert ledger.claim("j1", "c", 10_000).status == "terminal"
    assert ledger.claim("nope", "c", 10_000).status == "missing"


def test_a_worker_whose_claim_expired_cannot_settle(ledger: Ledger) -> None:
    ledger.create(new_job())
    ledger.claim("j1", "a", 10_000)
    ledger.r.delete(ledger.lock_key("j1"))  # the lease ran out
    ledger.claim("j1", "b", 10_000)
    with pytest.raises(LedgerConflict, match="claim expired"):
        ledger.transition("j1", "delivered", {"event": "delivered"}, token="a")


def test_transitions_keep_counts_sets_and_history_in_step(ledger: Ledger) -> None:
    ledger.create(new_job())
    ledger.claim("j1", "a", 10_000)
    ledger.transition("j1", "review", {"event": "review", "code": "110", "reason": "conflict"},
                      token="a")  # fmt: skip
    record = ledger.get("j1", with_history=True)
    assert record is not None
    assert (record.state, record.last_code, record.last_reason) == ("review", "110", "conflict")
    assert [e["event"] for e in record.history] == ["review", "submitted"]
    assert ledger.listing("review")[0][0] == "j1"
    assert ledger.counts() == {"queued": 0, "running": 0, "retrying": 0, "delivered": 0,
                               "review": 1, "rejected": 0}  # fmt: skip
    assert 0 < ledger.r.ttl(ledger.job_key("j1")) <= 3600  # terminal: kept for the retention

    ledger.transition("j1", "queued", {"event": "requeued"}, allowed=("review", "rejected"))
    assert ledger.listing("review") == []
    assert ledger.r.ttl(ledger.job_key("j1")) == -1  # live again: never expires
    with pytest.raises(LedgerConflict, match="is queued, not review"):
        ledger.transition("j1", "rejected", {"event": "discarded"}, allowed=("review",))


def test_release_keeps_a_schedule_entry_that_was_rescheduled_meanwhile(ledger: Ledger) -> None:
    ledger.r.zadd(ledger.set_key("schedule"), {"j1": 1, "j2": 1})
    leased = dict(ledger.claim_due("schedule", lease_ms=30_000))
    assert set(leased) == {"j1", "j2"}
    assert ledger.claim_due("schedule", lease_ms=30_000) == []  # leased: not due again yet
    ledger.r.zadd(ledger.set_key("schedule"), {"j2": now_ms() + 5000})  # a new retry for j2
    ledger.release("schedule", "j1", leased["j1"])
    ledger.release("schedule", "j2", leased["j2"])
    assert ledger.r.zrange(ledger.set_key("schedule"), 0, -1) == ["j2"]


class FakeApp:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, int]] = []

    def send_task(
        self, name: str, args: list[str], task_id: str, queue: str, priority: int
    ) -> None:
        self.sent.append((task_id, queue, priority))


def test_republisher_sends_due_retries_and_skips_settled_jobs(ledger: Ledger) -> None:
    ledger.create(new_job("due"), outbox_grace_ms=0)
    ledger.create(new_job("done", priority="realtime"), outbox_grace_ms=0)
    ledger.claim("done", "a", 10_000)
    ledger.transition("done", "delivered", {"event": "delivered"}, token="a")
    app = FakeApp()
    Republisher(app, ledger).run_once()  # type: ignore[arg-type]
    assert app.sent == [("due", "noojee", 9)]
    assert ledger.r.zcard(ledger.set_key("outbox")) == 0


# -- settlement -------------------------------------------------------------------------------
@pytest.fixture
def settle(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``settle(outcome, faults=0, attempts=1)`` runs DeliveryTask._settle on a claimed job and
    returns (the job record, the Flower events sent)."""
    from tasks import delivery
    from worker.settings import RetrySettings, Settings

    events: list[tuple[str, dict[str, Any]]] = []
    settings = Settings(  # explicit: other tests' CONTACTSYNC_* variables must not leak in
        visibility_timeout_s=600,
        retry=RetrySettings(base_delay_s=5, max_delay_s=600, fault_attempts=5),
    )
    monkeypatch.setattr(delivery, "get_settings", lambda: settings)
    monkeypatch.setattr(delivery, "runtime_ledger", lambda: ledger)
    task = delivery.DeliveryTask()
    monkeypatch.setattr(task, "send_event", lambda kind, **fields: events.append((kind, fields)))

    def run(outcome: Any, faults: int = 0, attempts: int = 1, window_ms: int = 60_000) -> Any:
        ledger.create(new_job(retry_until_ms=now_ms() + window_ms))
        ledger.claim("j1", "tok", 10_000)
        ledger.r.hset(ledger.job_key("j1"), "attempts", attempts)
        try:
            task._settle(ledger, "j1", "tok", outcome, faults)
        except Ignore:
            pass
        return ledger.get("j1", with_history=True), events

    return run


def test_delivered_drops_the_payload(settle: Any) -> None:
    record, events = settle(Delivered())
    assert (record.state, record.payload) == ("delivered", "")
    assert events == []  # Celery itself reports SUCCESS


def test_retry_is_scheduled_in_redis_with_backoff(settle: Any, ledger: Ledger) -> None:
    record, events = settle(Retry("109", "busy"))
    assert record.state == "retrying"
    due = ledger.r.zscore(ledger.set_key("schedule"), "j1")
    assert due == record.next_attempt_at_ms > now_ms()
    assert events[0][0] == "task-retried"


def test_faults_beyond_the_budget_go_to_review(settle: Any) -> None:
    record, events = settle(Retry("103", "exception", bounded=True), faults=5)
    assert (record.state, record.last_code) == ("review", "103")
    assert record.last_reason.startswith("gave up after 5 faults")
    assert events[0][0] == "task-review"


def test_a_retry_past_the_window_goes_to_review_never_silence(settle: Any) -> None:
    record, _ = settle(Retry("109", "busy"), attempts=10, window_ms=1000)
    assert record.state == "review"
    assert "retry window closed" in record.last_reason


def test_rejected_is_dead_lettered_with_its_reason(settle: Any, ledger: Ledger) -> None:
    record, events = settle(Rejected("104", "DNC"))
    assert (record.state, record.last_reason) == ("rejected", "DNC")
    assert ledger.listing("rejected")[0][0] == "j1"
    assert events == [("task-deadletter", {"reason": "104: DNC"})]


def test_review_keeps_the_payload_for_the_operator(settle: Any) -> None:
    record, _ = settle(Review("110", "conflict"))
    assert (record.state, json.loads(record.payload)) == ("review", {"x": 1})


def test_a_redis_failure_mid_job_puts_the_message_back(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis
    from celery.exceptions import Reject

    from tasks import delivery

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("connection reset")

    monkeypatch.setattr(delivery, "runtime_ledger", lambda: ledger)
    monkeypatch.setattr(ledger, "claim", broken)
    with pytest.raises(Reject) as rejected:
        delivery.DeliveryTask().deliver("j1")
    assert rejected.value.requeue is True


def test_a_duplicate_of_a_running_job_is_checked_again_after_the_lease(ledger: Ledger) -> None:
    ledger.create(new_job())
    ledger.claim("j1", "a", 10_000)
    ledger.recheck("j1", due_ms=123)
    ledger.recheck("j1", due_ms=456)  # the first time set stays
    assert ledger.r.zscore(ledger.set_key("schedule"), "j1") == 123
