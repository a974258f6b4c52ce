"""Order per entity in the ledger's scripts, on fakeredis (no server needed): one job of a record
at a time, in submission order, released the moment the one before it ends; coalescing,
superseded versions, requeues that rejoin the line, dead workers' claims; and a stateful model
test of the invariants under random operations."""

from __future__ import annotations

import json
import time
from typing import Any

import fakeredis
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.conftest import end_lease
from worker.dispatch import Template
from worker.ledger import (
    HELD,
    MERGED,
    QUEUED,
    STATES,
    SUPERSEDED,
    TERMINAL,
    Ledger,
    LedgerConflict,
    NewJob,
    Taken,
    now_ms,
)

BULK_LIST, REALTIME_LIST = "noojee:9", "noojee"
#: Messages shaped as kombu's are where reconcile.lua looks: the task id in the headers.
TEMPLATES = {
    "bulk": Template(
        BULK_LIST,
        '{"job": "@@job@@", "headers": {"id": "@@job@@"}, "p": 9, '
        '"properties": {"delivery_tag": "@@job@@.@@pushed@@"}}',
    ),
    "realtime": Template(REALTIME_LIST, '{"job": "@@job@@", "headers": {"id": "@@job@@"}}'),
}


@pytest.fixture
def ledger() -> Ledger:
    return Ledger(fakeredis.FakeRedis(decode_responses=True), prefix="t:", retention_s=3600)


def submit(
    ledger: Ledger, job_id: str, entity: str = "noojee:L1", priority: str = "bulk", **more: Any
) -> None:
    job = NewJob(
        id=job_id,
        kind="noojee.update",
        destination="noojee",
        task="noojee.deliver",
        queue="noojee",
        priority=priority,
        payload=json.dumps({"n": job_id}),
        retry_until_ms=now_ms() + 60_000,
        entity=entity,
        **more,
    )
    ledger.create(job, TEMPLATES[priority])


def messages(ledger: Ledger, key: str = BULK_LIST) -> list[str]:
    """Job ids of the messages on a kombu list, oldest first."""
    return [json.loads(m)["job"] for m in reversed(ledger.r.lrange(key, 0, -1))]


def state(ledger: Ledger, job_id: str) -> str:
    record = ledger.get(job_id)
    assert record is not None
    return record.state


def end(ledger: Ledger, job_id: str, outcome: str = "delivered") -> None:
    assert ledger.claim(job_id, "w").status == "claimed"
    ledger.transition(job_id, outcome, {"event": outcome, "code": "x"}, token="w")


def test_a_second_job_of_a_record_is_held_without_a_message(ledger: Ledger) -> None:
    submit(ledger, "a")
    submit(ledger, "b")
    submit(ledger, "c", entity="noojee:L2")
    assert (state(ledger, "a"), state(ledger, "b"), state(ledger, "c")) == (QUEUED, HELD, QUEUED)
    assert messages(ledger) == ["a", "c"]
    assert ledger.line("noojee:L1") == ["a", "b"]
    assert ledger.counts()["held"] == 1 and ledger.counts()["queued"] == 2


def test_the_next_job_is_released_in_the_step_that_ends_the_one_before(ledger: Ledger) -> None:
    submit(ledger, "a")
    submit(ledger, "b")
    ledger.r.delete(BULK_LIST)
    end(ledger, "a")
    assert state(ledger, "b") == QUEUED
    assert messages(ledger) == ["b"]  # pushed by the same script: no polling in between
    assert ledger.line("noojee:L1") == ["b"]
    last = ledger.last_delivery("noojee:L1")
    assert last is not None and last.job_id == "a"


@pytest.mark.parametrize("outcome", ["review", "rejected", "superseded", "merged"])
def test_review_and_every_end_release_the_next_job(ledger: Ledger, outcome: str) -> None:
    submit(ledger, "a")
    submit(ledger, "b")
    end(ledger, "a", outcome)
    assert state(ledger, "b") == QUEUED
    assert ledger.line("noojee:L1") == ["b"]


