"""The ledger's Lua scripts and the settlement rules, on fakeredis (no server needed)."""

from __future__ import annotations

import json
import threading
from typing import Any

import fakeredis
import pytest

from tests.conftest import end_lease
from worker.dispatch import Template
from worker.ledger import Ledger, LedgerConflict, NewJob, job_id_for, now_ms
from worker.republisher import Republisher

QUEUE = "noojee:9"


@pytest.fixture
def ledger() -> Ledger:
    return Ledger(fakeredis.FakeRedis(decode_responses=True), prefix="t:", retention_s=3600)


def new_job(job_id: str = "j1", key: str | None = None, **overrides: Any) -> NewJob:
    values: dict[str, Any] = {
        "id": job_id,
        "kind": "noojee.update",
        "destination": "noojee",
        "task": "noojee.deliver",
        "queue": "noojee",
        "priority": "bulk",
        "payload": json.dumps({"x": 1}),
        "retry_until_ms": now_ms() + 60_000,
        "idempotency_key": key,
    }
    values.update(overrides)
    return NewJob(**values)


def queue(ledger: Ledger, job: NewJob) -> tuple[str, bool]:
    """Record ``job`` and queue a message for it, as ``submit`` does."""
    return ledger.create(job, Template(QUEUE, '{"job": "@@job@@"}'))


def test_a_new_job_is_recorded_and_its_message_queued_in_one_step(ledger: Ledger) -> None:
    assert queue(ledger, new_job("j1", client="crm")) == ("j1", True)
    record = ledger.get("j1")
    assert record is not None
    assert (record.state, record.kind, record.task, record.queue, record.client) == (
        "queued",
        "noojee.update",
        "noojee.deliver",
        "noojee",
        "crm",
    )
    assert ledger.r.lrange(QUEUE, 0, -1) == ['{"job": "j1"}']
    assert ledger.size("schedule") == 0


def test_same_idempotency_key_returns_the_first_job_and_records_nothing_new(
    ledger: Ledger,
) -> None:
    first = job_id_for("noojee", "k")
    assert queue(ledger, new_job(first, key="k")) == (first, True)
    assert queue(ledger, new_job(first, key="k", payload="{}")) == (first, False)
    assert ledger.counts()["queued"] == 1
    assert ledger.r.llen(QUEUE) == 1
    assert json.loads(ledger.get(first).payload) == {"x": 1}
    assert job_id_for("trendsic", "k") != first  # keys are per destination


def test_without_a_key_every_submission_is_a_new_job(ledger: Ledger) -> None:
    queue(ledger, new_job("j1"))
    queue(ledger, new_job("j2"))
    assert ledger.counts()["queued"] == 2


def test_a_job_recorded_without_a_message_waits_on_the_schedule(ledger: Ledger) -> None:
    ledger.create(new_job("j1"))
    queue(ledger, new_job("j2"))  # (stores the queue's message template)
    assert ledger.r.llen(QUEUE) == 1
    assert ledger.due() == ["j1"]
    assert ledger.r.lrange(QUEUE, 0, -1) == ['{"job": "j1"}', '{"job": "j2"}']
    assert ledger.size("schedule") == 0


def test_one_runner_per_job_and_terminal_jobs_are_not_claimed(ledger: Ledger) -> None:
    queue(ledger, new_job())
    assert ledger.claim("j1", "a", 10_000).status == "claimed"
    assert ledger.claim("j1", "b", 10_000).status == "locked"
    ledger.transition("j1", "delivered", {"event": "delivered", "code": "0"}, token="a")
    assert ledger.claim("j1", "c", 10_000).status == "terminal"
    assert ledger.claim("nope", "c", 10_000).status == "missing"


def test_a_worker_whose_claim_expired_cannot_settle(ledger: Ledger) -> None:
    queue(ledger, new_job())
    ledger.claim("j1", "a", 10_000)
    end_lease(ledger, "j1")  # the lease ran out
    ledger.claim("j1", "b", 10_000)
    with pytest.raises(LedgerConflict, match="claim expired"):
        ledger.transition("j1", "delivered", {"event": "delivered"}, token="a")
    assert ledger.get("j1").lock == "b"  # type: ignore[union-attr]


