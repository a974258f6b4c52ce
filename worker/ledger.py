"""The ledger: every job's record in Redis, its state, attempts and history, and the sets an
operator works from (review, rejected) and the runtime works from (schedule, outbox).

Keys, under ``prefix`` (``cs:`` by default):

- ``job:{id}`` hash: the envelope (kind, task, queue, priority, payload JSON, idempotency key,
  client), ``state``, ``attempts`` (calls made), ``faults`` (of them, faults), ``retries``
  (backoffs through the schedule since submission or requeue), ``last_code``/``last_reason``/
  ``last_answer``, times in epoch milliseconds. Expires ``retention_s`` after it is delivered or
  rejected; a job in review stays until a person resolves it.
- ``job:{id}:history`` list: newest first, JSON entries ``{"at", "event", ...}``, capped.
- ``job:{id}:lock`` string: the token of the worker running the job (a lease, PX).
- ``idem:{destination}:{key}`` string: idempotency key → job id.
- ``review``, ``rejected`` zsets: job ids by the time they got there.
- ``schedule`` zset: job ids by the time (ms) their next attempt is due.
- ``outbox`` zset: jobs recorded but not yet confirmed published (a crashed producer's jobs).
- ``schedule:leased``, ``outbox:leased`` zsets: members a republisher took and is publishing,
  by the time its lease ends.
- ``counts`` hash: number of jobs in each state. ``delivered`` is a running total (delivered
  records expire, the count does not); rejected jobs leave the count and the set when their
  records expire (``prune_rejected``).

Every state change runs ``lua/transition.lua``, so these keys never disagree.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, cast

import redis

QUEUED, RUNNING, RETRYING = "queued", "running", "retrying"
DELIVERED, REVIEW, REJECTED = "delivered", "review", "rejected"
TERMINAL = (DELIVERED, REVIEW, REJECTED)
STATES = (QUEUED, RUNNING, RETRYING, DELIVERED, REVIEW, REJECTED)


def now_ms() -> int:
    return int(time.time() * 1000)


def _script(client: redis.Redis, name: str) -> Any:
    source = resources.files("worker").joinpath("lua", f"{name}.lua").read_text()
    return client.register_script(source)


@dataclass(frozen=True)
class NewJob:
    """What a producer hands the ledger: a validated job, ready to record and publish."""

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


@dataclass
class JobRecord:
    """One job as the ledger holds it."""

    id: str
    kind: str
    destination: str
    task: str
    queue: str
    priority: str
    state: str
    payload: str
    submitted_at_ms: int
    updated_at_ms: int
    retry_until_ms: int
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
    def from_hash(cls, raw: dict[str, str]) -> JobRecord:
        ints = {"submitted_at_ms", "updated_at_ms", "retry_until_ms", "attempts", "faults",
                "retries", "next_attempt_at_ms"}  # fmt: skip
        known = cls.__dataclass_fields__
        values: dict[str, Any] = {
            k: (int(v) if k in ints else v) for k, v in raw.items() if k in known
        }
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

    def idem_key(self, destination: str, key: str) -> str:
        return f"{self.prefix}idem:{destination}:{key}"

    @property
    def counts_key(self) -> str:
        return f"{self.prefix}counts"

    def set_key(self, name: str) -> str:
        """``review``, ``rejected``, ``schedule`` or ``outbox``."""
        return f"{self.prefix}{name}"

    # -- producers ----------------------------------------------------------------------------
    def create(self, job: NewJob, outbox_grace_ms: int = 30_000) -> tuple[str, bool]:
        """Record a new job; returns (job id, created). An idempotency key already used by a
        job returns that job's id and creates nothing. The job sits in the outbox until the
        producer calls ``published``; if it never does, the republisher sends it."""
        status, job_id = self._create(**self._create_call(job, outbox_grace_ms))
        return job_id, status == "created"

    def create_many(
        self, jobs: list[NewJob], outbox_grace_ms: int = 30_000
    ) -> list[tuple[str, bool]]:
        """``create`` for many jobs in one round trip (each job still atomic on its own)."""
        pipe = self.r.pipeline(transaction=False)
        for job in jobs:
            self._create(**self._create_call(job, outbox_grace_ms), client=pipe)
        return [(job_id, status == "created") for status, job_id in pipe.execute()]

    def published_many(self, job_ids: list[str]) -> None:
        if job_ids:
            self.r.zrem(self.set_key("outbox"), *job_ids)

    def _create_call(self, job: NewJob, outbox_grace_ms: int) -> dict[str, Any]:
        at = now_ms()
        fields = {
            "id": job.id, "kind": job.kind, "destination": job.destination, "task": job.task,
            "queue": job.queue, "priority": job.priority, "state": QUEUED, "payload": job.payload,
            "submitted_at_ms": at, "updated_at_ms": at, "retry_until_ms": job.retry_until_ms,
            "attempts": 0, "faults": 0, "retries": 0,
            "idempotency_key": job.idempotency_key or "",
            "client": job.client,
        }  # fmt: skip
        entry = json.dumps({"at": at, "event": "submitted", "priority": job.priority,
                            "client": job.client})  # fmt: skip
        idem = self.idem_key(job.destination, job.idempotency_key or "")
        ttl = str(self.retention_s + 86_400) if job.idempotency_key else ""
        flat = [str(x) for pair in fields.items() for x in pair]
        return {
            "keys": [self.job_key(job.id), idem, self.counts_key, self.history_key(job.id),
                     self.set_key("outbox")],
            "args": [job.id, at + outbox_grace_ms, ttl, entry, *flat],
        }  # fmt: skip

    def published(self, job_id: str) -> None:
        """The producer published the job's message: it leaves the outbox."""
        self.r.zrem(self.set_key("outbox"), job_id)

    # -- reading ------------------------------------------------------------------------------
    def get(self, job_id: str, with_history: bool = False) -> JobRecord | None:
        # The client decodes replies (decode_responses=True); redis-py's types cannot say so.
        raw = cast(dict[str, str], self.r.hgetall(self.job_key(job_id)))
        if not raw:
            return None
        record = JobRecord.from_hash(raw)
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
                  self.retention_s, json.dumps({"at": at, **entry}), self.history_len, *flat],
        )  # fmt: skip
        if status == "missing":
            raise LedgerConflict(f"job {job_id} does not exist (or its record has expired)")
        if status == "conflict":
            raise LedgerConflict(f"job {job_id} is {previous}, not {' or '.join(allowed)}")
        if status == "lost":
            raise LedgerConflict(f"job {job_id}: this worker's claim expired before it settled")
        return str(previous)

    # -- schedule and outbox ------------------------------------------------------------------
    def claim_due(self, name: str, lease_ms: int, limit: int = 500) -> list[str]:
        """Due members of ``schedule`` or ``outbox``, leased to the caller (see claim_due.lua)."""
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

