"""The ledger: every job's record in Redis, its state, attempts and history; the line of pending
jobs of each entity (the destination record they write); the sets an operator works from
(review, rejected) and the runtime works from (schedule, running).

Keys, under ``prefix`` (``cs:`` by default):

- ``job:{id}`` hash: the envelope (kind, priority, payload JSON, idempotency key, client,
  batch, ``entity``, ``seq`` (its submission number), ``version``/``vkey`` (the producer's
  version and its sort key, if given); its destination, task and queue follow from the kind),
  ``state``, ``attempts`` (calls made), ``faults`` (of them, faults), ``retries`` (backoffs
  through the schedule since submission or requeue), ``last_code``/``last_reason``/
  ``last_answer``, times in epoch milliseconds; ``top_seq``/``top_id`` once it absorbed newer
  jobs of its entity; ``merged_into``/``superseded_by`` once it ended so. A job in review stays
  until a person resolves it; a rejected one expires ``retention_s`` after it got there. A job
  that ended delivered, merged or superseded is cut down to an outline (state, kind, client,
  attempts, its two times; a merged or superseded one also its entity, reason and the job that
  carried or superseded it) and expires after ``retention_s``: about 240 bytes a job.
- ``job:{id}:history`` list: newest first, JSON entries ``{"at", "event", ...}``, capped; from
  the first attempt on (a queued job's record says when and by whom it was submitted). Gone once
  a bulk job is delivered at its first attempt (the record says all it said); a realtime job
  keeps it (a service's job is the one someone asks about, and they are few).
- ``running`` zset: the claimed jobs by the time their runner's lease ends (a lease of
  ``lease_ms``, renewed while it runs), so a job whose worker died is queued again within one
  lease (``reap``). The runner is the job hash's ``lock`` field (its token, ``host/pid/random``);
  a claim holds while that field is set and its lease lasts.
- ``entity:{key}`` list: the pending jobs of one entity, oldest first. Only the head may run
  (queued, running or retrying); the jobs behind it are ``held``: no message, no worker thread,
  no permit. When the head ends or goes to review, the next is released in the same script.
  ``entity:{key}:last`` hash: the entity's newest delivery (``d``, ``ds``: job and submission
  number) and highest delivered version (``v``, ``vj``), for ``superseded`` and for requeues
  that would overwrite newer data. Expires ``retention_s`` after the last delivery.
- ``review``, ``rejected`` zsets: job ids by the time they got there.
- ``recent:merged``, ``recent:superseded`` zsets: the last ``RECENT_ENDED`` jobs that ended so,
  by when (an operator's listing only, written after the transition that ended them: a crash
  between the two leaves a job unlisted, never a state wrong).
- ``schedule`` zset: job ids by the time (ms) their next attempt is due; ``due.lua`` queues
  them in the step that takes them off.
- ``message:{queue}:{priority}`` hash: the Celery message template of that queue and priority
  and kombu's list it goes on: every script queues a job from it.
- ``dispatched:{queue}`` zset: queued jobs whose message is on the broker, by when it was
  pushed; ``ready:{queue}:{priority}`` zset: queued jobs waiting for room on the broker list
  (``window`` messages a list), fed in by the rounds and the claims. ``reconcile.lua`` pushes
  again the message of a dispatched job that is on neither the list nor the unacked index (the
  messages workers hold, ``worker/transport.py``).
- ``counts`` hash: number of jobs in each state, except ``running``: that is the size of the
  ``running`` zset (job id -> when its runner's lease ends). ``delivered``, ``merged`` and
  ``superseded`` are running totals (their records expire, the counts do not); rejected jobs
  leave the count and the set when their records expire (``prune_rejected``).
- ``batch:{name}`` hash: ``jobs`` (recorded in the batch, a backfill run) and how many of them
  have ended in each state.

A job submitted with an idempotency key gets an id derived from it (``job_id_for``), so the job
record itself says the key was used: no key of its own per job. New jobs are recorded and their
Celery messages queued by one script (``lua/create.lua``); every state change of a claimed or
resolved job runs ``lua/transition.lua`` (``absorb.lua``, ``reap.lua`` for coalescing and dead
workers), all sharing ``lua/ledger_lib.lua``, so these keys never disagree.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import redis

from worker import scripts

if TYPE_CHECKING:
    from worker.dispatch import Template

QUEUED, HELD, RUNNING, RETRYING = "queued", "held", "running", "retrying"
DELIVERED, MERGED, SUPERSEDED = "delivered", "merged", "superseded"
REVIEW, REJECTED = "review", "rejected"
#: States a job ends in (review included: it waits for a person, not for the runtime).
TERMINAL = (DELIVERED, MERGED, SUPERSEDED, REVIEW, REJECTED)
STATES = (QUEUED, HELD, RUNNING, RETRYING, *TERMINAL)


def now_ms() -> int:
    return int(time.time() * 1000)


#: Jobs per call of ``lua/create.lua``: a call blocks Redis for its duration (about 2 ms here).
CREATE_GROUP = 250
#: Jobs held behind a head that one claim may take over (coalescing); the rest wait for the
#: next claim.
MAX_ABSORB = 100
#: Most jobs each ``recent:{merged,superseded}`` listing keeps (the newest).
RECENT_ENDED = 10_000


def job_id_for(destination: str, idempotency_key: str) -> str:
    """The id of the job submitted to ``destination`` with ``idempotency_key``: the same key
    always names the same job (a uuid4's length, 32 hex digits)."""
    return hashlib.blake2b(f"{destination}\0{idempotency_key}".encode(), digest_size=16).hexdigest()


class NotReplicated(redis.RedisError):
    """``WAIT`` timed out: the primary has the jobs, too few replicas do yet. A failover now
    could lose them, so the submit fails (an intake answers 503) and is sent again: with an
    idempotency key that names the same jobs, without one it makes new ones."""


class NewJob(NamedTuple):
    """What a producer hands the ledger: a validated job, ready to record and publish. With an
    ``idempotency_key``, ``id`` must be ``job_id_for(destination, idempotency_key)``. (A named
    tuple: a backfill makes a million, and a frozen dataclass costs three times as much.)

    entity: the destination record the job writes (``JobModel.entity_key``); jobs of one entity
    run one at a time in submission order. version/vkey: the producer's version of the data as
    given and its sort key (``tasks.models.version_key``), or ''."""

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
    entity: str = ""
    version: str = ""
    vkey: str = ""


@dataclass
class JobRecord:
    """One job as the ledger holds it (an ended one's envelope is gone: ``destination``,
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
    entity: str = ""
    seq: int = 0
    version: str = ""
    vkey: str = ""
    top_seq: int = 0
    top_id: str = ""
    vjob: str = ""
    carried: str = ""
    merged_into: str = ""
    superseded_by: str = ""
    force: str = ""
    calling_since_ms: int = 0
    #: The token of the worker that claimed it (``host/pid/random``) while it runs.
    lock: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[str, str]) -> JobRecord:
        ints = {
            "submitted_at_ms",
            "updated_at_ms",
            "retry_until_ms",
            "attempts",
            "faults",
            "retries",
            "next_attempt_at_ms",
            "seq",
            "top_seq",
            "calling_since_ms",
        }
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

    @property
    def newest_seq(self) -> int:
        """The submission number of the newest job this one carries (itself, or the newest it
        absorbed)."""
        return max(self.seq, self.top_seq)


@dataclass(frozen=True)
class Claim:
    """Answer of ``Ledger.claim``: ``status`` is ``claimed``, ``terminal``, ``held``, ``locked``
    or ``missing``. Claimed: ``previous`` state, ``behind`` (jobs held behind it in its entity's
    line), and the highest version delivered for its entity (sort key) and by which job. Locked:
    ``lock_ms`` left on the other runner's lease. Terminal: ``previous`` is the state it ended
    in. Claimed also carries the job's ``record`` and its newest ``recent`` history entries
    (newest first), read in the same step, and, when the claim was given a pause to check, the
    pause's answer for the first call (``pause``: state, until, failures; ``Pause.verdict``)."""

    status: str
    previous: str = ""
    behind: int = 0
    delivered_vkey: str = ""
    delivered_by: str = ""
    lock_ms: int = 0
    record: JobRecord | None = None
    recent: tuple[dict[str, Any], ...] = ()
    pause: tuple[int, ...] | None = None

    def last_entry(self) -> dict[str, Any] | None:
        """``Ledger.last_entry`` as of the claim."""
        return _last_entry(self.recent)


def _last_entry(entries: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The first of ``entries`` (newest first) that is not a note that a lease expired."""
    return next((entry for entry in entries if entry.get("event") != "lease-expired"), None)


@dataclass(frozen=True)
class LastDelivery:
    """An entity's newest delivery: the job (``job_id``, the newest one its call carried), its
    submission number and when; and the highest version delivered and by which job."""

    job_id: str
    seq: int
    at_ms: int
    vkey: str = ""
    version_job: str = ""


@dataclass(frozen=True)
class Taken:
    """A job a head takes over when it is claimed (``Ledger.absorb``): ``outcome`` is
    ``merged`` (its changes travel in the head's call) or ``superseded`` (an older version than
    one delivered; never sent), ``by`` the job that carries or supersedes it."""

    id: str
    outcome: str
    by: str
    reason: str


class LedgerConflict(Exception):
    """The job is not in a state that allows this action (e.g. requeue of a delivered job)."""


class Ledger:
    """Job records, entity lines and their sets in Redis.

    client: a ``decode_responses=True`` client. prefix: key prefix. retention_s: how long a job
    stays after it ended. history_len: attempts and events kept per job. lease_ms: how long a
    worker's claim on a job lasts unless renewed (``renew``); a dead worker's job is queued
    again this long after its last renewal (``reap``). window: most messages kept on each
    broker list (a queue at one priority); the rest of a backlog waits in the ledger's ready
    set and is fed in as messages are taken (0: no limit).
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "cs:",
        retention_s: int = 14 * 86_400,
        history_len: int = 50,
        lease_ms: int = 10_000,
        window: int = 1000,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        self.r = client
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.prefix = prefix
        self.retention_s = retention_s
        self.history_len = history_len
        self.lease_ms = lease_ms
        self.window = window
        lib = "ledger_lib"
        self._create = scripts.load(client, "create", lib)
        self._claim = scripts.load(client, "claim", (lib, "pause_lib"))
        self._transition = scripts.load(client, "transition", lib)
        self._absorb = scripts.load(client, "absorb", lib)
        self._renew = scripts.load(client, "renew", lib)
        self._reap = scripts.load(client, "reap", lib)
        self._unclaim = scripts.load(client, "unclaim", lib)
        self._due = scripts.load(client, "due", lib)
        self._reconcile = scripts.load(client, "reconcile", lib)
        self._feed = scripts.load(client, "feed", lib)
        self._give_up = scripts.load(client, "give_up")
        self._prune = scripts.load(client, "prune")

    def _common(self) -> list[str | int]:
        """The first five arguments of every ledger_lib script."""
        return [self.prefix, now_ms(), self.retention_s, self.history_len, self.window]

    # -- keys ---------------------------------------------------------------------------------
    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def history_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:history"

    def batch_key(self, batch: str) -> str:
        return f"{self.prefix}batch:{batch}"

    def line_key(self, entity: str) -> str:
        return f"{self.prefix}entity:{entity}"

    @property
    def counts_key(self) -> str:
        return f"{self.prefix}counts"

    def set_key(self, name: str) -> str:
        """``review``, ``rejected``, ``schedule`` or ``running``."""
        return f"{self.prefix}{name}"

    # -- producers ----------------------------------------------------------------------------
    def create(
        self, job: NewJob, message: Template | None = None, due_ms: int | None = None
    ) -> tuple[str, bool]:
        """Record a new job and queue it (its Celery message, ``message`` filled in with its id,
        if it is the head of its entity's line; else it is held) in one step; returns (job id,
        created). Without a message the job goes on the schedule, due at ``due_ms`` (default
        now), for a republisher to publish. A job whose idempotency key was used already returns
        that job's id and creates nothing."""
        [(job_id, created)] = self.create_many([job], [message], due_ms)
        return job_id, created

    def create_many(
        self,
        jobs: list[NewJob],
        messages: list[Template | None] | list[Template],
        due_ms: int | None = None,
    ) -> list[tuple[str, bool]]:
        """``create`` for many jobs in one round trip (each job atomic on its own): jobs that
        share a queue, a priority, a message template, a batch and a client go
        ``CREATE_GROUP`` to a script call. Jobs of one entity join its line in their order
        here."""
        at = now_ms()
        groups: dict[tuple[str, str, str, str, str, str], list[int]] = {}
        for n, (job, message) in enumerate(zip(jobs, messages, strict=True)):
            key, text = (message.key, message.text) if message else ("", "")
            group = (job.queue, job.priority, key, text, job.batch, job.client)
            groups.setdefault(group, []).append(n)
        pipe = self.r.pipeline(transaction=False)
        order: list[int] = []
        for (queue, priority, key, text, batch, client), members in groups.items():
            for start in range(0, len(members), CREATE_GROUP):
                chunk = members[start : start + CREATE_GROUP]
                args: list[str | int] = [
                    *self._common(),
                    client,
                    batch,
                    queue,
                    priority,
                    key,
                    text,
                    due_ms or at,
                ]
                for n in chunk:
                    job = jobs[n]
                    args += [
                        job.id,
                        "1" if job.idempotency_key else "",
                        job.kind,
                        job.payload,
                        job.retry_until_ms,
                        job.idempotency_key or "",
                        job.entity,
                        job.version,
                        job.vkey,
                    ]
                self._create(keys=[], args=args, client=pipe)
                order += chunk
        if self.wait_replicas:  # on the connection that wrote them: WAIT counts its writes
            pipe.wait(self.wait_replicas, self.wait_timeout_ms)
        replies = pipe.execute()
        if self.wait_replicas and replies.pop() < self.wait_replicas:
            raise NotReplicated(
                f"the jobs are written, but fewer than {self.wait_replicas} "
                f"replica(s) had them within {self.wait_timeout_ms} ms "
                "(CONTACTSYNC_REDIS_WAIT_REPLICAS)"
            )
        flags = [flag for reply in replies for flag in reply]
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

    def get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        """Records of many jobs in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.job_key(job_id))
        raws = cast(list[dict[str, str]], pipe.execute())
        return [
            JobRecord.from_hash(i, raw) if raw else None
            for i, raw in zip(job_ids, raws, strict=True)
        ]

    def listing(
        self, name: str, offset: int = 0, limit: int = 50, newest_first: bool = False
    ) -> list[tuple[str, int]]:
        """Ids in one of the ledger's sorted sets (``review``, ``rejected``, ``schedule``,
        ``running``, ``recent:merged``, ...), oldest first (``newest_first``: the reverse), with
        their score: the time (ms) they got there, are due, or their lease ends."""
        rows = cast(
            list[tuple[str, float]],
            self.r.zrange(
                self.set_key(name), offset, offset + limit - 1, withscores=True, desc=newest_first
            ),
        )
        return [(job_id, int(score)) for job_id, score in rows]

    def fields_of(
        self, job_ids: list[str], names: tuple[str, ...], chunk: int = 2000
    ) -> list[list[str | None]]:
        """Some fields of many jobs (``HMGET``, pipelined ``chunk`` at a time): what a
        filtered listing reads of each job, a tenth of a whole record."""
        values: list[list[str | None]] = []
        for start in range(0, len(job_ids), chunk):
            pipe = self.r.pipeline(transaction=False)
            for job_id in job_ids[start : start + chunk]:
                pipe.hmget(self.job_key(job_id), names)
            values += cast(list[list[str | None]], pipe.execute())
        return values

    def size(self, name: str) -> int:
        return int(self.r.zcard(self.set_key(name)))

    def counts(self) -> dict[str, int]:
        """Jobs per state. Running jobs are the size of the ``running`` set, not a count the
        scripts keep (``recount`` in ledger_lib.lua)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.counts_key)
        pipe.zcard(self.set_key("running"))
        raw, running = cast(tuple[dict[str, str], int], pipe.execute())
        counts = {state: int(raw.get(state, 0)) for state in STATES}
        counts[RUNNING] = int(running)
        return counts

    def batch_counts(self, batch: str) -> dict[str, int]:
        """Of the jobs recorded in ``batch``: how many (``jobs``), how many ended in each state
        (delivered, merged, superseded, review, rejected), and how many are still on their way
        (``pending``)."""
        raw = cast(dict[str, str], self.r.hgetall(self.batch_key(batch)))
        counts = {name: int(raw.get(name, 0)) for name in ("jobs", *TERMINAL)}
        counts["pending"] = counts["jobs"] - sum(counts[state] for state in TERMINAL)
        return counts

    def line(self, entity: str, limit: int = MAX_ABSORB + 1) -> list[str]:
        """The pending jobs of ``entity``, oldest (the head) first."""
        return [str(i) for i in self.r.lrange(self.line_key(entity), 0, limit - 1)]

    def last_delivery(self, entity: str) -> LastDelivery | None:
        """The newest delivery of ``entity`` (None if none is remembered)."""
        raw = cast(dict[str, str], self.r.hgetall(f"{self.line_key(entity)}:last"))
        if not raw.get("d"):
            return None
        return LastDelivery(
            raw["d"],
            int(raw.get("ds", 0)),
            int(raw.get("at", 0)),
            raw.get("v", ""),
            raw.get("vj", ""),
        )

    def newer_delivered(self, record: JobRecord) -> LastDelivery | None:
        """The newest delivery of ``record``'s entity if it came from a job submitted after
        ``record`` (and the jobs it absorbed): sending ``record`` now would overwrite newer
        data."""
        if not record.entity:
            return None
        last = self.last_delivery(record.entity)
        if last is None or last.seq <= record.newest_seq:
            return None
        return last

    def order_facts(self, record: JobRecord) -> dict[str, Any]:
        """What an operator asks about a job's place among the jobs of its record: the job that
        carries it (``merged_into``, and that job's state), the job that superseded it, the jobs
        it waits behind (a held job), and a newer delivery that requeueing it would overwrite
        (a job in review or rejected). Only the facts that apply."""
        facts: dict[str, Any] = {}
        if record.merged_into:
            carrier = self.get(record.merged_into)
            facts["merged_into"] = {
                "job_id": record.merged_into,
                "state": carrier.state if carrier else "expired",
            }
        if record.superseded_by:
            facts["superseded_by"] = record.superseded_by
        if record.state == HELD and record.entity:
            line = self.line(record.entity, 1000)
            if record.id in line:
                facts["waits_behind"] = {"jobs": line.index(record.id), "head": line[0]}
        if record.state in (REVIEW, REJECTED):
            newer = self.newer_delivered(record)
            if newer is not None:
                facts["newer_delivered"] = {"job_id": newer.job_id, "at_ms": newer.at_ms}
        return facts

    # -- workers ------------------------------------------------------------------------------
    def claim(
        self,
        job_id: str,
        token: str,
        lease_ms: int | None = None,
        pause: tuple[str, int] | None = None,
    ) -> Claim:
        """Take a job to run it (one runner at a time, only the head of its entity's line).
        ``pause``: its destination's (``Pause.claim_args``), checked in the same step for the
        job's first call (``Claim.pause``)."""
        lease = self.lease_ms if lease_ms is None else lease_ms
        pause_key, probe_interval_ms = pause or ("", 0)
        reply = self._claim(
            keys=[], args=[*self._common(), job_id, token, lease, pause_key, probe_interval_ms]
        )
        status = str(reply[0])
        if status == "claimed":
            raw = reply[5]
            record = JobRecord.from_hash(job_id, dict(zip(raw[::2], raw[1::2], strict=True)))
            recent = tuple(json.loads(entry) for entry in reply[6])
            return Claim(
                status,
                str(reply[1]),
                int(reply[2]),
                str(reply[3]),
                str(reply[4]),
                record=record,
                recent=recent,
                pause=tuple(int(v) for v in reply[7]) if len(reply) > 7 and reply[7] else None,
            )
        if status == "locked":
            return Claim(status, lock_ms=max(0, int(reply[1])))
        return Claim(status, str(reply[1]))

    def last_entry(self, job_id: str) -> dict[str, Any] | None:
        """The newest history entry of a job that says something about its calls (a note that
        its lease expired is skipped: the answer before it may still be unsettled)."""
        return _last_entry(
            [json.loads(raw) for raw in self.r.lrange(self.history_key(job_id), 0, 1)]
        )

    def unlock(self, job_id: str, token: str) -> None:
        """Give up this worker's claim on a job early (it keeps its state)."""
        self._give_up(keys=[self.job_key(job_id)], args=[token])

    def unclaim(self, job_id: str, token: str) -> bool:
        """Hand a claimed job back untouched: queued again, with a new message (its worker drops
        the one it ran); False if this worker's claim had already ended (nothing changed)."""
        return bool(self._unclaim(keys=[], args=[*self._common(), job_id, token]))

    def record_attempt(self, job_id: str, entry: dict[str, Any], fault: bool) -> None:
        """One call to the destination happened: count it and keep its answer in the history."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hincrby(self.job_key(job_id), "attempts", 1)
            if fault:
                pipe.hincrby(self.job_key(job_id), "faults", 1)
            pipe.hset(
                self.job_key(job_id),
                mapping={
                    "last_code": entry.get("code", ""),
                    "last_reason": entry.get("reason", ""),
                    "last_answer": entry.get("answer", ""),
                },
            )
            pipe.hdel(self.job_key(job_id), "calling_since_ms")
            pipe.lpush(self.history_key(job_id), json.dumps(entry))
            pipe.ltrim(self.history_key(job_id), 0, self.history_len - 1)
            pipe.execute()

    def note(self, job_id: str, entry: dict[str, Any]) -> None:
        """Add an entry to a job's history without changing its state (an operator revealed
        its payload, asked for its retry now): who did what to it stays on record."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.lpush(self.history_key(job_id), json.dumps({"at": now_ms(), **entry}))
            pipe.ltrim(self.history_key(job_id), 0, self.history_len - 1)
            pipe.execute()

    def retry_now(self, job_id: str) -> bool:
        """Make a retrying job's next attempt due now (an operator fixed what it waited for);
        False if it is not on the schedule. ``recheck`` only ever moves an entry later: this is
        the one way earlier (``ZADD XX``: a job that left the schedule is not put back)."""
        at = now_ms()
        moved = self.r.zadd(self.set_key("schedule"), {job_id: at}, xx=True, ch=True)
        if moved:
            self.r.hset(self.job_key(job_id), "next_attempt_at_ms", at)
        return bool(moved)

    def _list_ended(self, outcome: str, job_ids: list[str]) -> None:
        """Add jobs that just ended ``merged`` or ``superseded`` to that listing, newest
        ``RECENT_ENDED`` kept."""
        if not job_ids:
            return
        key = self.set_key(f"recent:{outcome}")
        at = now_ms()
        with self.r.pipeline(transaction=False) as pipe:
            pipe.zadd(key, dict.fromkeys(job_ids, at))
            pipe.zremrangebyrank(key, 0, -RECENT_ENDED - 1)
            pipe.execute()

    def renew(self, leases: dict[str, str], calling: dict[str, int] | None = None) -> list[str]:
        """Extend this process's claims (job id → lock token) by one lease, and mark the jobs in
        ``calling`` (job id → when its call started, ms) as calling their destination; returns
        the ids whose claim was already gone."""
        if not leases:
            return []
        calling = calling or {}
        triples = [x for id_, token in leases.items() for x in (id_, token, calling.get(id_, ""))]
        lost = self._renew(keys=[], args=[*self._common(), self.lease_ms, *triples])
        return [str(job_id) for job_id in lost]

    def reap(self, limit: int = 500, dead: list[str] | tuple[str, ...] = ()) -> list[str]:
        """Queue again the running jobs whose worker stopped renewing its claim, or is one of
        the ``dead`` processes ("host/pid", ``worker/liveness.py``); returns their ids."""
        return [str(i) for i in self._reap(keys=[], args=[*self._common(), limit, *dead])]

    def absorb(
        self,
        job_id: str,
        token: str,
        payload: str,
        version: tuple[str, str, str],
        newest: tuple[int, str],
        priority: str,
        retry_until_ms: int,
        taken: list[Taken],
        carried: str = "",
    ) -> str:
        """The claimed head ``job_id`` takes over ``taken`` (held behind it): its payload
        becomes ``payload`` (the merge), its version ``version`` (shown, sort key, the job that
        gave it), the newest
        job it carries ``newest`` (submission number, id), its priority ``priority`` ('' to
        keep it), its retry window ``retry_until_ms`` (the latest of theirs), and ``carried``
        (the jobs it carries as submitted, JSON; '' when versions play no part). Returns ``ok``,
        ``lost`` (our claim ended) or ``changed`` (nothing done)."""
        at = now_ms()
        merged = [t.id for t in taken if t.outcome == MERGED]
        superseded = [t.id for t in taken if t.outcome == SUPERSEDED]
        entry = {"at": at, "event": "absorbed", "merged": ",".join(merged)}
        if superseded:
            entry["superseded"] = ",".join(superseded)
        args: list[str | int] = [
            *self._common(),
            job_id,
            token,
            payload,
            *version,
            newest[0],
            newest[1],
            priority,
            retry_until_ms,
            json.dumps(entry),
            carried,
        ]
        for t in taken:
            link = "into" if t.outcome == MERGED else "by"
            note = {"at": at, "event": t.outcome, link: t.by, "reason": t.reason}
            args += [t.id, t.outcome, t.by, t.reason, json.dumps(note)]
        done = str(self._absorb(keys=[], args=args))
        if done == "ok":
            self._list_ended(MERGED, merged)
            self._list_ended(SUPERSEDED, superseded)
        return done

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
        attempt: dict[str, Any] | None = None,
        fault: bool = False,
    ) -> str:
        """Move a job to ``state``; returns its previous state.

        token: the worker's lock token (the lock is released); empty for operator actions.
        allowed: states the job must be in now, else ``LedgerConflict``.
        due_ms: put the job on the schedule for then. entry: the history entry to add; its
        ``code`` and ``reason`` become the job's ``last_code`` and ``last_reason``.
        A job that ends or goes to review leaves its entity's line and releases the next one;
        one that is requeued (``queued`` from review or rejected) joins the end of its line,
        and is held if jobs are pending before it (``state_now`` tells).
        """
        return self.transition_to(
            job_id,
            state,
            entry,
            token=token,
            allowed=allowed,
            due_ms=due_ms,
            fields=fields,
            attempt=attempt,
            fault=fault,
        )[0]

    def transition_to(
        self,
        job_id: str,
        state: str,
        entry: dict[str, Any],
        *,
        token: str = "",
        allowed: tuple[str, ...] = (),
        due_ms: int | None = None,
        fields: dict[str, str | int] | None = None,
        attempt: dict[str, Any] | None = None,
        fault: bool = False,
    ) -> tuple[str, str]:
        """``transition``, returning (previous state, state now): a requeued job may be
        ``held``. ``attempt``: the call this settles (its history entry, as ``record_attempt``
        takes it; ``fault`` if its answer counts against the fault budget), recorded in the
        same step."""
        common = self._common()
        changes: dict[str, str | int] = {
            f"last_{k}": entry[k] for k in ("code", "reason") if entry.get(k)
        }
        if attempt is not None:
            changes["last_answer"] = attempt.get("answer", "")
        changes.update(fields or {})
        flat = [str(x) for pair in changes.items() for x in pair]
        reply = self._transition(
            keys=[],
            args=[
                *common,
                job_id,
                token,
                ",".join(allowed),
                state,
                "" if due_ms is None else due_ms,
                json.dumps({"at": common[1], **entry}),
                "" if attempt is None else json.dumps(attempt),
                int(fault),
                *flat,
            ],
        )
        status, previous = str(reply[0]), str(reply[1])
        if status == "missing":
            raise LedgerConflict(f"job {job_id} does not exist (or its record has expired)")
        if status == "conflict":
            raise LedgerConflict(f"job {job_id} is {previous}, not {' or '.join(allowed)}")
        if status == "lost":
            raise LedgerConflict(f"job {job_id}: this worker's claim expired before it settled")
        if state in (MERGED, SUPERSEDED):
            self._list_ended(state, [job_id])
        return previous, str(reply[2])

    # -- the runtime's own rounds --------------------------------------------------------------
    def due(self, limit: int = 500) -> list[str]:
        """Queue the jobs on the schedule whose time has come (see due.lua); returns their
        ids."""
        return [str(i) for i in self._due(keys=[], args=[*self._common(), limit])]

    def reconcile(
        self, queue: str, grace_ms: int, unacked_key: str, held_ms: int, confirm_ms: int = 0
    ) -> tuple[int, list[str]]:
        """For one queue: feed ready jobs onto its broker lists, and push again the messages
        lost in transit or left with a dead worker (see reconcile.lua): those found missing at
        an earlier call too, at least ``confirm_ms`` before (0: the first time). Returns (jobs
        fed, ids sent again)."""
        reply = self._reconcile(
            keys=[], args=[*self._common(), queue, grace_ms, unacked_key, held_ms, confirm_ms]
        )
        return int(reply[0]), [str(i) for i in reply[1:]]

    def feed(self, queue: str) -> int:
        """Feed ready jobs of ``queue`` onto its broker lists while they have room."""
        return int(self._feed(keys=[], args=[*self._common(), queue]))

    def store_templates(self, templates: list[tuple[str, str, Template]]) -> None:
        """Store (queue, priority, template) message templates for the scripts (a worker does
        on start; ``create`` stores its own as it goes)."""
        pipe = self.r.pipeline(transaction=False)
        for queue, priority, template in templates:
            pipe.hset(
                f"{self.prefix}message:{queue}:{priority}",
                mapping={"list": template.key, "text": template.text},
            )
        pipe.execute()

    def waiting(self, queue: str) -> int:
        """Queued jobs of ``queue`` that wait for room on its broker lists."""
        pipe = self.r.pipeline(transaction=False)
        for priority in ("realtime", "bulk"):
            pipe.zcard(f"{self.prefix}ready:{queue}:{priority}")
        return sum(int(n) for n in pipe.execute())

    def recheck(self, job_id: str, due_ms: int) -> None:
        """Put a job on the schedule, due no earlier than ``due_ms``: an entry due later (a
        retry its runner set) stays, an earlier one moves to ``due_ms`` (GT)."""
        self.r.zadd(self.set_key("schedule"), {job_id: due_ms}, gt=True)

    def prune_rejected(self, limit: int = 500) -> int:
        """Forget rejected jobs whose records have expired; returns how many."""
        cutoff = now_ms() - self.retention_s * 1000
        return int(
            self._prune(
                keys=[self.set_key("rejected"), self.counts_key],
                args=[cutoff, limit, self.job_key("")],
            )
        )