def test_a_claim_whose_lease_ran_out_still_settles_if_nobody_took_the_job(ledger: Ledger) -> None:
    """The claim is the job hash's lock field; its lease only says when others may take it. A
    worker that was slow to renew, but whose job nobody claimed or reaped meanwhile, still
    records its answer: the call did happen, and nobody else made it."""
    queue(ledger, new_job())
    ledger.claim("j1", "a", 10_000)
    end_lease(ledger, "j1")
    assert ledger.renew({"j1": "a"}) == []  # renewing takes the lease up again
    end_lease(ledger, "j1")
    assert ledger.transition("j1", "delivered", {"event": "delivered"}, token="a") == "running"
    assert ledger.size("running") == 0


def test_a_claim_given_up_early_lets_the_next_worker_claim_at_once(ledger: Ledger) -> None:
    queue(ledger, new_job())
    ledger.claim("j1", "a", 10_000)
    ledger.unlock("j1", "someone else")  # not its claim: nothing changes
    assert ledger.claim("j1", "b", 10_000).status == "locked"
    ledger.unlock("j1", "a")
    assert ledger.claim("j1", "b", 10_000).status == "claimed"
    assert ledger.get("j1").lock == "b"  # type: ignore[union-attr]


def test_a_claim_answers_the_record_as_it_left_it(ledger: Ledger) -> None:
    """The claim reads the record once, before it changes it: what it answers must still be
    what the ledger holds after it."""
    queue(ledger, new_job())
    claim = ledger.claim("j1", "h/1/a", 10_000)
    assert claim.record == ledger.get("j1")
    assert claim.record is not None and claim.record.state == "running"
    # Again after a lease that ran out: every field the claim writes is in the record already.
    end_lease(ledger, "j1")
    again = ledger.claim("j1", "h/2/b", 10_000)
    assert again.status == "claimed" and again.record == ledger.get("j1")
    assert again.record is not None and again.record.lock == "h/2/b"


def test_the_lock_field_lives_while_the_job_runs(ledger: Ledger) -> None:
    queue(ledger, new_job())
    assert ledger.get("j1").lock == ""  # type: ignore[union-attr]
    ledger.claim("j1", "h/1/a", 10_000)
    assert ledger.get("j1").lock == "h/1/a"  # type: ignore[union-attr]
    ledger.transition("j1", "retrying", {"event": "retry"}, token="h/1/a", due_ms=now_ms())
    record = ledger.get("j1")
    assert record is not None and record.state == "retrying" and record.lock == ""


def test_running_jobs_are_counted_by_the_running_set_whoever_ends_their_run(
    ledger: Ledger,
) -> None:
    """No script keeps a count of running jobs: the ``running`` set is it, so a claim and a
    settle each spare a command. Every way a run ends takes the job out of the set."""
    for n in range(4):
        queue(ledger, new_job(f"j{n}"))
        ledger.claim(f"j{n}", f"host/{n}/token", 10_000)
    assert ledger.counts()["running"] == 4
    assert ledger.counts()["queued"] == 0
    assert ledger.r.hget(ledger.counts_key, "running") is None
    ledger.transition("j0", "delivered", {"event": "delivered"}, token="host/0/token")
    ledger.unclaim("j1", "host/1/token")  # handed back at a full gate
    ledger.transition("j2", "review", {"event": "review"})  # an operator, without the lock
    assert ledger.counts()["running"] == 1
    assert ledger.reap(dead=["host/3"]) == ["j3"]  # its worker died
    assert ledger.counts() == {
        **dict.fromkeys(ledger.counts(), 0),
        "queued": 2,
        "delivered": 1,
        "review": 1,
    }


def test_transitions_keep_counts_sets_and_history_in_step(ledger: Ledger) -> None:
    queue(ledger, new_job())
    ledger.claim("j1", "a", 10_000)
    ledger.transition(
        "j1", "review", {"event": "review", "code": "110", "reason": "conflict"}, token="a"
    )
    record = ledger.get("j1", with_history=True)
    assert record is not None
    assert (record.state, record.last_code, record.last_reason) == ("review", "110", "conflict")
    assert [e["event"] for e in record.history] == ["review"]
    assert ledger.listing("review")[0][0] == "j1"
    assert ledger.counts() == {
        "queued": 0,
        "held": 0,
        "running": 0,
        "retrying": 0,
        "delivered": 0,
        "merged": 0,
        "superseded": 0,
        "review": 1,
        "rejected": 0,
    }
    assert ledger.r.ttl(ledger.job_key("j1")) == -1  # review waits for a person

    ledger.transition("j1", "queued", {"event": "requeued"}, allowed=("review", "rejected"))
    assert ledger.listing("review") == []
    assert ledger.r.ttl(ledger.job_key("j1")) == -1  # live again: never expires
    with pytest.raises(LedgerConflict, match="is queued, not review"):
        ledger.transition("j1", "rejected", {"event": "discarded"}, allowed=("review",))


