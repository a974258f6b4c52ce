"""The ledger: every job's record in Redis, its state, attempts and history, and the sets an
operator works from (review, rejected) and the runtime works from (schedule).

Keys, under ``prefix`` (``cs:`` by default):

- ``job:{id}`` hash: the envelope (kind, priority, payload JSON, idempotency key, client,
  batch; its destination, task and queue follow from the kind), ``state``, ``attempts`` (calls
  made), ``faults`` (of them, faults), ``retries`` (backoffs through the schedule since
  submission or requeue), ``last_code``/``last_reason``/``last_answer``, times in epoch
  milliseconds. A job in review stays until a person resolves it;
  a rejected one expires ``retention_s`` after it got there. A delivered job is cut down to
  ``state``, ``kind``, ``client``, ``attempts`` (and faults and retries, if any) and its two
  times, and expires after ``retention_s``: about 240 bytes a job.
- ``job:{id}:history`` list: newest first, JSON entries ``{"at", "event", ...}``, capped; from
  the first attempt on (a queued job's record says when and by whom it was submitted). Gone once
  a bulk job is delivered at its first attempt (the record says all it said); a realtime job
  keeps it (a service's job is the one someone asks about, and they are few).
- ``job:{id}:lock`` string: the token of the worker running the job (a lease, PX).
- ``review``, ``rejected`` zsets: job ids by the time they got there.
- ``schedule`` zset: job ids by the time (ms) their next attempt is due.
- ``schedule:leased`` zset: members a republisher took and is publishing, by the time its lease
  ends.
- ``counts`` hash: number of jobs in each state. ``delivered`` is a running total (delivered
  records expire, the count does not); rejected jobs leave the count and the set when their
  records expire (``prune_rejected``).
- ``batch:{name}`` hash: ``jobs`` (recorded in the batch, a backfill run) and how many of them
  are ``delivered``, in ``review`` and ``rejected`` now.

A job submitted with an idempotency key gets an id derived from it (``job_id_for``), so the job
record itself says the key was used: no key of its own per job. New jobs are recorded and their
Celery messages queued by one script (``lua/create.lua``).

Every state change runs ``lua/transition.lua``, so these keys never disagree.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import redis

if TYPE_CHECKING:
    from worker.dispatch import Template

QUEUED, RUNNING, RETRYING = "queued", "running", "retrying"
DELIVERED, REVIEW, REJECTED = "delivered", "review", "rejected"
TERMINAL = (DELIVERED, REVIEW, REJECTED)
STATES = (QUEUED, RUNNING, RETRYING, DELIVERED, REVIEW, REJECTED)


def now_ms() -> int:
    return int(time.time() * 1000)


#: Jobs per call of ``lua/create.lua``: a call blocks Redis for its duration (about 2 ms here).
CREATE_GROUP = 250


def job_id_for(destination: str, idempotency_key: str) -> str:
    """The id of the job submitted to ``destination`` with ``idempotency_key``: the same key
    always names the same job (a uuid4's length, 32 hex digits)."""
    return hashlib.blake2b(f"{destination}\0{idempotency_key}".encode(), digest_size=16).hexdigest()


def _script(client: redis.Redis, name: str) -> Any:
    source = resources.files("worker").joinpath("lua", f"{name}.lua").read_text()
    return client.register_script(source)


class NewJob(NamedTuple):
    """What a producer hands the ledger: a validated job, ready to record and publish. With an
    ``idempotency_key``, ``id`` must be ``job_id_for(destination, idempotency_key)``. (A named
    tuple: a backfill makes a million, and a frozen dataclass costs three times as much.)"""

    id: str
    kind: str
    destination: str
    task: str
    queue: str
    priority: str
    payload: str
    retry_until_ms: int
    idempotency_key: str | None = None
    client: str = ""
    batch: str = ""


@dataclass
class JobRecord:
    """One job as the ledger holds it (a delivered one's envelope is gone: ``destination``,
    ``task`` and ``queue`` are derived from its kind, its payload and priority are empty)."""

    id: str
    kind: str
    state: str
    submitted_at_ms: int
    updated_at_ms: int
    destination: str = ""
    task: str = ""
    queue: str = ""
    priority: str = ""
    payload: str = ""
    retry_until_ms: int = 0
    batch: str = ""
    attempts: int = 0
    faults: int = 0
    retries: int = 0
    idempotency_key: str = ""
    client: str = ""
    last_code: str = ""
    last_reason: str = ""
    last_answer: str = ""
    next_attempt_at_ms: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[str, str]) -> JobRecord:
        ints = {"submitted_at_ms", "updated_at_ms", "retry_until_ms", "attempts", "faults",
                "retries", "next_attempt_at_ms"}  # fmt: skip
        known = cls.__dataclass_fields__
        values: dict[str, Any] = {
            k: (int(v) if k in ints else v) for k, v in raw.items() if k in known
        }
        values["id"] = job_id
        destination = values.setdefault("destination", values["kind"].partition(".")[0])
        values.setdefault("task", f"{destination}.deliver")
        values.setdefault("queue", destination)
        if values["state"] == DELIVERED:
            values.setdefault("last_reason", "delivered")
        return cls(**values)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class Claim:
    """Answer of ``Ledger.claim``: ``claimed``, ``terminal``, ``locked`` or ``missing``."""

    status: str
    detail: str