def test_a_retrying_or_running_head_keeps_the_jobs_behind_it_held(ledger: Ledger) -> None:
    submit(ledger, "a")
    submit(ledger, "b")
    assert ledger.claim("a", "w").status == "claimed"
    assert state(ledger, "b") == HELD
    ledger.transition("a", "retrying", {"event": "retry"}, token="w", due_ms=now_ms() + 5000)
    assert state(ledger, "b") == HELD
    assert ledger.claim("b", "x").status == "held"  # a stale message of a held job is dropped


def test_a_requeued_job_joins_the_end_of_its_line(ledger: Ledger) -> None:
    submit(ledger, "old")
    end(ledger, "old", "review")
    submit(ledger, "new")
    assert ledger.claim("new", "w").status == "claimed"
    # Requeued while a newer job runs: it waits behind it, then goes.
    _, now_state = ledger.transition_to("old", "queued", {"event": "requeued"}, allowed=("review",))
    assert now_state == HELD and state(ledger, "old") == HELD
    assert ledger.line("noojee:L1") == ["new", "old"]
    ledger.transition("new", "delivered", {"event": "delivered"}, token="w")
    assert state(ledger, "old") == QUEUED
    old = ledger.get("old")
    assert old is not None
    newer = ledger.newer_delivered(old)
    assert newer is not None and newer.job_id == "new"


def test_a_requeued_job_alone_is_queued_with_its_message(ledger: Ledger) -> None:
    submit(ledger, "a")
    end(ledger, "a", "rejected")
    ledger.r.delete(BULK_LIST)
    assert ledger.transition_to("a", "queued", {"event": "requeued"})[1] == QUEUED
    assert messages(ledger) == ["a"]


def test_a_realtime_job_lends_its_priority_to_a_bulk_head_not_yet_started(
    ledger: Ledger,
) -> None:
    submit(ledger, "bulk")
    submit(ledger, "rt", priority="realtime")
    assert state(ledger, "rt") == HELD
    assert messages(ledger, REALTIME_LIST) == ["bulk"]  # the head overtakes the backlog
    record = ledger.get("bulk")
    assert record is not None and record.priority == "realtime"
    # A running head keeps its place: the realtime job waits for its answer.
    submit(ledger, "b2", entity="noojee:L2")
    assert ledger.claim("b2", "w").status == "claimed"
    submit(ledger, "rt2", entity="noojee:L2", priority="realtime")
    assert messages(ledger, REALTIME_LIST) == ["bulk"]


def test_absorbing_ends_the_taken_jobs_and_the_head_carries_them(ledger: Ledger) -> None:
    for job_id in ("h", "f1", "f2", "f3"):
        submit(ledger, job_id, batch="run")
    claim = ledger.claim("h", "w")
    assert (claim.status, claim.behind) == ("claimed", 3)
    f2 = ledger.get("f2")
    assert f2 is not None
    taken = [Taken("f1", MERGED, "h", "merged into h"), Taken("f2", MERGED, "h", "merged into h")]
    assert (
        ledger.absorb(
            "h",
            "w",
            '{"merged": true}',
            ("7", "7".zfill(20), "f1"),
            (f2.seq, "f2"),
            "realtime",
            123,
            taken,
        )
        == "ok"
    )
    head = ledger.get("h", with_history=True)
    assert head is not None
    assert (head.payload, head.version, head.top_id, head.priority, head.retry_until_ms) == (
        '{"merged": true}',
        "7",
        "f2",
        "realtime",
        123,
    )
    assert head.history[0]["event"] == "absorbed" and head.history[0]["merged"] == "f1,f2"
    f1 = ledger.get("f1", with_history=True)
    assert f1 is not None
    assert (f1.state, f1.merged_into, f1.payload, f1.entity) == (MERGED, "h", "", "noojee:L1")
    assert f1.history[0]["event"] == "merged"
    assert ledger.line("noojee:L1") == ["h", "f3"]
    assert ledger.counts()["merged"] == 2 and ledger.counts()["held"] == 1
    assert ledger.batch_counts("run")["merged"] == 2
    ledger.transition("h", "delivered", {"event": "delivered"}, token="w")
    last = ledger.last_delivery("noojee:L1")
    assert last is not None and (last.job_id, last.seq, last.vkey, last.version_job) == (
        "f2",
        f2.seq,
        "7".zfill(20),
        "f1",
    )
    assert state(ledger, "f3") == QUEUED