class FakeApp:
    """What the republisher reads of a Celery app."""

    class conf:
        broker_transport_options: dict[str, str] = {}


def test_republisher_queues_due_jobs_and_skips_settled_ones(ledger: Ledger) -> None:
    queue(ledger, new_job("first"))
    ledger.r.delete(QUEUE)
    ledger.create(new_job("due"))
    ledger.create(new_job("done"))
    ledger.claim("done", "a", 10_000)
    ledger.transition("done", "delivered", {"event": "delivered"}, token="a")
    Republisher(FakeApp(), ledger, ["noojee"]).run_once()  # type: ignore[arg-type]
    assert ledger.r.lrange(QUEUE, 0, -1) == ['{"job": "due"}']
    assert ledger.size("schedule") == 0


def test_just_after_a_worker_died_what_it_had_taken_comes_back_within_seconds(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from worker import republisher

    ledger.create(new_job("taken"), Template(QUEUE, '{"headers": {"id": "@@job@@"}}'))
    ledger.r.delete(QUEUE)  # a worker took its message 2 s ago, and never claimed its job
    ledger.r.hset("unacked", "taken.1", "[...]")
    ledger.r.zadd("unacked_index", {"taken.1": time.time() - 2})
    clock = [now_ms() + 2_000]
    monkeypatch.setattr("worker.ledger.now_ms", lambda: clock[0])
    keeper = republisher.Republisher(FakeApp(), ledger, ["noojee"])  # type: ignore[arg-type]
    assert keeper.run_once() == 0  # it may just be busy: ten seconds' grace
    ledger.r.delete("t:reconcile:noojee")
    ledger.r.set("t:died", "1", px=republisher.QUICK_WINDOW_MS)  # the sweep found it dead
    assert keeper.run_once() == 0  # missing: seen once (it may be in a worker's hands)
    clock[0] += republisher.CONFIRM_MS
    ledger.r.delete("t:reconcile:noojee:quick")  # the next quick round, half a second on
    assert keeper.run_once() == 1  # still missing: sent again
    assert ledger.r.lrange(QUEUE, 0, -1) == ['{"headers": {"id": "taken"}}']


def test_the_unacked_index_forgets_takes_older_than_the_longest_hold(ledger: Ledger) -> None:
    """Workers list the messages they hold in the index and drop them as they ack; a killed
    worker's stay behind, and go once older than the longest a live worker may hold one."""
    import time

    keeper = Republisher(FakeApp(), ledger, ["noojee"])  # type: ignore[arg-type]
    held_s = keeper.held_ms / 1000
    ledger.r.zadd(
        "unacked_index",
        {"dead.1": time.time() - held_s - 5, "held.1": time.time() - held_s + 60},
    )
    keeper.forget_old_takes()
    assert ledger.r.zrange("unacked_index", 0, -1) == ["held.1"]


def test_a_due_retry_is_queued_with_its_message_in_the_step_that_takes_it_off(
    ledger: Ledger,
) -> None:
    queue(ledger, new_job())
    ledger.r.delete(QUEUE)
    ledger.claim("j1", "a", 10_000)
    ledger.transition("j1", "retrying", {"event": "retry"}, token="a", due_ms=now_ms() - 1)
    assert ledger.counts()["retrying"] == 1
    assert ledger.due() == ["j1"]
    assert (ledger.get("j1").state, ledger.counts()["queued"]) == ("queued", 1)
    assert ledger.r.lrange(QUEUE, 0, -1) == ['{"job": "j1"}']
    assert ledger.due() == []


def test_a_due_entry_of_a_running_job_is_left_to_its_runner(ledger: Ledger) -> None:
    queue(ledger, new_job())
    ledger.r.delete(QUEUE)
    ledger.claim("j1", "a", 10_000)
    ledger.recheck("j1", due_ms=now_ms() - 1)
    assert ledger.due() == []
    assert ledger.r.llen(QUEUE) == 0 and ledger.size("schedule") == 0


def test_a_duplicate_of_a_running_job_is_checked_again_after_the_lease(ledger: Ledger) -> None:
    queue(ledger, new_job())
    ledger.claim("j1", "a", 10_000)
    ledger.recheck("j1", due_ms=456)
    ledger.recheck("j1", due_ms=123)  # never earlier than asked before
    assert ledger.r.zscore(ledger.set_key("schedule"), "j1") == 456


def test_review_jobs_never_expire_and_expired_rejected_jobs_leave_set_and_count(
    ledger: Ledger,
) -> None:
    for job_id, state in (("r", "review"), ("x", "rejected")):
        queue(ledger, new_job(job_id))
        ledger.claim(job_id, "t", 10_000)
        ledger.transition(job_id, state, {"event": state}, token="t")
    assert ledger.r.ttl(ledger.job_key("r")) == -1  # waits for a person, however long
    assert ledger.r.ttl(ledger.job_key("x")) > 0

    ledger.r.delete(ledger.job_key("x"))  # as if its retention ran out...
    ledger.r.zadd(ledger.set_key("rejected"), {"x": 1})  # ...long ago
    assert ledger.prune_rejected() == 1
    assert ledger.listing("rejected") == []
    assert ledger.counts()["rejected"] == 0
    assert ledger.counts()["review"] == 1


def deliver(ledger: Ledger, job_id: str, codes: tuple[str, ...] = ("0",)) -> None:
    """Attempts answered ``codes`` (each but the last retried), then delivered."""
    for n, code in enumerate(codes):
        ledger.claim(job_id, "w", 10_000)
        attempt = {"event": "attempt", "code": code}
        if n < len(codes) - 1:
            ledger.transition(
                job_id,
                "retrying",
                {"event": "retry", "code": code},
                token="w",
                fields={"retries": n + 1},
                attempt=attempt,
            )
    ledger.transition(
        job_id, "delivered", {"event": "delivered", "code": "0"}, token="w", attempt=attempt
    )


def test_an_answer_recorded_before_it_settles_is_kept_as_one_recorded_with_it(
    ledger: Ledger,
) -> None:
    """``record_attempt`` then ``transition`` (a busy answer retried in-process, or a ledger
    written by an older worker) leaves the same record as one ``transition`` with the attempt."""
    for job_id, fused in (("j1", True), ("j2", False)):
        queue(ledger, new_job(job_id, priority="realtime"))
        ledger.claim(job_id, "w", 10_000)
        attempt = {"event": "attempt", "code": "0", "answer": "ok"}
        if not fused:
            ledger.record_attempt(job_id, attempt, fault=True)
        ledger.transition(
            job_id,
            "retrying",
            {"event": "retry", "code": "0"},
            token="w",
            attempt=attempt if fused else None,
            fault=fused,
        )
    one, two = (ledger.get(i, with_history=True) for i in ("j1", "j2"))
    assert one is not None and two is not None
    assert (
        (one.attempts, one.faults, one.last_answer)
        == (two.attempts, two.faults, two.last_answer)
        == (1, 1, "ok")
    )
    assert [e["event"] for e in one.history] == [e["event"] for e in two.history]


def test_a_delivered_job_keeps_its_outline_but_not_its_payload(ledger: Ledger) -> None:
    queue(ledger, new_job("j1", client="crm", batch="b1", idempotency_key="k"))
    deliver(ledger, "j1")
    raw = ledger.r.hgetall(ledger.job_key("j1"))
    assert set(raw) == {"state", "kind", "client", "attempts", "submitted_at_ms", "updated_at_ms"}
    record = ledger.get("j1", with_history=True)
    assert record is not None
    assert (
        record.id,
        record.state,
        record.attempts,
        record.last_code,
        record.last_reason,
        record.destination,
        record.payload,
    ) == ("j1", "delivered", 1, "", "delivered", "noojee", "")
    assert record.history == []  # a bulk job, one attempt: the outline says it all
    assert 0 < ledger.r.ttl(ledger.job_key("j1")) <= 3600
    assert ledger.counts()["delivered"] == 1


def test_a_delivered_realtime_job_keeps_its_history(ledger: Ledger) -> None:
    queue(ledger, new_job("j1", priority="realtime"))
    deliver(ledger, "j1")
    record = ledger.get("j1", with_history=True)
    assert record is not None and record.payload == "" and record.priority == ""
    assert [e["event"] for e in record.history] == ["delivered", "attempt"]


def test_a_delivered_job_with_a_story_keeps_its_history(ledger: Ledger) -> None:
    queue(ledger, new_job("j1"))
    deliver(ledger, "j1", codes=("109", "109", "0"))
    record = ledger.get("j1", with_history=True)
    assert record is not None
    assert (record.attempts, record.retries) == (3, 2)
    codes = [e["code"] for e in reversed(record.history) if e["event"] == "attempt"]
    assert codes == ["109", "109", "0"]
    assert 0 < ledger.r.ttl(ledger.history_key("j1")) <= 3600


def test_a_batch_counts_its_jobs_by_state(ledger: Ledger) -> None:
    for job_id in ("a", "b", "c"):
        queue(ledger, new_job(job_id, batch="run-1"))
    queue(ledger, new_job("other"))
    deliver(ledger, "a")
    ledger.claim("b", "w", 10_000)
    ledger.transition("b", "review", {"event": "review", "code": "110"}, token="w")
    assert ledger.batch_counts("run-1") == {
        "jobs": 3,
        "delivered": 1,
        "merged": 0,
        "superseded": 0,
        "review": 1,
        "rejected": 0,
        "pending": 1,
    }
    ledger.transition("b", "queued", {"event": "requeued"}, allowed=("review",))
    assert ledger.batch_counts("run-1")["pending"] == 2
    assert set(ledger.batch_counts("never").values()) == {0}


def test_a_call_is_marked_calling_once_it_has_run_a_second_and_never_if_it_ends_sooner(
    ledger: Ledger,
) -> None:
    """The claim keeper writes the calling mark (what the console's running list shows): only
    for calls that outlast ``CALLING_AFTER_MS``, with the time the call started, and only while
    the claim is still this worker's."""
    from producers.console.queries import phase
    from worker.claims import CALLING_AFTER_MS, ClaimKeeper

    keeper = ClaimKeeper(ledger)
    keeper._thread = threading.current_thread()  # (no renewing thread: this test drives it)
    for job_id in ("long", "short", "lost"):
        queue(ledger, new_job(job_id))
        ledger.claim(job_id, f"h/1/{job_id}", 10_000)
        keeper.hold(job_id, f"h/1/{job_id}")
    started = now_ms()
    for job_id in ("long", "short", "lost"):
        keeper.calling(job_id, started)
    assert keeper.due_marks(started + CALLING_AFTER_MS - 1) == {}
    keeper.called("short")  # its answer came back first
    end_lease(ledger, "lost")  # its claim ran out, and another worker took the job
    ledger.claim("lost", "h/2/other", 10_000)
    marks = keeper.due_marks(started + CALLING_AFTER_MS)
    assert marks == {"long": started, "lost": started}
    assert keeper.renew_once(marks) == ["lost"]
    calling = {job_id: ledger.get(job_id) for job_id in ("long", "short", "lost")}
    assert calling["long"] is not None and calling["long"].calling_since_ms == started
    assert phase(calling["long"]) == "calling"
    assert all(r is not None and phase(r) == "waiting" for r in (calling["short"],))
    assert calling["lost"] is not None and calling["lost"].calling_since_ms == 0
    assert keeper.due_marks(started + 10 * CALLING_AFTER_MS) == {}  # written once
    keeper.calling("long", started + 5_000)  # a busy answer, and the call is made again
    assert keeper.due_marks(started + 6_000) == {"long": started + 5_000}


def test_a_recheck_left_on_the_schedule_by_a_job_that_ended_is_dropped_when_due(
    ledger: Ledger,
) -> None:
    """A settle leaves a running job's recheck on the schedule (one command less a job); the
    due round drops it without touching the job."""
    queue(ledger, new_job("j1"))
    ledger.claim("j1", "a", 10_000)
    ledger.recheck("j1", due_ms=now_ms())  # a duplicate message found it locked
    ledger.transition("j1", "delivered", {"event": "delivered"}, token="a")
    assert ledger.size("schedule") == 1
    ledger.r.delete(QUEUE)
    assert ledger.due() == []
    assert ledger.size("schedule") == 0
    assert ledger.get("j1").state == "delivered"  # type: ignore[union-attr]
    assert ledger.r.lrange(QUEUE, 0, -1) == []


def test_a_job_with_an_attempt_on_record_gets_its_newest_entries_with_its_claim(
    ledger: Ledger,
) -> None:
    queue(ledger, new_job("first"))
    assert ledger.claim("first", "a", 10_000).recent == ()  # nothing to read: no attempt yet
    queue(ledger, new_job("again"))
    ledger.claim("again", "a", 10_000)
    ledger.record_attempt("again", {"event": "attempt", "outcome": "delivered"}, fault=False)
    end_lease(ledger, "again")  # its worker died before settling
    claim = ledger.claim("again", "b", 10_000)
    assert claim.last_entry() == {"event": "attempt", "outcome": "delivered"}
