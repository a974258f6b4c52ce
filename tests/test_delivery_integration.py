"""Acceptance of the foundation: real Valkey, a real Celery worker, the simulator over HTTP."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import httpx
import pytest

from tests.conftest import (
    NOOJEE_PLACE,
    PERSONAL_VALUES,
    Simulator,
    log_text,
    new_lead_id,
    run_cli,
    sample_update,
    wait_for,
    wait_for_state,
)

pytestmark = pytest.mark.integration


def test_109_is_retried_then_delivered(stack: Any, simulator: Simulator, ledger: Any) -> None:
    from producers import submit

    lead = new_lead_id()
    simulator.script(lead, [109, 109, 0])
    job_id = submit(sample_update(lead))

    record = wait_for_state(ledger, job_id, ("delivered",))
    codes = [e["code"] for e in reversed(record.history) if e["event"] == "attempt"]
    assert codes == ["109", "109", "0"]
    assert record.attempts == 3
    assert simulator.calls(lead) == 3


def test_conflict_110_goes_to_review_with_payload_intact_and_requeue_delivers(
    stack: Any, simulator: Simulator, ledger: Any
) -> None:
    from producers import submit
    from producers.review import requeue

    lead = new_lead_id()
    simulator.script(lead, [110, 0])
    job = sample_update(lead)
    job_id = submit(job)

    record = wait_for_state(ledger, job_id, ("review", "delivered", "rejected"))
    assert record.state == "review"
    assert record.last_code == "110"
    assert "edited the lead" in record.last_reason
    assert json.loads(record.payload) == json.loads(job.model_dump_json())
    assert job_id in [i for i, _ in ledger.listing("review", 0, 10_000)]
    assert simulator.calls(lead) == 1  # 110 is never retried blindly

    requeue(job_id, {}, by="test-operator")
    record = wait_for_state(ledger, job_id, ("delivered",))
    stored = simulator.lead(lead)
    assert stored is not None
    assert stored["FirstPhone"] == "0383218199"
    assert stored["njDisposition"] == "Sale"
    events = [e["event"] for e in reversed(record.history)]
    assert events.index("review") < events.index("requeued") < events.index("delivered")
    requeued = next(e for e in record.history if e["event"] == "requeued")
    assert requeued["by"] == "test-operator"
    assert job_id not in [i for i, _ in ledger.listing("review", 0, 10_000)]


def test_requeue_with_an_edit_is_revalidated_and_delivers_the_edit(
    stack: Any, simulator: Simulator, ledger: Any
) -> None:
    from producers import submit
    from producers.review import JobValidationError, requeue

    lead = new_lead_id()
    simulator.script(lead, [110, 0])
    job_id = submit(sample_update(lead))
    wait_for_state(ledger, job_id, ("review",))

    with pytest.raises(JobValidationError, match="callback_date"):
        requeue(job_id, {"njCallBackDate": "tomorrow"}, by="op")
    assert ledger.get(job_id).state == "review"  # a refused edit changes nothing

    requeue(job_id, {"disposition": "Callback", "SecondPhone": "0399990000"}, by="op")
    wait_for_state(ledger, job_id, ("delivered",))
    stored = simulator.lead(lead)
    assert stored is not None
    assert (stored["njDisposition"], stored["SecondPhone"]) == ("Callback", "0399990000")


def test_dnc_104_is_rejected_with_its_reason(stack: Any, simulator: Simulator, ledger: Any) -> None:
    from producers import submit

    lead = new_lead_id()
    simulator.script(lead, [104])
    job_id = submit(sample_update(lead))

    record = wait_for_state(ledger, job_id, ("rejected", "review", "delivered"))
    assert record.state == "rejected"
    assert record.last_code == "104"
    assert "do-not-call" in record.last_reason
    assert job_id in [i for i, _ in ledger.listing("rejected", 0, 10_000)]
    assert simulator.calls(lead) == 1  # compliance: never retried


def test_unknown_code_goes_to_review(stack: Any, simulator: Simulator, ledger: Any) -> None:
    from producers import submit

    lead = new_lead_id()
    simulator.script(lead, [142])
    job_id = submit(sample_update(lead))
    record = wait_for_state(ledger, job_id, ("review", "rejected", "delivered"))
    assert (record.state, record.last_code) == ("review", "142")


def test_repeated_faults_end_in_review_not_silence(
    stack: Any, simulator: Simulator, ledger: Any
) -> None:
    from producers import submit

    lead = new_lead_id()
    simulator.script(lead, [103])  # EXCEPTION, every time
    job_id = submit(sample_update(lead))
    record = wait_for_state(ledger, job_id, ("review", "rejected", "delivered"))
    assert record.state == "review"
    assert record.faults == 3  # CONTACTSYNC_RETRY__FAULT_ATTEMPTS in the tests
    assert "gave up after 3 faults" in record.last_reason
    assert simulator.calls(lead) == 3
    # Each fault backed off through the Redis schedule, none was retried in-process.
    events = [e["event"] for e in reversed(record.history)]
    assert events == ["attempt", "retry", "attempt", "retry", "attempt", "review"]


def test_invalid_job_is_refused_at_submit_and_nothing_is_enqueued(stack: Any, ledger: Any) -> None:
    from worker.broker import redis_client

    before = (ledger.counts(), redis_client().llen("noojee"), redis_client().llen("noojee:9"))
    result = run_cli(
        "submit",
        "noojee-update",
        *NOOJEE_PLACE,
        "--lead-id",
        new_lead_id(),
        "--disposition",
        "Sale",
        "--callback-date",
        "24/11/2026",
        "--field",
        "Name=Jane Smith",
    )
    assert result.returncode == 2
    assert "callback_date" in result.stdout and "yyyy/MM/dd HH:mm" in result.stdout
    assert "phone field is required" in result.stdout
    assert "nothing was queued" in result.stdout
    assert "Jane Smith" not in result.stdout  # errors name the field, never the value
    after = (ledger.counts(), redis_client().llen("noojee"), redis_client().llen("noojee:9"))
    assert after == before


def test_same_idempotency_key_twice_reaches_the_simulator_once(
    stack: Any, simulator: Simulator, ledger: Any
) -> None:
    from producers import submit

    lead = new_lead_id()
    first = submit(sample_update(lead), idempotency_key=f"crm-event-{lead}")
    second = submit(sample_update(lead), idempotency_key=f"crm-event-{lead}")
    assert first == second
    wait_for_state(ledger, first, ("delivered",))
    # A third job to the same lead without the key is a new update: once it is delivered,
    # every earlier message has been consumed too (one worker, realtime FIFO).
    third = submit(sample_update(lead))
    wait_for_state(ledger, third, ("delivered",))
    assert simulator.calls(lead) == 2


def test_submit_many_delivers_each_job_once_and_honours_keys(
    stack: Any, simulator: Simulator, ledger: Any
) -> None:
    from producers import submit_many

    leads = [new_lead_id() for _ in range(30)]
    keys = [f"backfill-{lead}" for lead in leads]
    ids = submit_many([sample_update(lead) for lead in leads], idempotency_keys=keys)
    # The same jobs again (a re-run): the same ids, nothing new queued.
    again = submit_many([sample_update(lead) for lead in leads], idempotency_keys=keys)

    assert len(set(ids)) == 30 and again == ids
    for job_id in ids:
        wait_for_state(ledger, job_id, ("delivered",))
    assert [simulator.calls(lead) for lead in leads] == [1] * 30


def test_every_call_holds_a_permit_and_a_job_without_one_goes_back_unspent(
    stack: Any, simulator: Simulator, ledger: Any
) -> None:
    from producers import submit
    from tasks.noojee import pbx_gate
    from worker.settings import get_settings

    gate = pbx_gate(get_settings())  # the same gate as the workers': same PBX, same name
    held = []
    while (permit := gate.acquire("realtime", wait_s=0)) is not None:
        held.append(permit)  # every permit of the fleet is now ours
    try:
        lead = new_lead_id()
        job_id = submit(sample_update(lead))
        # The job waits at the gate, gives up after CONTACTSYNC_GATE__MAX_WAIT_S (0.5 s), goes
        # back to its queue and comes back to wait again: two different waiters seen.
        seen: set[str] = set()

        def waited_twice() -> bool:
            seen.update(str(t) for t in gate.client.zrange(f"{gate.prefix}waiters", 0, -1))
            return len(seen) >= 2

        wait_for(waited_twice, 20, "the job to wait at the gate twice")
        assert simulator.calls(lead) == 0
        record = ledger.get(job_id)
        assert record.attempts == 0 and record.retries == 0
    finally:
        for permit in held:
            gate.release(permit, 0.0)

    record = wait_for_state(ledger, job_id, ("delivered",))
    assert (record.attempts, record.faults, record.retries) == (1, 0, 0)
    assert simulator.calls(lead) == 1
    assert [e["event"] for e in record.history][::-1] == ["attempt", "delivered"]


def test_realtime_job_is_fetched_before_queued_bulk_jobs(stack: Any, ledger: Any) -> None:
    from producers import submit
    from worker.app import app

    app.control.cancel_consumer("noojee", reply=True)  # hold the queue still while we fill it
    try:
        bulk = [submit(sample_update(new_lead_id()), priority="bulk") for _ in range(20)]
        realtime = submit(sample_update(new_lead_id()), priority="realtime")
    finally:
        app.control.add_consumer("noojee", reply=True)

    def delivered_ms(job_id: str) -> int:
        return int(wait_for_state(ledger, job_id, ("delivered",)).updated_at_ms)

    realtime_at = delivered_ms(realtime)
    bulk_at = sorted(delivered_ms(job_id) for job_id in bulk)
    # Submitted last, delivered first (within the worker's 4 threads fetching at the same moment).
    assert sum(at < realtime_at for at in bulk_at) < 4


def test_flower_lists_delivered_task_and_no_personal_data_anywhere(
    stack: Any, simulator: Simulator, ledger: Any
) -> None:
    from producers import submit

    lead, conflict, dnc = new_lead_id(), new_lead_id(), new_lead_id()
    simulator.script(conflict, [110])
    simulator.script(dnc, [104])
    delivered = submit(sample_update(lead))
    review = submit(sample_update(conflict))
    rejected = submit(sample_update(dnc))
    for job_id, state in ((delivered, "delivered"), (review, "review"), (rejected, "rejected")):
        wait_for_state(ledger, job_id, (state,))

    auth = stack.flower_credentials
    assert httpx.get(f"{stack.flower_url}/api/tasks").status_code == 401  # basic auth is on

    def flower_task(job_id: str, state: str) -> Any:
        answer = httpx.get(f"{stack.flower_url}/api/task/info/{job_id}", auth=auth)
        return (
            answer.json() if answer.status_code == 200 and answer.json()["state"] == state else None
        )

    info = wait_for(lambda: flower_task(delivered, "SUCCESS"), 20, "Flower to show SUCCESS")
    assert info["name"] == "noojee.deliver"
    assert info["args"] == f"['{delivered}']"
    wait_for(lambda: flower_task(review, "REVIEW"), 20, "Flower to show REVIEW")
    wait_for(lambda: flower_task(rejected, "DEADLETTER"), 20, "Flower to show DEADLETTER")

    pages = [
        httpx.get(f"{stack.flower_url}{path}", auth=auth).text
        for path in (
            "/api/tasks",
            f"/api/task/info/{delivered}",
            f"/api/task/info/{review}",
            "/api/workers",
            "/tasks",
            "/",
        )
    ]
    secrets = (*PERSONAL_VALUES, "sandbox-key", "test-flower-password")
    for text in [*pages, log_text(stack.log_dir)]:
        for secret in secrets:
            assert secret not in text


def test_worker_killed_mid_call_does_not_lose_the_job(
    stack: Any, simulator: Simulator, ledger: Any
) -> None:
    from producers import submit

    simulator.configure(latency_s=3.0, jitter_s=0.0)
    try:
        lead = new_lead_id()
        job_id = submit(sample_update(lead))
        wait_for(lambda: simulator.stats()["in_flight"] >= 1, 20, "the call to be inside the PBX")
        assert ledger.get(job_id).state == "running"
        victim = next(proc for name, proc, _ in stack._children if name == "worker-w1")
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        stack.stop_child("worker-w1")  # forget it: the stack checks that its children live
        simulator.configure(latency_s=0.03, jitter_s=0.005)
        stack.start_worker("w2")

        # Redelivered after visibility_timeout (14 s here) to the other worker.
        record = wait_for_state(ledger, job_id, ("delivered", "review", "rejected"), 90)
        assert record.state == "delivered"
        assert simulator.calls(lead) >= 1  # at least once: the killed call may have applied too
        w2_log = (stack.log_dir / "worker-w2.log").read_text()
        assert f"job {job_id} settled: delivered" in w2_log
    finally:
        simulator.configure(latency_s=0.03, jitter_s=0.005)


def _record_only(lead: str, due_in_ms: int = 0) -> str:
    """Record a job with no message on any queue, on the schedule ``due_in_ms`` from now."""
    import uuid

    from worker.ledger import NewJob, now_ms
    from worker.runtime import ledger as runtime_ledger

    job = sample_update(lead)
    job_id = uuid.uuid4().hex
    runtime_ledger().create(
        NewJob(
            id=job_id,
            kind=job.kind,
            destination="noojee",
            task="noojee.deliver",
            queue="noojee",
            priority="realtime",
            payload=job.model_dump_json(),
            retry_until_ms=now_ms() + 60_000,
        ),
        due_ms=now_ms() + due_in_ms,
    )
    return job_id


def test_a_job_recorded_without_a_message_is_sent_from_the_schedule(
    stack: Any, simulator: Simulator, ledger: Any
) -> None:
    lead = new_lead_id()
    job_id = _record_only(lead)  # in the ledger and its schedule; no message on any queue
    wait_for_state(ledger, job_id, ("delivered",))
    assert simulator.calls(lead) == 1


def test_a_retry_waiting_in_redis_needs_no_worker_memory_to_happen(
    stack: Any, simulator: Simulator, ledger: Any
) -> None:
    from worker.ledger import now_ms

    lead = new_lead_id()
    job_id = _record_only(lead, due_in_ms=600_000)
    # As if a worker had answered 109, scheduled the retry and then been restarted: all that is
    # left is the ledger's state and its schedule entry.
    ledger.claim(job_id, "gone-worker", 60_000)
    ledger.transition(
        job_id,
        "retrying",
        {"event": "retry", "code": "109"},
        token="gone-worker",
        due_ms=now_ms() + 300,
    )
    record = wait_for_state(ledger, job_id, ("delivered",))
    assert simulator.calls(lead) == 1
    assert [e["event"] for e in record.history][:2] == ["delivered", "attempt"]


def test_a_message_taken_by_a_worker_killed_before_kombu_recorded_it_is_sent_again(
    stack: Any, simulator: Simulator, ledger: Any
) -> None:
    """A worker takes a message with BRPOP and lists it in the unacked index only afterwards (at
    its channel's next report); a worker killed in between took the message with it. Here the
    "worker" that takes it is a plain client that never lists it: from Redis's side, exactly
    what that kill leaves."""
    from producers import submit
    from worker.app import app
    from worker.broker import redis_client
    from worker.dispatch import queue_key
    from worker.republisher import RECONCILE_S, TRANSIT_GRACE_MS

    workers = [name for name, _, _ in stack._children if name.startswith("worker-")]
    for name in workers:
        stack.stop_child(name)  # nobody else may take it first
    try:
        lead = new_lead_id()
        job_id = submit(sample_update(lead))
        taken = redis_client().rpop(queue_key(app, "noojee", "realtime"))
        assert taken is not None and job_id in taken
        assert ledger.get(job_id).state == "queued"  # and its message is gone for good
    finally:
        for name in workers:
            stack.start_worker(name.removeprefix("worker-"))
        stack.wait_for_workers(len(workers))
    bound_s = TRANSIT_GRACE_MS / 1000 + RECONCILE_S + 2
    record = wait_for_state(ledger, job_id, ("delivered",), timeout_s=bound_s + 5)
    assert record.updated_at_ms - record.submitted_at_ms <= (bound_s + 5) * 1000
    assert "message-lost" in [e["event"] for e in record.history]
    assert simulator.calls(lead) == 1