def test_absorbing_changes_nothing_if_a_job_is_no_longer_held_behind(ledger: Ledger) -> None:
    submit(ledger, "h")
    submit(ledger, "f1")
    ledger.claim("h", "w")
    ghost = [Taken("f1", MERGED, "h", "x"), Taken("nope", MERGED, "h", "x")]
    assert ledger.absorb("h", "w", "{}", ("", "", ""), (0, ""), "", 0, ghost) == "changed"
    assert state(ledger, "f1") == HELD
    assert ledger.absorb("h", "other", "{}", ("", "", ""), (0, ""), "", 0, ghost[:1]) == "lost"


def test_superseded_jobs_end_with_the_job_that_superseded_them(ledger: Ledger) -> None:
    submit(ledger, "h")
    submit(ledger, "old", version="3", vkey="3".zfill(20))
    ledger.claim("h", "w")
    taken = [Taken("old", SUPERSEDED, "v5-job", "version 3 is older")]
    assert ledger.absorb("h", "w", "{}", ("", "", ""), (0, ""), "", 0, taken) == "ok"
    old = ledger.get("old")
    assert old is not None
    assert (old.state, old.superseded_by, old.version) == (SUPERSEDED, "v5-job", "3")


def test_the_highest_version_delivered_is_what_claims_report(ledger: Ledger) -> None:
    submit(ledger, "v5", version="5", vkey="5".zfill(20))
    end(ledger, "v5")
    submit(ledger, "v3", version="3", vkey="3".zfill(20))
    claim = ledger.claim("v3", "w")
    assert (claim.delivered_vkey, claim.delivered_by) == ("5".zfill(20), "v5")
    ledger.transition("v3", "delivered", {"event": "delivered"}, token="w")  # forced, say
    last = ledger.last_delivery("noojee:L1")
    assert last is not None and (last.vkey, last.version_job, last.job_id) == (
        "5".zfill(20),
        "v5",
        "v3",
    )


def test_a_dead_workers_job_is_queued_again_and_its_stale_claim_cannot_settle(
    ledger: Ledger,
) -> None:
    submit(ledger, "a")
    submit(ledger, "b")
    ledger.claim("a", "dead")
    ledger.r.zadd(ledger.set_key("running"), {"a": 0})  # the lease ran out: no renewing
    ledger.r.delete(BULK_LIST)
    assert ledger.reap() == ["a"]
    assert state(ledger, "a") == QUEUED and state(ledger, "b") == HELD
    assert messages(ledger) == ["a"]
    assert ledger.renew({"a": "dead"}) == ["a"]
    assert ledger.reap() == []
    assert ledger.claim("a", "alive").status == "claimed"
    assert ledger.renew({"a": "alive"}) == []
    assert ledger.r.zscore(ledger.set_key("running"), "a") > now_ms()  # type: ignore[operator]
    assert ledger.r.hget(ledger.job_key("a"), "lock") == "alive"


def test_a_running_job_whose_lease_lasts_is_not_reaped(ledger: Ledger) -> None:
    submit(ledger, "a")
    ledger.claim("a", "w")
    assert ledger.reap() == []
    assert ledger.reap(dead=["other-host/1"]) == []  # another process's death is not its
    assert state(ledger, "a") == "running"
    assert ledger.r.zscore(ledger.set_key("running"), "a") > now_ms()  # type: ignore[operator]
    assert ledger.r.hget(ledger.job_key("a"), "lock") == "w"


# -- the broker window and lost messages -------------------------------------------------------
HELD_MS = 30_000


def took(job_id: str, ledger: Ledger, unacked: str, seconds_ago: float = 0) -> None:
    """What a worker's channel lists when it holds a message (worker/transport.py): its delivery
    tag (the job id) and when it took it, in seconds, in the unacked index (and kombu's own
    transport, for rediss://, the message in the hash too)."""
    ledger.r.hset(unacked, job_id, "[...]")
    ledger.r.zadd(f"{unacked}_index", {job_id: time.time() - seconds_ago})


