"""The one Celery base task: claim a job, call its destination, and settle the outcome in the
ledger: delivered, retrying (through Redis), review or rejected.

Flower sees each settlement as a state: SUCCESS for delivered, RETRY, and the custom states REVIEW
and DEADLETTER (ledger ``rejected``), sent as task events; the task then ends with ``Ignore`` so no
SUCCESS or FAILURE overwrites them. (Celery's own ``task-rejected`` event would not do: Flower
ranks REJECTED before STARTED and would keep showing STARTED.)

Every call goes through its destination's concurrency gate (``worker/gate.py``) when the connector
has one: the permit is taken just before the call and given back, with the call's latency, right
after it. A job that gets no permit within the gate's wait goes back to its queue unchanged.

A destination that keeps failing (refused connections, 502/503/504), or whose credentials or
configuration are refused, is paused fleet-wide (``worker/pause.py``): its jobs wait in Redis
without spending a retry or a fault, and one job at a time probes it.

Every answer is recorded in the job's history before it is settled. A worker that finds a job
whose last entry is an answer that was never settled (Redis failed in between) settles that answer
instead of calling again: a 110 conflict is never sent twice by accident.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import httpx
from celery import Task, signals
from celery.exceptions import Ignore, Reject
from pydantic import ValidationError
from redis.exceptions import RedisError
from tenacity import (
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random_exponential,
)

from tasks.models import JobModel, JobValidationError, model_for
from tasks.ordering import Plan, plan
from tasks.outcomes import Delivered, Outcome, Reauth, Rejected, Retry, Review, Superseded
from worker.broker import redis_client
from worker.claims import ClaimKeeper
from worker.codec import PayloadKeyError, seal, unseal
from worker.gate import BUSY, HOST, NONE, OK, Gate, GateConfig, Permit, gate_name
from worker.ledger import (
    DELIVERED,
    QUEUED,
    REJECTED,
    RETRYING,
    REVIEW,
    SUPERSEDED,
    Claim,
    JobRecord,
    Ledger,
    LedgerConflict,
    now_ms,
)
from worker.pause import Pause, Verdict
from worker.redaction import scrub, scrub_personal
from worker.requeue_log import NO_PERMIT
from worker.runtime import ledger as runtime_ledger
from worker.settings import DestinationSettings, NoojeeSettings, get_settings, mask_url_password

log = logging.getLogger(__name__)

#: How much of a destination's answer the ledger keeps.
ANSWER_CHARS = 300

#: The personal values of the job this thread delivers (``JobModel.personal_values``): the
#: task object is shared by the worker's threads, so they cannot live on it.
_delivering = threading.local()

#: Outcomes that end a job, by the name an attempt records them under.
FINAL_OUTCOMES: dict[str, type[Delivered | Review | Rejected]] = {
    "delivered": Delivered,
    "review": Review,
    "rejected": Rejected,
}


class NotConfigured(RuntimeError):
    """The destination lacks configuration (a URL, a credential). Not the job's fault: its jobs
    wait (retrying) until the configuration is fixed, and the worker logs this error."""


class NoPermit(Exception):
    """The gate gave no permit within its wait: the job goes back to its queue, unchanged."""


@dataclass(frozen=True)
class Attempt:
    """One call's answer as the job's history keeps it (``entry``), and whether it counts against
    the fault budget. The final call's is recorded with the state it leads to, in one step."""

    entry: dict[str, Any]
    fault: bool


class Deferred(Exception):
    """The destination is paused: the job waits in Redis until ``until_ms``, nothing spent.
    ``attempt``: the call whose answer paused it, if one did."""

    def __init__(self, until_ms: int, reason: str, attempt: Attempt | None = None) -> None:
        super().__init__(reason)
        self.until_ms = until_ms
        self.reason = reason
        self.attempt = attempt


@dataclass(frozen=True)
class Answer:
    """What one call produced: the outcome, and the destination's answer as text (codes and
    messages only: connectors must not put request data or contact data in it).

    measured: the destination processed the call (its latency says how loaded it is, a sample
    for the adaptive gate); False for transport errors and answers given before any work.
    """

    outcome: Outcome
    answer: str = ""
    measured: bool = False


