"""The one Celery base task: claim a job, call its destination (with short in-process retries),
and settle the outcome in the ledger: delivered, retrying (through Redis), review or rejected.

Flower sees each settlement as a state: SUCCESS for delivered, RETRY, and the custom states REVIEW
and DEADLETTER (ledger ``rejected``), sent as task events; the task then ends with ``Ignore`` so no
SUCCESS or FAILURE overwrites them. (Celery's own ``task-rejected`` event would not do: Flower
ranks REJECTED before STARTED and would keep showing STARTED.)
"""

from __future__ import annotations

import logging
import random
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from celery import Task
from celery.exceptions import Ignore, Reject
from pydantic import ValidationError
from redis.exceptions import RedisError
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_random_exponential

from tasks.models import JobModel, JobValidationError, model_for
from tasks.outcomes import Delivered, Outcome, Reauth, Rejected, Retry, Review
from worker.ledger import DELIVERED, REJECTED, RETRYING, REVIEW, Ledger, LedgerConflict, now_ms
from worker.redaction import scrub
from worker.runtime import ledger as runtime_ledger
from worker.settings import get_settings

log = logging.getLogger(__name__)

#: How much of a destination's answer the ledger keeps (answers carry codes, not contact data).
ANSWER_CHARS = 300


@dataclass(frozen=True)
class Answer:
    """What one call produced: the outcome, and the destination's answer as text."""

    outcome: Outcome
    answer: str = ""


class Connector(Protocol):
    """A destination's client: one call for one job, classified by the destination's table."""

    def send(self, job: JobModel) -> Answer: ...

    def secrets(self) -> list[str]:
        """Credentials to scrub from any text that could reach a person."""
        ...