@pytest.fixture
def windowed() -> Ledger:
    return Ledger(
        fakeredis.FakeRedis(decode_responses=True), prefix="t:", retention_s=3600, window=2
    )


def test_a_backlog_beyond_the_window_waits_in_the_ledger_and_is_fed_in(windowed: Ledger) -> None:
    for n in range(5):
        submit(windowed, f"j{n}", entity=f"noojee:L{n}")
    assert messages(windowed) == ["j0", "j1"]
    assert windowed.waiting("noojee") == 3
    windowed.r.rpop(BULK_LIST)  # a worker takes j0...
    assert windowed.claim("j0", "w").status == "claimed"  # ...and its claim feeds the next one
    assert messages(windowed) == ["j1", "j2"]
    assert windowed.waiting("noojee") == 2
    windowed.r.rpop(BULK_LIST)
    assert windowed.feed("noojee") == 1  # the rounds feed it too
    assert messages(windowed) == ["j2", "j3"]


def test_a_message_lost_in_transit_is_pushed_again_and_one_in_flight_is_not(
    ledger: Ledger,
) -> None:
    for job_id in ("lost", "unacked", "claimed"):
        submit(ledger, job_id, entity=f"noojee:{job_id}")
    ledger.r.delete(BULK_LIST)  # every message popped by a worker (BRPOP)...
    took("unacked", ledger, "unacked")  # ...one recorded by kombu...
    assert ledger.claim("claimed", "w").status == "claimed"  # ...one claimed
    assert ledger.reconcile("noojee", 60_000, "unacked", HELD_MS) == (0, [])  # within the grace
    assert ledger.reconcile("noojee", 0, "unacked", HELD_MS) == (0, ["lost"])
    assert messages(ledger) == ["lost"]
    lost = ledger.get("lost", with_history=True)
    assert lost is not None and lost.history[0]["event"] == "message-lost"
    assert ledger.reconcile("noojee", 0, "unacked", HELD_MS) == (0, [])  # it is there now