class LoginUnanswered(Exception):
    """A connector's login got no verdict on the credentials (the destination is down or
    failing, a transport error): carries the answer that settles the job, a retry, not a
    refusal (``LoginFailed``), since the configuration may be right."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.outcome.reason)
        self.answer = answer


class Connector(Protocol):
    """A destination's client: one call for one job, classified by the destination's table.
    ``gate`` limits the calls in flight to the destination across the fleet (None: no limit).
    A connector lets a ``RedisError`` (its fleet's token cache) go up: the job's message goes
    back to its queue, nothing spent (``DeliveryTask.deliver``)."""

    gate: Gate | None

    def prepare(self, job: JobModel) -> Callable[[], Answer]:
        """Build the request; the returned function sends it and classifies the answer. Built
        before a permit is taken, so a permit covers the call alone and the next call is ready
        to go the moment one is handed over."""
        ...

    def send(self, job: JobModel) -> Answer: ...

    def secrets(self) -> list[str]:
        """Credentials to scrub from any text that could reach a person."""
        ...


# -- what the HTTP connectors share -------------------------------------------------------------
def destination_gate(
    destination: str,
    target: str,
    config: DestinationSettings | NoojeeSettings,
    initial: int | None = None,
) -> Gate:
    """The fleet-wide cap of calls in flight to one endpoint of ``destination`` (fixed at
    ``max_concurrency`` unless ``adaptive``, then starting at ``initial``, default 2), shared by
    every thread, process and host, with the adaptive controller's settings."""
    settings = get_settings()
    target = mask_url_password(target).rstrip("/")
    gate_config = GateConfig(
        maximum=config.max_concurrency,
        adaptive=config.adaptive,
        initial=min(initial or 2, config.max_concurrency)
        if config.adaptive
        else config.max_concurrency,
        ttl_s=settings.gate.lease_ttl_s,
        max_wait_s=settings.gate.max_wait_s,
        policy=settings.gate.policy.config(),
        max_patience_s=settings.gate_patience_s(),
    )
    return Gate(
        redis_client(),
        gate_name(destination, target),
        gate_config,
        prefix=settings.key_prefix,
        target=target,
        destination=destination,
    )


def http_timeout(config: DestinationSettings) -> httpx.Timeout:
    return httpx.Timeout(
        connect=config.connect_timeout_s,
        read=config.read_timeout_s,
        write=config.connect_timeout_s,
        pool=config.connect_timeout_s,
    )


def require(destination: str, config: DestinationSettings) -> None:
    """Raise ``NotConfigured`` naming every variable still to set for ``destination``."""
    missing = config.missing()
    if missing:
        names = ", ".join(f"CONTACTSYNC_{destination.upper()}__{name}" for name in missing)
        raise NotConfigured(
            f"{destination} is not configured: set {names} (or run "
            "`contactsync up` to use the simulator)"
        )


#: Status codes of a proxy or load balancer in front of a destination that is down.
GATEWAY_DOWN = frozenset({502, 503, 504})


def gateway_outcome(status: int, name: str) -> Retry:
    """502/503/504: the destination (or the way to it) is down; enough in a row pause it."""
    return Retry(
        f"http-{status}",
        f"{name} answered HTTP {status} (down or overloaded)",
        bounded=True,
        down=True,
    )


def idempotent_transport_outcome(exc: Exception, name: str) -> Retry:
    """A transport error on a call that is safe to repeat (sending it twice does no harm, so
    even an answer lost after sending is retried). Failing to connect means the destination
    is down (counted towards a pause); the rest are bounded retries."""
    kind = type(exc).__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return Retry(kind, f"could not connect to {name}", bounded=True, down=True)
    if isinstance(exc, httpx.ReadTimeout):
        return Retry(
            kind,
            f"{name} did not answer within the read timeout; the call is safe "
            "to repeat, so it is sent again",
            bounded=True,
        )
    return Retry(kind, f"transport error {kind} talking to {name}", bounded=True)


def record_api_usage(destination: str, used: int, allowed: int) -> None:
    """What a destination said of its API allowance (Salesforce ``Sforce-Limit-Info``), for the
    metrics (``contactsync_api_usage``)."""
    settings = get_settings()
    try:
        redis_client().hset(
            f"{settings.key_prefix}api-usage:{destination}",
            mapping={"used": used, "allowed": allowed, "at_ms": now_ms()},
        )
    except RedisError as exc:
        log.warning("%s: could not record API usage: %s", destination, exc)


class DeliveryTask(Task):
    """Base of every destination task. Subclasses (via ``@shared_task(base=...)``) set
    ``connector_factory``; the task body calls ``self.deliver(job_id)``."""

    abstract = True
    connector_factory: ClassVar[Callable[[], Connector]]
    _connector: Connector | None = None
    _pause: Pause | None = None
    _connector_lock: ClassVar[threading.Lock] = threading.Lock()

    @property
    def connector(self) -> Connector:
        """The destination's client: one per task class per process, shared by its threads."""
        with self._connector_lock:
            if self._connector is None:
                type(self)._connector = type(self).connector_factory()
            assert self._connector is not None
            return self._connector

    def pause_for(self, connector: Connector) -> Pause:
        """The destination's pause, named after its gate (one per endpoint)."""
        with self._connector_lock:
            if self._pause is None:
                settings = get_settings()
                name = connector.gate.name if connector.gate is not None else self.name
                type(self)._pause = Pause(
                    redis_client(),
                    name,
                    prefix=settings.key_prefix,
                    after_failures=settings.pause.after_failures,
                    probe_interval_s=settings.pause.probe_interval_s,
                    config_probe_interval_s=settings.pause.config_probe_interval_s,
                    limit_probe_interval_s=settings.pause.limit_probe_interval_s,
                )
            assert self._pause is not None
            return self._pause

    def deliver(self, job_id: str) -> dict[str, Any]:
        """Deliver the job; a Redis error on the way puts its message back on the queue, so a
        blip between claiming and settling cannot strand the job without a message."""
        # host/pid/random: whose claim it is shows in Redis (the job hash's lock field).
        token = f"{HOST}/{os.getpid()}/{uuid.uuid4().hex[:16]}"
        try:
            return self._deliver(job_id, token)
        except RedisError:
            log.warning("Redis failed while handling job %s; its message goes back", job_id)
            try:  # let the requeued message run without waiting out our lease
                runtime_ledger().unlock(job_id, token)
            except RedisError:
                pass  # the lease expires by itself
            raise Reject(requeue=True) from None

    def _deliver(self, job_id: str, token: str) -> dict[str, Any]:
        ledger = runtime_ledger()
        pause = self._configured_pause()
        claim = ledger.claim(job_id, token, pause=pause.claim_args if pause else None)
        if claim.status == "missing":
            log.error("job %s has no ledger record (expired or never recorded); dropped", job_id)
            raise Ignore()
        if claim.status == "terminal":
            log.info("job %s is already %s; duplicate message dropped", job_id, claim.previous)
            raise Ignore()
        if claim.status == "held":
            # An earlier job of the same record runs or waits for its retry; this job is queued
            # again the moment that one ends. (A stale duplicate message.)
            log.info("job %s waits for an earlier job of its record; message dropped", job_id)
            raise Ignore()
        if claim.status == "locked":
            # Another worker runs this job (a redelivered duplicate): check again once its lease
            # can have ended.
            ledger.recheck(job_id, due_ms=now_ms() + claim.lock_ms + 1000)
            raise Ignore()
        keeper = ClaimKeeper.for_process(ledger)
        keeper.hold(job_id, token)
        try:
            return self._run_claimed(ledger, job_id, token, claim)
        finally:
            keeper.forget(job_id)

    def _configured_pause(self) -> Pause | None:
        """The destination's pause, to be checked in the claim's step; None if the destination
        is not configured (its jobs wait without calling: ``_call_once``)."""
        try:
            return self.pause_for(self.connector)
        except NotConfigured:
            return None

    def _run_claimed(self, ledger: Ledger, job_id: str, token: str, claim: Claim) -> dict[str, Any]:
        unsettled = _unsettled_answer(claim.last_entry())
        if unsettled is not None:
            log.warning(
                "job %s: settling its recorded answer %s without calling again",
                job_id,
                unsettled.code,
            )
            return self._settle(ledger, job_id, token, unsettled)

        record = claim.record
        assert record is not None
        try:
            job = model_for(record.kind).model_validate_json(unseal(record.payload))
        except PayloadKeyError as exc:  # a key was dropped too early: a person adds it back
            return self._settle(ledger, job_id, token, Review("payload-key", str(exc)))
        except (ValidationError, JobValidationError) as exc:
            problems = (
                exc.problems
                if isinstance(exc, JobValidationError)
                else JobValidationError.from_pydantic(record.kind, exc).problems
            )
            reason = "payload no longer valid: " + "; ".join(f"{p}: {m}" for p, m in problems)
            return self._settle(ledger, job_id, token, Rejected("invalid-payload", reason))

        _delivering.personal = job.personal_values()
        try:
            return self._deliver_job(ledger, record, job, claim, token)
        finally:
            _delivering.personal = []

    def _deliver_job(
        self, ledger: Ledger, record: JobRecord, job: JobModel, claim: Claim, token: str
    ) -> dict[str, Any]:
        job_id = record.id
        decided = self._in_order(ledger, record, job, claim, token)
        if decided.absorbs:  # the merged call carries the absorbed jobs' values too
            _delivering.personal = [*job.personal_values(), *decided.job.personal_values()]
        if decided.superseded:
            return self._settle(
                ledger,
                job_id,
                token,
                Superseded("superseded", decided.superseded, claim.delivered_by),
            )
        # The pause's answer for the first call came with the claim.
        verdict = self.pause_for(self.connector).verdict(*claim.pause) if claim.pause else None
        try:
            outcome, attempt = self._attempt(
                ledger, job_id, decided.job, decided.priority or record.priority, verdict
            )
        except NoPermit as full:
            # The destination is at its limit: back to the queue (unclaim queues a new message),
            # no retry spent, and this thread is free for jobs of other queues. Normal at a full
            # gate: the reason lets worker/requeue_log.py log a summary instead of a warning and
            # traceback each.
            ClaimKeeper.for_process(ledger).settling(job_id)
            ledger.unclaim(job_id, token)
            raise Reject(f"{NO_PERMIT} {full}", requeue=False) from None
        except Deferred as paused:
            return self._defer(ledger, job_id, token, paused)
        return self._settle(ledger, job_id, token, outcome, attempt)

    def _in_order(
        self, ledger: Ledger, record: JobRecord, job: JobModel, claim: Claim, token: str
    ) -> Plan:
        """The head of its record's line: superseded, or what it sends (itself, or merged with
        the jobs held behind it; see ``tasks/ordering.py``)."""
        held: list[JobRecord | None] = []
        if claim.behind and record.entity:
            held = ledger.get_many(ledger.line(record.entity)[1:])
        decided = plan(record, job, claim, held, self._coalesces())
        if not decided.absorbs:
            return decided
        done = ledger.absorb(
            record.id,
            token,
            seal(decided.job.model_dump_json()),
            decided.version,
            decided.newest,
            decided.priority,
            decided.retry_until_ms,
            decided.taken,
            seal(decided.carried),
        )
        if done == "lost":
            log.warning("job %s: this worker's claim ended before it could merge", record.id)
            raise Ignore()
        if done != "ok":  # a job behind it changed meanwhile: send this one as it is
            return Plan(job)
        for taken in decided.taken:
            self._announce(
                taken.id,
                f"task-{taken.outcome}",
                reason=f"{taken.outcome} ({taken.by}): {taken.reason}",
                result=_shown(taken.outcome, f"by {taken.by}", taken.reason, taken.id),
            )
        return decided

    def _coalesces(self) -> bool:
        config = getattr(get_settings(), self.name.split(".")[0], None)
        return bool(getattr(config, "coalesce", True))

    def _announce(self, job_id: str, event: str, **fields: Any) -> None:
        """A Flower event for another job than the one this task runs (a job it absorbed)."""
        try:
            with self.app.events.default_dispatcher(hostname=self.request.hostname) as d:
                d.send(event, uuid=job_id, retry=False, **fields)
        except Exception as exc:  # only Flower's view: never worth failing a delivery
            log.debug("could not send %s for job %s: %s", event, job_id, exc)

    # -- calling ------------------------------------------------------------------------------
    def _attempt(
        self,
        ledger: Ledger,
        job_id: str,
        job: JobModel,
        priority: str,
        verdict: Verdict | None = None,
    ) -> tuple[Outcome, Attempt]:
        """Call the destination: the last call's outcome, and its answer to record as the job
        settles. Only "busy" answers (Noojee 109) are retried in-process, for
        ``retry.fast_window_s``: the destination is up and a slot frees within moments; each
        busy answer is recorded as the next call starts. Faults (a destination that is down)
        back off through Redis from the first one, so a short outage does not burn through the
        fault budget in seconds. ``verdict``: the pause's answer for the first call, if the
        claim checked it; every other call checks the pause itself."""
        made: list[Attempt] = []

        def call() -> Outcome:
            if made:  # the call before was busy, and is made again: its answer goes on record
                ledger.record_attempt(job_id, made[-1].entry, fault=made[-1].fault)
            answer, latency_s, waited_s, paused_until = self._call_once(
                job, priority, None if made else verdict
            )
            outcome = answer.outcome
            # A failure that paused the destination is the destination's, not the job's.
            fault = not paused_until and isinstance(outcome, Retry) and outcome.bounded
            made.append(
                Attempt(
                    {
                        "at": now_ms(),
                        "event": "attempt",
                        "outcome": type(outcome).__name__.lower(),
                        "code": outcome.code,
                        "reason": self._scrub(outcome.reason),
                        "answer": self._scrub(answer.answer)[:ANSWER_CHARS],
                        "latency_ms": round(latency_s * 1000),
                        "gate_wait_ms": round(waited_s * 1000),
                        "worker": self.request.hostname or "",
                    },
                    fault,
                )
            )
            _last_call.job_id, _last_call.latency_ms = job_id, round(latency_s * 1000)
            log.debug(
                "job %s: %s answered %s in %d ms",
                job_id,
                self.name.split(".")[0],
                outcome.code,
                latency_s * 1000,
                extra={
                    "job_id": job_id,
                    "destination": self.name.split(".")[0],
                    "outcome": type(outcome).__name__.lower(),
                    "code": outcome.code,
                    "latency_ms": round(latency_s * 1000),
                    "gate_wait_ms": round(waited_s * 1000),
                },
            )
            if paused_until:
                raise Deferred(
                    paused_until,
                    "the destination is paused: " + self._scrub(outcome.reason),
                    made[-1],
                )
            return outcome

        retrying = Retrying(
            stop=stop_after_delay(get_settings().retry.fast_window_s),
            wait=wait_random_exponential(multiplier=0.25, max=2.0),
            retry=retry_if_result(lambda outcome: isinstance(outcome, Retry) and outcome.busy),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        outcome: Outcome = retrying(call)
        return outcome, made[-1]

    def _call_once(
        self, job: JobModel, priority: str, verdict: Verdict | None = None
    ) -> tuple[Answer, float, float, int]:
        """One call, behind the destination's pause and gate: (answer, call latency, gate wait
        in s, and the time the destination is paused until if this answer paused it, else 0).
        Raises ``Deferred`` without calling if the destination is paused, ``NoPermit`` if the
        gate gave no permit in time. ``verdict``: the pause's answer already given (by the
        claim), else the pause is asked here."""
        try:
            connector = self.connector
        except NotConfigured as exc:
            log.error("%s cannot deliver: %s", self.name, exc)
            return Answer(Retry("not-configured", str(exc))), 0.0, 0.0, 0
        pause = self.pause_for(connector)
        if verdict is None:
            verdict = pause.check()
        if verdict.wait_until_ms:
            raise Deferred(
                verdict.wait_until_ms, f"{pause.name} is paused: {pause.status().reason or 'down'}"
            )
        prepared = self._guarded(lambda: connector.prepare(job))
        if isinstance(prepared, Answer):  # the request could not even be built
            return prepared, 0.0, 0.0, 0
        gate, permit = connector.gate, None
        if gate is not None:
            permit = gate.acquire(priority)
            if permit is None:
                raise NoPermit(gate.name)
        # The console tells a job calling from one waiting at the gate (a long call is marked).
        keeper = ClaimKeeper.for_process(runtime_ledger())
        if self.request.id:
            keeper.calling(self.request.id, now_ms())
        answer = Answer(Review("internal-error", "contactsync error; see the worker log"))
        started = time.monotonic()
        try:
            sent = self._guarded(prepared)
            if isinstance(sent, Answer):
                answer = sent
            else:  # a connector bug: a person looks
                log.error("%s: the connector answered %s, not an Answer", self.name, type(sent))
        finally:
            latency_s = time.monotonic() - started
            if self.request.id:
                keeper.called(self.request.id)
            if gate is not None and permit is not None:
                self._release(gate, permit, latency_s, answer)
        paused_until = self._judge(pause, verdict, answer.outcome)
        return answer, latency_s, permit.waited_s if permit is not None else 0.0, paused_until

    def _judge(self, pause: Pause, verdict: Verdict, outcome: Outcome) -> int:
        """Tell the destination's pause what the call found; returns the time it is paused
        until if the job must wait for it, else 0."""
        try:
            if isinstance(outcome, Reauth):
                return pause.pause_now(self._scrub(outcome.reason))
            if isinstance(outcome, Rejected) and outcome.pause:
                pause.pause_now(self._scrub(outcome.reason))
                return 0  # this job is rejected all the same
            if isinstance(outcome, Retry) and outcome.spent:
                return pause.pause_spent(self._scrub(outcome.reason))
            if isinstance(outcome, Retry) and outcome.down:
                return pause.failed(self._scrub(outcome.reason))
            pause.succeeded(verdict)
        except RedisError as exc:
            log.warning("%s: could not update the pause: %s", pause.name, exc)
        return 0

    def _guarded(self, step: Callable[[], Any]) -> Any:
        """``step()``, or the Answer that settles the job if it raised."""
        try:
            return step()
        except NotConfigured as exc:
            log.error("%s cannot deliver: %s", self.name, exc)
            return Answer(Retry("not-configured", str(exc)))
        except RedisError:
            raise  # (a token cache or gate in Redis failed): the message goes back, see deliver()
        except Exception as exc:  # a bug: a person looks, nothing is lost
            frames = "".join(traceback.format_tb(exc.__traceback__))
            # The exception's message may quote payload values: log its type and frames only.
            log.error("connector error %s in %s:\n%s", type(exc).__name__, self.name, frames)
            return Answer(
                Review(
                    "internal-error",
                    f"contactsync error {type(exc).__name__}; "
                    "see the worker log, fix, then requeue",
                )
            )

    @staticmethod
    def _release(gate: Gate, permit: Permit, latency_s: float, answer: Answer) -> None:
        outcome = answer.outcome
        signal = (
            BUSY if isinstance(outcome, Retry) and outcome.busy else OK if answer.measured else NONE
        )
        try:
            gate.release(permit, latency_s, signal)
        except RedisError as exc:  # the lease expires by itself within its TTL
            log.warning("gate %s: could not release a permit: %s", gate.name, exc)

    def _secrets(self) -> list[str]:
        return self._connector.secrets() if self._connector is not None else []

    def _scrub(self, text: str) -> str:
        """``text`` (a destination's answer, a reason built from it) as the ledger may keep it:
        credentials removed, and the delivered job's own personal values masked as its payload
        masks them, whichever connector wrote it."""
        return scrub_personal(scrub(text, self._secrets()), getattr(_delivering, "personal", ()))

    # -- settling -----------------------------------------------------------------------------
    def _defer(self, ledger: Ledger, job_id: str, token: str, paused: Deferred) -> dict[str, Any]:
        """The destination is paused: the job waits in the schedule until a little after the
        next probe (spread over one probe interval, so a recovered destination is not hit by
        the whole backlog at once). Nothing is spent; the retry window still applies."""
        record = ledger.get(job_id)
        assert record is not None
        now = now_ms()
        if now >= record.retry_until_ms:
            hours = get_settings().retry.window_s / 3600
            return self._settle(
                ledger,
                job_id,
                token,
                Review(
                    "paused",
                    f"the destination was still paused when the {hours:g} h retry window "
                    f"closed: {paused.reason}",
                ),
                paused.attempt,
            )
        spread = int(get_settings().pause.probe_interval_s * 1000)
        due = min(max(paused.until_ms, now) + random.randint(0, spread), record.retry_until_ms)
        self._move(
            ledger,
            job_id,
            token,
            RETRYING,
            {"event": "paused", "code": "paused", "reason": paused.reason},
            due_ms=due,
            fields={"next_attempt_at_ms": due},
            attempt=paused.attempt,
        )
        self.send_event("task-retried", exception=f"paused: {paused.reason}")
        raise Ignore()

    def _settle(
        self,
        ledger: Ledger,
        job_id: str,
        token: str,
        outcome: Outcome | Superseded,
        attempt: Attempt | None = None,
    ) -> dict[str, Any]:
        """Move the job to where ``outcome`` leads, recording ``attempt`` (the call that
        answered it, if one did) in the same step."""
        if isinstance(outcome, Reauth):  # only if it could not pause the destination
            outcome = Retry(outcome.code, outcome.reason, bounded=True)
        if isinstance(outcome, Retry):
            outcome = self._retry_or_give_up(ledger, job_id, token, outcome, attempt)
        reason = self._scrub(outcome.reason)
        entry: dict[str, Any] = {"code": outcome.code, "reason": reason}
        if isinstance(outcome, Superseded):
            self._move(
                ledger,
                job_id,
                token,
                SUPERSEDED,
                {"event": "superseded", **entry},
                fields={"superseded_by": outcome.by},
                attempt=attempt,
            )
            self._settled(job_id, SUPERSEDED, outcome.code)
            self.send_event(
                "task-superseded",
                reason=f"{outcome.code}: {reason}",
                result=_shown(SUPERSEDED, outcome.code, reason, job_id),
            )
            raise Ignore()
        if isinstance(outcome, Delivered):
            # The ledger drops the payload (personal data) and the envelope on delivery.
            self._move(
                ledger, job_id, token, DELIVERED, {"event": "delivered", **entry}, attempt=attempt
            )
            self._settled(job_id, DELIVERED, outcome.code)
            return {"state": DELIVERED, "code": outcome.code}
        if isinstance(outcome, Review):
            self._move(ledger, job_id, token, REVIEW, {"event": "review", **entry}, attempt=attempt)
            self._settled(job_id, REVIEW, outcome.code)
            self.send_event(
                "task-review",
                reason=f"{outcome.code}: {reason}",
                result=_shown(REVIEW, outcome.code, reason, job_id),
            )
            raise Ignore()
        if isinstance(outcome, Rejected):
            self._move(
                ledger, job_id, token, REJECTED, {"event": "rejected", **entry}, attempt=attempt
            )
            self._settled(job_id, REJECTED, outcome.code)
            self.send_event(
                "task-deadletter",
                reason=f"{outcome.code}: {reason}",
                result=_shown(REJECTED, outcome.code, reason, job_id),
            )
            raise Ignore()
        raise AssertionError(f"unhandled outcome {outcome!r}")

    def _settled(self, job_id: str, state: str, code: str) -> None:
        """One INFO line per job that ended (or went to review), with the fields a JSON log
        line carries (``CONTACTSYNC_LOG_FORMAT=json``)."""
        fields = {
            "job_id": job_id,
            "destination": self.name.split(".")[0],
            "outcome": state,
            "code": code,
        }
        if getattr(_last_call, "job_id", None) == job_id:  # its last call, in this thread
            fields["latency_ms"] = _last_call.latency_ms
        log.info("job %s settled: %s (%s)", job_id, state, code, extra=fields)

    def _retry_or_give_up(
        self, ledger: Ledger, job_id: str, token: str, outcome: Retry, attempt: Attempt | None
    ) -> Review:
        """Schedule the next attempt through Redis (ends the task with ``Ignore``), or, when the
        fault budget is spent or the retry window has closed, return the Review that ends it."""
        retry = get_settings().retry
        reason = self._scrub(outcome.reason)
        record = ledger.get(job_id)
        assert record is not None
        now = now_ms()
        faults = record.faults + (1 if attempt is not None and attempt.fault else 0)
        if outcome.bounded and faults >= retry.fault_attempts:
            return Review(outcome.code, f"gave up after {faults} faults: {reason}")
        if now >= record.retry_until_ms:
            hours = retry.window_s / 3600
            return Review(
                outcome.code, f"still failing when the {hours:g} h retry window closed: {reason}"
            )
        delay_s = min(retry.max_delay_s, retry.base_delay_s * 2 ** min(record.retries, 20))
        due = now + int(random.uniform(delay_s / 2, delay_s) * 1000)
        due = min(due, record.retry_until_ms)  # one last try at the window's end
        self._move(
            ledger,
            job_id,
            token,
            RETRYING,
            {"event": "retry", "code": outcome.code, "reason": reason},
            due_ms=due,
            fields={"next_attempt_at_ms": due, "retries": record.retries + 1},
            attempt=attempt,
        )
        self.send_event("task-retried", exception=f"{outcome.code}: {reason}")
        raise Ignore()

    @staticmethod
    def _move(
        ledger: Ledger,
        job_id: str,
        token: str,
        state: str,
        entry: dict[str, Any],
        due_ms: int | None = None,
        fields: dict[str, str | int] | None = None,
        attempt: Attempt | None = None,
    ) -> None:
        # A short Redis blip here would otherwise send the job round again after its answer.
        settling = Retrying(
            retry=retry_if_exception_type(RedisError),
            stop=stop_after_attempt(4),
            wait=wait_exponential(multiplier=0.2, max=2),
            reraise=True,
        )
        ClaimKeeper.for_process(ledger).settling(job_id)
        try:
            settling(
                ledger.transition,
                job_id,
                state,
                entry,
                token=token,
                due_ms=due_ms,
                fields=fields,
                attempt=None if attempt is None else attempt.entry,
                fault=attempt is not None and attempt.fault,
            )
        except LedgerConflict as exc:
            # Our claim outlived its lease and the message may already be gone: make sure the
            # job is looked at again rather than left running with nobody on it.
            log.warning("not settling %s as %s: %s", job_id, state, exc)
            ledger.recheck(job_id, due_ms=now_ms() + 1000)
            raise Ignore() from None


#: The latency of the last call each worker thread made, for the line its job's settling logs.
_last_call = threading.local()


def _shown(state: str, code: str, reason: str, job_id: str) -> str:
    """The outcome as Flower shows it in a task's Result (it renders ``result``, not a
    custom event's fields): the job's state, why, and where an operator acts on it."""
    return (
        f"{state.upper()}: {code}: {reason} (job state: {state}; act on it in the "
        f"console, /console/jobs/{job_id}, or `contactsync jobs show {job_id}`)"
    )


def _unsettled_answer(entry: dict[str, Any] | None) -> Outcome | None:
    """A final answer that was recorded but never settled, from the job's newest history entry."""
    if not entry or entry.get("event") != "attempt":
        return None
    final = FINAL_OUTCOMES.get(str(entry.get("outcome", "")))
    if final is None:
        return None
    return final(str(entry.get("code", "")), str(entry.get("reason", "")))


@signals.task_revoked.connect
def _revoked(sender: Any = None, request: Any = None, expired: bool = False, **_: Any) -> None:
    """An operator revoked a job (Flower's Revoke, ``celery control revoke``): the worker drops
    its message, so the job ends rejected with that reason (and can be requeued), instead of
    waiting for a message that will never come."""
    job_id = getattr(request, "id", None)
    if not job_id or not isinstance(sender, DeliveryTask):
        return
    why = (
        "its expiry passed"
        if expired
        else "revoked by an operator (Flower's Revoke or celery control revoke)"
    )
    try:
        runtime_ledger().transition(
            job_id,
            REJECTED,
            {
                "event": "revoked",
                "code": "revoked",
                "reason": f"{why}; `contactsync review requeue {job_id}` sends it again",
            },
            allowed=(QUEUED, RETRYING),
        )
        log.warning("job %s was revoked: it ends rejected", job_id)
    except LedgerConflict as exc:  # running, or ended meanwhile: it stays as it is
        log.info("job %s was revoked but is not waiting: %s", job_id, exc)
    except RedisError as exc:
        log.error("job %s was revoked but the ledger could not be told: %s", job_id, exc)