class DeliveryTask(Task):
    """Base of every destination task. Subclasses (via ``@app.task(base=...)``) set
    ``connector_factory``; the task body calls ``self.deliver(job_id)``."""

    abstract = True
    connector_factory: ClassVar[Callable[[], Connector]]
    _connector: Connector | None = None
    _connector_lock: ClassVar[threading.Lock] = threading.Lock()

    @property
    def connector(self) -> Connector:
        """The destination's client: one per task class per process, shared by its threads."""
        with self._connector_lock:
            if self._connector is None:
                type(self)._connector = type(self).connector_factory()
            assert self._connector is not None
            return self._connector

    def deliver(self, job_id: str) -> dict[str, Any]:
        """Deliver the job; a Redis error on the way puts its message back on the queue, so a
        blip between claiming and settling cannot strand the job without a message."""
        try:
            return self._deliver(job_id)
        except RedisError:
            log.warning("Redis failed while handling job %s; its message goes back", job_id)
            raise Reject(requeue=True) from None

    def _deliver(self, job_id: str) -> dict[str, Any]:
        ledger = runtime_ledger()
        settings = get_settings()
        token = uuid.uuid4().hex
        claim = ledger.claim(job_id, token, lease_ms=settings.visibility_timeout_s * 1000)
        if claim.status == "missing":
            log.error("job %s has no ledger record (expired or never recorded); dropped", job_id)
            raise Ignore()
        if claim.status == "terminal":
            log.info("job %s is already %s; duplicate message dropped", job_id, claim.detail)
            raise Ignore()
        if claim.status == "locked":
            # Another worker runs this job (a redelivered duplicate). Check again once its lease
            # can have ended; NX keeps a retry it schedules meanwhile.
            ledger.recheck(job_id, due_ms=now_ms() + int(claim.detail) + 1000)
            raise Ignore()

        record = ledger.get(job_id)
        assert record is not None
        try:
            job = model_for(record.kind).model_validate_json(record.payload)
        except (ValidationError, JobValidationError) as exc:
            problems = (
                exc.problems if isinstance(exc, JobValidationError)
                else JobValidationError.from_pydantic(record.kind, exc).problems
            )  # fmt: skip
            reason = "payload no longer valid: " + "; ".join(f"{p}: {m}" for p, m in problems)
            return self._settle(ledger, job_id, token, Rejected("invalid-payload", reason), 0)

        outcome, faults = self._attempt(ledger, job_id, job, record.faults)
        return self._settle(ledger, job_id, token, outcome, faults)

    # -- calling ------------------------------------------------------------------------------
    def _attempt(
        self, ledger: Ledger, job_id: str, job: JobModel, faults: int
    ) -> tuple[Outcome, int]:
        """Call the destination, retrying in-process for ``retry.fast_window_s``; returns the
        last outcome and the job's fault count."""
        retry = get_settings().retry
        count = {"faults": faults}

        def call() -> Outcome:
            started = time.monotonic()
            answer = self._call_once(job)
            outcome = answer.outcome
            fault = isinstance(outcome, Retry) and outcome.bounded
            count["faults"] += int(fault)
            ledger.record_attempt(job_id, {
                "at": now_ms(), "event": "attempt", "code": outcome.code,
                "reason": outcome.reason, "answer": answer.answer[:ANSWER_CHARS],
                "latency_ms": round((time.monotonic() - started) * 1000),
                "worker": self.request.hostname or "",
            }, fault=fault)  # fmt: skip
            return outcome

        def worth_retrying(outcome: Outcome) -> bool:
            return isinstance(outcome, Retry) and count["faults"] < retry.fault_attempts

        retrying = Retrying(
            stop=stop_after_delay(retry.fast_window_s),
            wait=wait_random_exponential(multiplier=0.25, max=2.0),
            retry=retry_if_result(worth_retrying),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        outcome: Outcome = retrying(call)
        return outcome, count["faults"]

    def _call_once(self, job: JobModel) -> Answer:
        try:
            return self.connector.send(job)
        except Exception as exc:  # a bug or a misconfiguration: a person looks, nothing is lost
            frames = "".join(traceback.format_tb(exc.__traceback__))
            # The exception's message may quote payload values: log its type and frames only.
            log.error("connector error %s in %s:\n%s", type(exc).__name__, self.name, frames)
            return Answer(Review("internal-error", f"contactsync error {type(exc).__name__}; "
                                 "see the worker log, fix, then requeue"))  # fmt: skip

    # -- settling -----------------------------------------------------------------------------
    def _settle(
        self, ledger: Ledger, job_id: str, token: str, outcome: Outcome, faults: int
    ) -> dict[str, Any]:
        settings = get_settings()
        secrets = self.connector.secrets() if self._connector is not None else []
        reason = scrub(outcome.reason, secrets)
        entry: dict[str, Any] = {"code": outcome.code, "reason": reason}

        if isinstance(outcome, Reauth):  # credentials are refreshed per destination (issue 4)
            outcome = Retry(outcome.code, reason, bounded=True)
        if isinstance(outcome, Retry):
            record = ledger.get(job_id)
            assert record is not None
            if outcome.bounded and faults >= settings.retry.fault_attempts:
                outcome = Review(outcome.code, f"gave up after {faults} faults: {reason}")
            else:
                delay_s = min(settings.retry.max_delay_s,
                              settings.retry.base_delay_s * 2 ** min(record.attempts - 1, 20))
                due = now_ms() + int(random.uniform(delay_s / 2, delay_s) * 1000)
                if due > record.retry_until_ms:
                    hours = settings.retry.window_s / 3600
                    outcome = Review(outcome.code, f"still failing when the {hours:g} h retry "
                                                   f"window closed: {reason}")  # fmt: skip
                else:
                    self._move(ledger, job_id, token, RETRYING, {"event": "retry", **entry},
                               due_ms=due, fields={"next_attempt_at_ms": due})  # fmt: skip
                    self.send_event("task-retried", exception=f"{outcome.code}: {reason}")
                    raise Ignore()

        if isinstance(outcome, Delivered):
            # The payload (personal data) is not kept once it has been delivered.
            self._move(ledger, job_id, token, DELIVERED, {"event": "delivered", **entry},
                       fields={"payload": ""})  # fmt: skip
            return {"state": DELIVERED, "code": outcome.code}
        if isinstance(outcome, Review):
            reason = scrub(outcome.reason, secrets)
            self._move(ledger, job_id, token, REVIEW,
                       {"event": "review", "code": outcome.code, "reason": reason})
            self.send_event("task-review", reason=f"{outcome.code}: {reason}")
            raise Ignore()
        if isinstance(outcome, Rejected):
            self._move(ledger, job_id, token, REJECTED, {"event": "rejected", **entry})
            self.send_event("task-deadletter", reason=f"{outcome.code}: {reason}")
            raise Ignore()
        raise AssertionError(f"unhandled outcome {outcome!r}")

    @staticmethod
    def _move(
        ledger: Ledger,
        job_id: str,
        token: str,
        state: str,
        entry: dict[str, Any],
        due_ms: int | None = None,
        fields: dict[str, str | int] | None = None,
    ) -> None:
        try:
            ledger.transition(job_id, state, entry, token=token, due_ms=due_ms, fields=fields)
        except LedgerConflict as exc:
            # Our claim outlived visibility_timeout and another worker owns the job now.
            log.warning("not settling %s as %s: %s", job_id, state, exc)
            raise Ignore() from None