def test_a_message_missing_at_one_round_is_sent_again_only_if_still_missing_later(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message BRPOP has just answered is on neither the list nor the unacked index until
    its channel's next report, however long it waited on the list: one sighting is not a
    loss."""
    import worker.ledger

    clock = [now_ms()]
    monkeypatch.setattr(worker.ledger, "now_ms", lambda: clock[0])
    for job_id in ("lost", "taken"):
        submit(ledger, job_id, entity=f"noojee:{job_id}")
    ledger.r.delete(BULK_LIST)  # both popped by workers; neither is listed yet
    assert ledger.reconcile("noojee", 0, "unacked", HELD_MS, confirm_ms=400) == (0, [])
    took("taken", ledger, "unacked")  # one worker's report arrives
    clock[0] += 399
    assert ledger.reconcile("noojee", 0, "unacked", HELD_MS, confirm_ms=400) == (0, [])  # soon
    clock[0] += 1
    assert ledger.reconcile("noojee", 0, "unacked", HELD_MS, confirm_ms=400) == (0, ["lost"])
    assert messages(ledger) == ["lost"]
    assert ledger.reconcile("noojee", 0, "unacked", HELD_MS, confirm_ms=400) == (0, [])
    # "taken" was missing once; if its worker now dies with it, a sighting that old does not
    # count (every round forgets what it did not see missing): it takes two rounds again.
    ledger.r.delete("unacked", "unacked_index")
    clock[0] += 1000
    assert ledger.reconcile("noojee", 0, "unacked", HELD_MS, confirm_ms=400) == (0, [])
    clock[0] += 400
    assert ledger.reconcile("noojee", 0, "unacked", HELD_MS, confirm_ms=400) == (0, ["taken"])


def test_a_message_a_worker_took_long_ago_without_claiming_its_job_is_pushed_again(
    ledger: Ledger,
) -> None:
    submit(ledger, "a")
    ledger.r.delete(BULK_LIST)
    took("a", ledger, "unacked", seconds_ago=5)  # a worker killed with it, not started
    assert ledger.reconcile("noojee", 0, "unacked", 10_000) == (0, [])  # it may just be busy
    assert ledger.reconcile("noojee", 0, "unacked", 2_000) == (0, ["a"])  # not that long


def test_a_job_handed_back_at_the_gate_gets_a_new_message_in_the_same_step(
    ledger: Ledger,
) -> None:
    submit(ledger, "a")
    ledger.r.delete(BULK_LIST)  # a worker took its message...
    ledger.claim("a", "w")
    assert ledger.unclaim("a", "w")  # ...and got no permit
    assert state(ledger, "a") == QUEUED
    assert messages(ledger) == ["a"]  # not left to kombu's requeue
    assert ledger.reconcile("noojee", 0, "unacked", HELD_MS) == (0, [])
    assert not ledger.unclaim("a", "w")  # a claim that ended: nothing more is pushed
    assert messages(ledger) == ["a"]
    assert ledger.r.get(f"{ledger.prefix}handed-back") == "1"  # counted once


def test_two_messages_of_one_job_never_share_a_delivery_tag(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu acks a rejected message in a second round trip after putting it back: a tag
    shared with the job's next message would let that ack erase the next message's record."""
    import worker.ledger

    submit(ledger, "a")
    [first] = ledger.r.lrange(BULK_LIST, 0, -1)
    ledger.r.delete(BULK_LIST)
    ledger.claim("a", "w")
    later = now_ms() + 1
    monkeypatch.setattr(worker.ledger, "now_ms", lambda: later)
    ledger.unclaim("a", "w")
    [second] = ledger.r.lrange(BULK_LIST, 0, -1)
    tags = [json.loads(m)["properties"]["delivery_tag"] for m in (first, second)]
    assert tags[0] != tags[1] and all(t.startswith("a.") for t in tags)
    took(tags[1], ledger, "unacked")  # the new one, with a worker: found by its job id
    assert ledger.reconcile("noojee", 0, "unacked", HELD_MS) == (0, [])


# -- the model test -------------------------------------------------------------------------------
ENTITIES = ["noojee:A", "noojee:B", "noojee:C"]


class LineMachine(RuleBasedStateMachine):
    """Random submissions, claims, answers, absorptions, requeues, leases that run out, claims
    given up, reaps and late answers of workers whose claim has ended; after each step the
    ledger must agree with a plain model of the lines, of every job's state and of who holds
    each claim."""

    @initialize()
    def start(self) -> None:
        self.ledger = Ledger(fakeredis.FakeRedis(decode_responses=True), prefix="m:", window=2)
        self.lines: dict[str, list[str]] = {e: [] for e in ENTITIES}
        self.entity_of: dict[str, str] = {}
        self.ended: dict[str, str] = {}
        self.parked: set[str] = set()  # review or rejected: out of every line
        # job -> the token of the claim on it; None: its worker gave the claim up (the job
        # stays running until someone claims it again or its lease runs out and it is reaped)
        self.running: dict[str, str | None] = {}
        self.expired: set[str] = set()  # running jobs whose lease ran out (not reaped yet)
        self.stale: list[tuple[str, str]] = []  # (job, token) of claims that have ended
        self.n = 0
        self.tokens = 0

    def _token(self) -> str:
        self.tokens += 1
        return f"h/1/t{self.tokens}"

    def _holders(self) -> list[str]:
        """Running jobs whose claim a worker holds."""
        return sorted(j for j, token in self.running.items() if token is not None)

    def _head(self, entity: str) -> str | None:
        return self.lines[entity][0] if self.lines[entity] else None

    @rule(entity=st.sampled_from(ENTITIES), realtime=st.booleans())
    def create(self, entity: str, realtime: bool) -> None:
        self.n += 1
        job_id = f"j{self.n}"
        submit(self.ledger, job_id, entity, "realtime" if realtime else "bulk")
        self.lines[entity].append(job_id)
        self.entity_of[job_id] = entity

    @rule(entity=st.sampled_from(ENTITIES))
    def claim_the_head(self, entity: str) -> None:
        head = self._head(entity)
        if head is None or head in self.running or state(self.ledger, head) != QUEUED:
            return
        self._take_message(head)
        token = self._token()
        claim = self.ledger.claim(head, token)
        assert claim.status == "claimed"
        assert claim.behind == len(self.lines[entity]) - 1
        self.running[head] = token

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def claim_a_running_job(self, data: st.DataObject) -> None:
        """A duplicate message of a running job: locked while its claim holds; taken over once
        the claim was given up or its lease ran out."""
        job_id = data.draw(st.sampled_from(sorted(self.running)))
        token = self._token()
        claim = self.ledger.claim(job_id, token)
        old = self.running[job_id]
        if old is not None and job_id not in self.expired:
            assert claim.status == "locked" and claim.lock_ms > 0
            return
        assert claim.status == "claimed"
        if old is not None:
            self.stale.append((job_id, old))
        self.running[job_id] = token
        self.expired.discard(job_id)

    @rule(data=st.data())
    def claim_a_held_job(self, data: st.DataObject) -> None:
        held = [j for line in self.lines.values() for j in line[1:]]
        if held:
            assert self.ledger.claim(data.draw(st.sampled_from(held)), "x").status == "held"

    @precondition(lambda self: bool(self._holders()))
    @rule(
        data=st.data(),
        outcome=st.sampled_from(["delivered", "review", "rejected", "retrying", "superseded"]),
    )
    def answer(self, data: st.DataObject, outcome: str) -> None:
        """Its worker settles the job (a lease that ran out without anyone taking the job
        meanwhile still lets it)."""
        job_id = data.draw(st.sampled_from(self._holders()))
        token = self.running.pop(job_id)
        self.expired.discard(job_id)
        due = now_ms() if outcome == "retrying" else None
        assert token is not None
        self.ledger.transition(job_id, outcome, {"event": outcome}, token=token, due_ms=due)
        if outcome == "retrying":
            return
        self.lines[self.entity_of[job_id]].remove(job_id)
        if outcome in ("review", "rejected"):
            self.parked.add(job_id)
        else:
            self.ended[job_id] = outcome

    @precondition(lambda self: bool(self._holders()))
    @rule(data=st.data(), take=st.integers(1, 3))
    def absorb(self, data: st.DataObject, take: int) -> None:
        job_id = data.draw(st.sampled_from(self._holders()))
        line = self.lines[self.entity_of[job_id]]
        behind = line[1 : 1 + take]
        if not behind:
            return
        taken = [Taken(j, MERGED, job_id, "merged") for j in behind]
        assert (
            self.ledger.absorb(
                job_id, self.running[job_id], "{}", ("", "", ""), (0, ""), "", 0, taken
            )
            == "ok"
        )
        for j in behind:
            line.remove(j)
            self.ended[j] = MERGED

    @precondition(lambda self: bool(self.parked))
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.parked)))
        self.parked.discard(job_id)
        _, now = self.ledger.transition_to(
            job_id, "queued", {"event": "requeued"}, allowed=("review", "rejected")
        )
        line = self.lines[self.entity_of[job_id]]
        line.append(job_id)
        assert now == (QUEUED if line[0] == job_id else HELD)

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def lease_runs_out(self, data: st.DataObject) -> None:
        """Its worker died or stopped renewing."""
        job_id = data.draw(st.sampled_from(sorted(self.running)))
        end_lease(self.ledger, job_id)
        self.expired.add(job_id)

    @precondition(lambda self: bool(self._holders()))
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self._holders()))
        assert self.ledger.renew({job_id: str(self.running[job_id])}) == []
        self.expired.discard(job_id)

    @precondition(lambda self: bool(self._holders()))
    @rule(data=st.data())
    def give_up(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self._holders()))
        token = self.running[job_id]
        assert token is not None
        self.ledger.unlock(job_id, token)
        self.stale.append((job_id, token))
        self.running[job_id] = None

    @rule()
    def reap(self) -> None:
        """Every running job whose lease ran out is queued again, and only those."""
        assert sorted(self.ledger.reap()) == sorted(self.expired)
        for job_id in self.expired:
            token = self.running.pop(job_id)
            if token is not None:
                self.stale.append((job_id, token))
        self.expired.clear()

    @precondition(lambda self: bool(self.stale))
    @rule(data=st.data(), outcome=st.sampled_from(["delivered", "review", "retrying"]))
    def a_late_answer_is_refused(self, data: st.DataObject, outcome: str) -> None:
        """A worker whose claim ended (given up, taken over, reaped) changes nothing."""
        job_id, token = data.draw(st.sampled_from(self.stale))
        before = self.ledger.get(job_id)
        assert self.ledger.renew({job_id: token}) == [job_id]
        with pytest.raises(LedgerConflict):
            self.ledger.transition(job_id, outcome, {"event": outcome}, token=token)
        assert self.ledger.get(job_id) == before

    def _take_message(self, job_id: str) -> None:
        """What a worker's BRPOP does: the job's message leaves the broker list."""
        for key in (BULK_LIST, REALTIME_LIST):
            for message in self.ledger.r.lrange(key, 0, -1):
                if json.loads(message)["job"] == job_id:
                    self.ledger.r.lrem(key, 1, message)
                    return

    @rule()
    def messages_lost_in_transit(self) -> None:
        self.ledger.r.delete(BULK_LIST, REALTIME_LIST)

    @rule()
    def reconcile(self) -> None:
        self.ledger.reconcile("noojee", 0, "unacked", HELD_MS)
        on_lists = {
            json.loads(m)["job"]
            for key in (BULK_LIST, REALTIME_LIST)
            for m in self.ledger.r.lrange(key, 0, -1)
        }
        dispatched = set(self.ledger.r.zrange("m:dispatched:noojee", 0, -1))
        assert dispatched <= on_lists  # every job said to have a message has one

    @invariant()
    def queued_jobs_have_a_message_or_wait_for_room(self) -> None:
        if not hasattr(self, "ledger"):
            return
        r = self.ledger.r
        dispatched = set(r.zrange("m:dispatched:noojee", 0, -1))
        ready = {j for p in ("realtime", "bulk") for j in r.zrange(f"m:ready:noojee:{p}", 0, -1)}
        for line in self.lines.values():
            if line and state(self.ledger, line[0]) == QUEUED:
                # (both, for a head a realtime job promoted while the realtime list was full)
                assert line[0] in dispatched or line[0] in ready, line[0]

    @invariant()
    def the_ledger_agrees_with_the_model(self) -> None:
        if not hasattr(self, "ledger"):
            return
        counts = dict.fromkeys(STATES, 0)
        for entity, line in self.lines.items():
            assert self.ledger.line(entity, 1000) == line
            for position, job_id in enumerate(line):
                now = state(self.ledger, job_id)
                counts[now] += 1
                if position:
                    assert now == HELD  # only the head of a line may run
                elif job_id in self.running:
                    assert now == "running"
                else:
                    assert now in (QUEUED, "retrying")
        for job_id, outcome in self.ended.items():
            assert state(self.ledger, job_id) == outcome
            counts[outcome] += 1
        for job_id in self.parked:
            assert state(self.ledger, job_id) in ("review", "rejected")
            counts[state(self.ledger, job_id)] += 1
        assert self.ledger.counts() == counts
        assert set(TERMINAL) >= set(self.ended.values())

    @invariant()
    def each_claim_is_held_by_its_model_token(self) -> None:
        if not hasattr(self, "ledger"):
            return
        assert set(self.ledger.r.zrange(self.ledger.set_key("running"), 0, -1)) == set(self.running)
        for job_id in self.entity_of:
            record = self.ledger.get(job_id)
            assert record is not None
            assert record.lock == (self.running.get(job_id) or ""), job_id


TestLineMachine = LineMachine.TestCase
TestLineMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_a_claim_given_up_while_it_was_being_renewed_is_not_reported_lost(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    from worker.claims import ClaimKeeper

    submit(ledger, "a")
    ledger.claim("a", "w")
    keeper = ClaimKeeper(ledger)
    keeper._held["a"] = "w"
    settle = ledger.renew

    def renew_as_the_job_settles(leases: dict[str, str]) -> list[str]:
        keeper.settling("a")  # what the task says before it settles...
        ledger.transition("a", "delivered", {"event": "delivered"}, token="w")
        return settle(leases)  # ...and forgets it only after

    ledger.renew = renew_as_the_job_settles  # type: ignore[method-assign]
    assert keeper.renew_once() == []
    assert "expired" not in caplog.text