class LedgerConflict(Exception):
    """The job is not in a state that allows this action (e.g. requeue of a delivered job)."""


class Ledger:
    """Job records and their sets in Redis.

    client: a ``decode_responses=True`` client. prefix: key prefix. retention_s: how long a job
    stays after a terminal state. history_len: attempts and events kept per job.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "cs:",
        retention_s: int = 14 * 86_400,
        history_len: int = 50,
    ) -> None:
        self.r = client
        self.prefix = prefix
        self.retention_s = retention_s
        self.history_len = history_len
        self._create = _script(client, "create")
        self._claim = _script(client, "claim")
        self._transition = _script(client, "transition")
        self._claim_due = _script(client, "claim_due")
        self._unlock = _script(client, "unlock")
        self._unclaim = _script(client, "unclaim")
        self._prune = _script(client, "prune")

    # -- keys ---------------------------------------------------------------------------------
    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def history_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:history"

    def lock_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:lock"

    def batch_key(self, batch: str) -> str:
        return f"{self.prefix}batch:{batch}"

    @property
    def counts_key(self) -> str:
        return f"{self.prefix}counts"

    def set_key(self, name: str) -> str:
        """``review``, ``rejected`` or ``schedule``."""
        return f"{self.prefix}{name}"

    # -- producers ----------------------------------------------------------------------------
    def create(
        self, job: NewJob, message: Template | None = None, due_ms: int | None = None
    ) -> tuple[str, bool]:
        """Record a new job and queue its Celery message (``message``, filled in with its id)
        in one step; returns (job id, created). Without a message the job goes on the schedule,
        due at ``due_ms`` (default now), for a republisher to publish. A job whose idempotency
        key was used already returns that job's id and creates nothing."""
        [(job_id, created)] = self.create_many([job], [message], due_ms)
        return job_id, created

    def create_many(
        self,
        jobs: list[NewJob],
        messages: list[Template | None] | list[Template],
        due_ms: int | None = None,
    ) -> list[tuple[str, bool]]:
        """``create`` for many jobs in one round trip (each job atomic on its own): jobs that
        share a message template, a batch and a client go ``CREATE_GROUP`` to a script call."""
        at = now_ms()
        groups: dict[tuple[str, str, str, str], list[int]] = {}
        for n, (job, message) in enumerate(zip(jobs, messages, strict=True)):
            key, text = (message.key, message.text) if message else (self.set_key("schedule"), "")
            groups.setdefault((key, text, job.batch, job.client), []).append(n)
        pipe = self.r.pipeline(transaction=False)
        order: list[int] = []
        for (target, text, batch, client), members in groups.items():
            for start in range(0, len(members), CREATE_GROUP):
                group = members[start:start + CREATE_GROUP]
                keys = [self.counts_key, target, self.batch_key(batch)]
                args: list[str | int] = [due_ms or at, batch, at, client, text]
                for n in group:
                    job = jobs[n]
                    keys.append(self.job_key(job.id))
                    args += [job.id, "1" if job.idempotency_key else "", job.kind, job.priority,
                             job.payload, job.retry_until_ms, job.idempotency_key or ""]
                self._create(keys=keys, args=args, client=pipe)
                order += group
        flags = [flag for reply in pipe.execute() for flag in reply]
        created = [False] * len(jobs)
        for n, flag in zip(order, flags, strict=True):
            created[n] = flag == 1
        return [(job.id, made) for job, made in zip(jobs, created, strict=True)]

    # -- reading ------------------------------------------------------------------------------
    def get(self, job_id: str, with_history: bool = False) -> JobRecord | None:
        # The client decodes replies (decode_responses=True); redis-py's types cannot say so.
        raw = cast(dict[str, str], self.r.hgetall(self.job_key(job_id)))
        if not raw:
            return None
        record = JobRecord.from_hash(job_id, raw)
        if with_history:
            record.history = [json.loads(e) for e in self.r.lrange(self.history_key(job_id), 0, -1)]
        return record

    def listing(self, name: str, offset: int = 0, limit: int = 50) -> list[tuple[str, int]]:
        """Ids in the ``review`` or ``rejected`` set, oldest first, with the time (ms) they got
        there."""
        rows = cast(
            list[tuple[str, float]],
            self.r.zrange(self.set_key(name), offset, offset + limit - 1, withscores=True),
        )
        return [(job_id, int(score)) for job_id, score in rows]

    def size(self, name: str) -> int:
        return int(self.r.zcard(self.set_key(name)))

    def counts(self) -> dict[str, int]:
        raw = cast(dict[str, str], self.r.hgetall(self.counts_key))
        return {state: int(raw.get(state, 0)) for state in STATES}

    def batch_counts(self, batch: str) -> dict[str, int]:
        """Of the jobs recorded in ``batch``: how many (``jobs``), how many are delivered, in
        review and rejected, and how many are still on their way (``pending``)."""
        raw = cast(dict[str, str], self.r.hgetall(self.batch_key(batch)))
        counts = {name: int(raw.get(name, 0)) for name in ("jobs", *TERMINAL)}
        counts["pending"] = counts["jobs"] - sum(counts[state] for state in TERMINAL)
        return counts

    # -- workers ------------------------------------------------------------------------------
    def claim(self, job_id: str, token: str, lease_ms: int) -> Claim:
        status, detail = self._claim(
            keys=[self.job_key(job_id), self.lock_key(job_id), self.counts_key],
            args=[token, lease_ms, now_ms()],
        )
        return Claim(status, detail)

    def last_entry(self, job_id: str) -> dict[str, Any] | None:
        """The newest history entry of a job."""
        raw = self.r.lindex(self.history_key(job_id), 0)
        return json.loads(cast(str, raw)) if raw else None

    def unlock(self, job_id: str, token: str) -> None:
        """Give up this worker's claim on a job early (it keeps its state)."""
        self._unlock(keys=[self.lock_key(job_id)], args=[token])

    def unclaim(self, job_id: str, token: str, previous_state: str) -> bool:
        """Hand a claimed job back untouched, in the state it had before the claim; False if
        this worker's claim had already ended."""
        return bool(self._unclaim(
            keys=[self.job_key(job_id), self.lock_key(job_id), self.counts_key],
            args=[token, previous_state, now_ms()],
        ))  # fmt: skip

    def record_attempt(self, job_id: str, entry: dict[str, Any], fault: bool) -> None:
        """One call to the destination happened: count it and keep its answer in the history."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hincrby(self.job_key(job_id), "attempts", 1)
            if fault:
                pipe.hincrby(self.job_key(job_id), "faults", 1)
            pipe.hset(self.job_key(job_id), mapping={
                "last_code": entry.get("code", ""), "last_reason": entry.get("reason", ""),
                "last_answer": entry.get("answer", ""),
            })  # fmt: skip
            pipe.lpush(self.history_key(job_id), json.dumps(entry))
            pipe.ltrim(self.history_key(job_id), 0, self.history_len - 1)
            pipe.execute()

    def transition(
        self,
        job_id: str,
        state: str,
        entry: dict[str, Any],
        *,
        token: str = "",
        allowed: tuple[str, ...] = (),
        due_ms: int | None = None,
        fields: dict[str, str | int] | None = None,
    ) -> str:
        """Move a job to ``state``; returns its previous state.

        token: the worker's lock token (the lock is released); empty for operator actions.
        allowed: states the job must be in now, else ``LedgerConflict``.
        due_ms: put the job on the schedule for then. entry: the history entry to add; its
        ``code`` and ``reason`` become the job's ``last_code`` and ``last_reason``.
        """
        at = now_ms()
        changes: dict[str, str | int] = {
            f"last_{k}": entry[k] for k in ("code", "reason") if entry.get(k)
        }
        changes.update(fields or {})
        flat = [str(x) for pair in changes.items() for x in pair]
        status, previous = self._transition(
            keys=[self.job_key(job_id), self.lock_key(job_id), self.counts_key,
                  self.history_key(job_id), self.set_key("review"), self.set_key("rejected"),
                  self.set_key("schedule")],
            args=[token, ",".join(allowed), state, at, "" if due_ms is None else due_ms,
                  self.retention_s, json.dumps({"at": at, **entry}), self.history_len,
                  self.batch_key(""), *flat],
        )  # fmt: skip
        if status == "missing":
            raise LedgerConflict(f"job {job_id} does not exist (or its record has expired)")
        if status == "conflict":
            raise LedgerConflict(f"job {job_id} is {previous}, not {' or '.join(allowed)}")
        if status == "lost":
            raise LedgerConflict(f"job {job_id}: this worker's claim expired before it settled")
        return str(previous)

    # -- schedule -----------------------------------------------------------------------------
    def claim_due(self, name: str, lease_ms: int, limit: int = 500) -> list[str]:
        """Due members of ``schedule``, leased to the caller (see claim_due.lua)."""
        due = self._claim_due(keys=[self.set_key(name), self.set_key(f"{name}:leased")],
                              args=[now_ms(), lease_ms, limit])  # fmt: skip
        return [str(job_id) for job_id in due]

    def release(self, name: str, job_id: str) -> None:
        """The caller published a member it had taken with ``claim_due``: end its lease."""
        self.r.zrem(self.set_key(f"{name}:leased"), job_id)

    def recheck(self, job_id: str, due_ms: int) -> None:
        """Put a job on the schedule, due no earlier than ``due_ms``: an entry due later (a
        retry its runner set) stays, an earlier one moves to ``due_ms`` (GT)."""
        self.r.zadd(self.set_key("schedule"), {job_id: due_ms}, gt=True)

    def prune_rejected(self, limit: int = 500) -> int:
        """Forget rejected jobs whose records have expired; returns how many."""
        cutoff = now_ms() - self.retention_s * 1000
        return int(self._prune(keys=[self.set_key("rejected"), self.counts_key],
                               args=[cutoff, limit, self.job_key("")]))  # fmt: skip

