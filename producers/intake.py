"""The HTTP intake: how services not written in Python submit jobs, read them back and resolve
the ones in review. Bearer tokens name the client; the OpenAPI document is at /openapi.json.

A request is validated whole before anything is queued: one bad job refuses its whole batch,
with the JSON path and reason of every bad field (never its value, which may be personal data).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from http.client import responses as HTTP_REASONS
from typing import Any, TypeVar

import tornado.web
from redis.exceptions import RedisError

from producers.review import discard, requeue
from producers.submit import Priority, enqueue
from tasks.models import JobModel, JobValidationError, kinds, model_for, validate_job, version_key
from worker.codec import unseal
from worker.ledger import JobRecord, LedgerConflict
from worker.logs import configure as configure_logs
from worker.runtime import ledger
from worker.serving import (
    log_paths_only,
    release_freed_memory,
    return_large_blocks_at_once,
    send,
    serve_app,
)
from worker.settings import IntakeSettings, get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Most jobs in one request.
MAX_BATCH = 1000
#: Idempotency keys (header or body): printable ASCII without spaces.
IDEMPOTENCY_KEY = r"^[\x21-\x7e]{1,128}$"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY)
_JOB_ID = re.compile(r"[0-9a-f]{32}")
#: A key of the request that may be shown back in an error: it looks like a field name.
_FIELD_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
PRIORITIES = ("realtime", "bulk")
#: Most entries one page of ``GET /v1/review`` lists.
MAX_PAGE = 500


class Problem(Exception):
    """A request refused with ``status``: ``message`` says what happened, ``errors`` lists
    (JSON path, reason) of each bad field."""

    def __init__(self, status: int, message: str, errors: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []

    def body(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"error": self.message}
        if self.errors:
            answer["errors"] = [{"path": path, "reason": reason} for path, reason in self.errors]
        return answer


@dataclass(frozen=True)
class Client:
    """Who called: the name their token has in the settings, and whether they are an operator."""

    name: str
    operator: bool


@dataclass(frozen=True)
class Submission:
    """A validated request: its jobs, each with its idempotency key, and their priority."""

    jobs: list[JobModel]
    keys: list[str | None]
    priorities: list[Priority]
    single: bool
    versions: list[int | str | None] = field(default_factory=list)


# -- reading a submission ---------------------------------------------------------------------
def parse_submission(body: bytes, client: str, idempotency_key: str | None) -> Submission:
    """Validate a ``POST /v1/jobs`` body whole: ``{"kind", "job", ...}`` (one job) or
    ``{"jobs": [...], "priority"}`` (a batch); raise ``Problem`` (400, 422) naming every bad
    field. Idempotency keys are the client's own: they are recorded as ``client:key``, a
    batch's ``Idempotency-Key`` as ``client:key:index`` for each of its jobs."""
    data = _json(body)
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
        raise Problem(
            422,
            "invalid request: nothing was queued",
            [("header Idempotency-Key", "must be 1-128 printable ASCII characters, no spaces")],
        )
    if not isinstance(data, dict):
        raise Problem(
            422,
            "invalid request: nothing was queued",
            [("$", 'must be a JSON object: {"kind": ..., "job": {...}} or {"jobs": [...]}')],
        )
    errors: list[tuple[str, str]] = []
    default: Priority
    single = "jobs" not in data
    if single:
        entries, path, default = [data], ["$"], "realtime"
    else:
        unknown = sorted(set(data) - {"jobs", "priority"})
        errors += [
            (_key_path(str(name)), "unknown field of a batch; it takes jobs and priority")
            for name in unknown
        ]
        default = _priority(data.get("priority"), "$.priority", errors) or "realtime"
        raw = data["jobs"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_BATCH:
            errors.append(("$.jobs", f"must be a list of 1 to {MAX_BATCH} jobs"))
            raise Problem(422, "invalid request: nothing was queued", errors)
        entries, path = raw, [f"$.jobs[{i}]" for i in range(len(raw))]
    jobs: list[JobModel] = []
    keys: list[str | None] = []
    priorities: list[Priority] = []
    versions: list[int | str | None] = []
    for index, (entry, where) in enumerate(zip(entries, path, strict=True)):
        job, key, priority = _entry(entry, where, errors, default)
        version = _version(entry, where, errors)
        if job is None:
            continue
        if key is None and idempotency_key is not None:
            key = idempotency_key if single else f"{idempotency_key}:{index}"
        jobs.append(job)
        keys.append(None if key is None else f"{client}:{key}")
        priorities.append(priority)
        versions.append(version)
    if errors:
        raise Problem(422, "invalid request: nothing was queued", errors)
    return Submission(jobs, keys, priorities, single, versions)


def _version(entry: Any, where: str, errors: list[tuple[str, str]]) -> int | str | None:
    """A job's ``version`` (the producer's own: an integer or an RFC 3339 timestamp), checked
    as ``submit`` will take it."""
    if not isinstance(entry, dict) or entry.get("version") is None:
        return None
    version = entry["version"]
    try:
        if not isinstance(version, int | str):
            raise ValueError("version must be an integer or an RFC 3339 timestamp")
        version_key(version)
    except ValueError as exc:
        errors.append((f"{where}.version", str(exc)))
        return None
    return version


def _entry(
    entry: Any, where: str, errors: list[tuple[str, str]], default: Priority
) -> tuple[JobModel | None, str | None, Priority]:
    if not isinstance(entry, dict):
        errors.append((where, 'must be an object: {"kind": ..., "job": {...}}'))
        return None, None, default
    before = len(errors)
    allowed = {"kind", "job", "idempotency_key", "priority", "version"}
    errors += [
        (
            where + _key_path(str(name))[1:],
            "unknown field; a job takes kind, job, idempotency_key, priority and version",
        )
        for name in sorted(set(entry) - allowed)
    ]
    priority = _priority(entry.get("priority"), f"{where}.priority", errors) or default
    key = entry.get("idempotency_key")
    if key is not None and not (isinstance(key, str) and _IDEMPOTENCY_KEY.match(key)):
        errors.append(
            (f"{where}.idempotency_key", "must be 1-128 printable ASCII characters, no spaces")
        )
    kind = entry.get("kind")
    known = kinds()
    if not isinstance(kind, str) or kind not in known:
        errors.append((f"{where}.kind", f"must be one of: {', '.join(sorted(known))}"))
        return None, None, priority
    data = entry.get("job")
    if not isinstance(data, dict):
        errors.append((f"{where}.job", f"must be an object: the fields of a {kind} job"))
        return None, None, priority
    try:
        job = validate_job(kind, data)
    except JobValidationError as exc:
        errors += [(f"{where}.job.{field}", reason) for field, reason in exc.problems]
        return None, None, priority
    if len(errors) > before:
        return None, None, priority
    return job, key, priority


def _priority(value: Any, where: str, errors: list[tuple[str, str]]) -> Priority | None:
    if value is None:
        return None
    if value not in PRIORITIES:
        errors.append((where, "must be realtime or bulk"))
        return None
    return value  # type: ignore[no-any-return]


def submit(submission: Submission, client: str) -> list[str]:
    """Queue a validated submission; one job id per job, in order."""
    ids: list[str | None] = [None] * len(submission.jobs)
    priority: Priority
    for priority in ("realtime", "bulk"):
        picked = [i for i, p in enumerate(submission.priorities) if p == priority]
        if picked:
            made = enqueue(
                [submission.jobs[i] for i in picked],
                priority,
                [submission.keys[i] for i in picked],
                client,
                versions=[submission.versions[i] for i in picked],
            )
            for i, (job_id, _) in zip(picked, made, strict=True):
                ids[i] = job_id
    return [job_id for job_id in ids if job_id is not None]


# -- showing jobs -----------------------------------------------------------------------------
def _iso(ms: int) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def job_view(record: JobRecord, order: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job as ``GET /v1/jobs/{id}`` shows it: personal data in the payload masked; ``order``:
    its place among the jobs of its record (``Ledger.order_facts``)."""
    payload = None
    if record.payload:
        payload = model_for(record.kind).model_validate_json(unseal(record.payload)).masked()
    facts = dict(order or {})
    if "newer_delivered" in facts:
        facts["newer_delivered"] = {
            "job_id": facts["newer_delivered"]["job_id"],
            "at": _iso(facts["newer_delivered"]["at_ms"]),
        }
    return {
        "id": record.id,
        "kind": record.kind,
        "destination": record.destination,
        "state": record.state,
        "priority": record.priority or None,
        "entity": record.entity or None,
        "version": record.version or None,
        "merged_into": facts.get("merged_into"),
        "superseded_by": facts.get("superseded_by"),
        "waits_behind": facts.get("waits_behind"),
        "newer_delivered": facts.get("newer_delivered"),
        "client": record.client or None,
        "attempts": record.attempts,
        "submitted_at": _iso(record.submitted_at_ms),
        "updated_at": _iso(record.updated_at_ms),
        "next_attempt_at": _iso(record.next_attempt_at_ms) if record.state == "retrying" else None,
        "last_answer": {"code": record.last_code, "reason": record.last_reason}
        if record.last_code or record.last_reason
        else None,
        "payload": payload,
        "history": record.history,
    }


# -- the service ------------------------------------------------------------------------------
class Tokens:
    """The configured client tokens, checked in constant time."""

    def __init__(self, settings: IntakeSettings) -> None:
        self._tokens = [
            (name, token.get_secret_value().encode()) for name, token in settings.tokens.items()
        ]
        self._operators = frozenset(settings.operators)

    @property
    def names(self) -> list[str]:
        """Every configured client's name."""
        return [name for name, _ in self._tokens]

    def is_operator(self, name: str) -> bool:
        """Whether ``name`` is a configured client named an operator."""
        return name in self._operators and name in self.names

    def client(self, authorization: str | None) -> Client | None:
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return None
        given = presented.strip().encode("utf-8", "replace")
        found = None
        for name, token in self._tokens:  # every token compared: no early exit to time
            if hmac.compare_digest(given, token):
                found = name
        return None if found is None else Client(found, found in self._operators)


class BodyBudget:
    """The request bytes held in memory by every request together (``max_buffered_bytes``):
    each body takes its chunks from it as they arrive and gives them back when its request
    ends. Only the event loop touches it: no lock."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self.peak_bytes = 0

    def take(self, size: int) -> bool:
        if self.held_bytes + size > self.limit_bytes:
            return False
        self.held_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        return True

    def give(self, size: int) -> None:
        self.held_bytes -= size
        if self.held_bytes == 0 and self.peak_bytes >= RELEASE_AFTER_BYTES:
            self.peak_bytes = 0
            release_freed_memory()


class HeldBody:
    """A request body as it streams in: its chunks, holding their share of the intake's
    ``BodyBudget`` until the request ends (``give_back``)."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.chunks: list[bytes] = []
        self.held = 0

    def take(self, chunk: bytes) -> bool:
        """Hold ``chunk``; False (nothing held) if the budget has no room for it."""
        if not self.budget.take(len(chunk)):
            return False
        self.held += len(chunk)
        self.chunks.append(chunk)
        return True

    def read(self) -> bytes:
        """The body so far (its share of the budget stays taken until ``give_back``)."""
        data = b"".join(self.chunks)
        self.chunks = []
        return data

    def give_back(self) -> None:
        self.chunks = []
        if self.held:
            held, self.held = self.held, 0
            self.budget.give(held)


#: What a client is told when every request's bodies together fill the budget.
BUDGET_FULL = "the intake holds as many request bodies as it may right now; send again in a moment"


async def on_redis_threads(service: Service, work: Callable[[], T], deadline_s: float) -> T:
    """``work()`` (which talks to Redis) on one of the intake's Redis threads, so a hung Redis
    holds a thread, never the event loop; ``TimeoutError`` past ``deadline_s`` (a call still
    queued then is dropped; one already running may still complete)."""
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.run_in_executor(service.redis_threads, work), deadline_s)


@dataclass(frozen=True)
class Service:
    """What every handler shares: the tokens, the limits, the body budget and the threads that
    talk to Redis (so a hung Redis holds a thread, never the event loop)."""

    tokens: Tokens
    settings: IntakeSettings
    budget: BodyBudget
    redis_threads: ThreadPoolExecutor


#: Media types a body may declare (a missing Content-Type is read as JSON).
_JSON_MEDIA = re.compile(r"application/(?:[\w.+-]+\+)?json")
#: A query number: ASCII digits only ('²'.isdigit() is true, int('²') fails), 10 at most.
_QUERY_INT = re.compile(r"[0-9]{1,10}")
#: A declared Content-Length: ASCII digits (up to 19: larger is refused as too large).
_LENGTH = re.compile(r"[0-9]{1,19}")
#: The body limit of every endpoint but ``POST /v1/jobs`` (a review action's JSON is small).
SMALL_BODY_BYTES = 64 * 1024
#: Bodies that, once all are gone, make it worth handing freed memory back to the system.
RELEASE_AFTER_BYTES = 4 * 1024 * 1024
#: How long ``/healthz`` waits for Redis before answering 503.
HEALTH_DEADLINE_S = 0.8
#: Threads that talk to Redis for the intake: a hung Redis holds at most these.
REDIS_THREADS = 8


@tornado.web.stream_request_body
class Handler(tornado.web.RequestHandler):
    """JSON in and out; ``Problem`` becomes its answer; every other error a 500 that names no
    detail (the log has the exception's type and frames, never its message or the request).

    Every request is decided on before its body is read (``prepare``): the token, the method,
    the Content-Type and a declared length; the body then streams in, refused with 413 past the
    endpoint's limit and with 503 when the bodies held together would pass
    ``max_buffered_bytes``. Redis is only called from ``redis()``, with a deadline."""

    service: Service
    #: False: no token needed (``/healthz``, ``/openapi.json``).
    authenticated = True
    caller: Client

    def initialize(self, service: Service) -> None:
        self.service = service
        self.held = HeldBody(service.budget)
        self.size = 0
        self.refused = False
        self.deferred: Problem | None = None

    def body_limit(self) -> int:
        return SMALL_BODY_BYTES

    # -- before the body ----------------------------------------------------------------------
    def prepare(self) -> None:
        """Decide before the body is read. A request with a large or chunked body is refused
        at once (tornado closes the connection instead of reading the rest). A refusal of one
        with a small body (``SMALL_BODY_BYTES`` at most, or none) is answered once that body
        has been read, as any answer: closing a connection with data still unread in it
        resets it, and a client may then lose the answer or, keeping the connection alive,
        its next request."""
        self.request.connection.set_max_body_size(SERVER_MAX_BODY_BYTES)  # type: ignore[union-attr]
        try:
            self._check_head()
        except Problem as problem:
            declared = self.request.headers.get("Content-Length", "0").strip()
            small = (
                _LENGTH.fullmatch(declared)
                and int(declared) <= SMALL_BODY_BYTES
                and not self._chunked()
            )
            if not small:
                raise
            self.deferred = problem

    def _chunked(self) -> bool:
        return "chunked" in self.request.headers.get("Transfer-Encoding", "").lower()

    def _check_head(self) -> None:
        if self.authenticated:
            self.caller = self.client()
        if self.request.method not in self.allowed_methods():
            raise Problem(405, f"{self.request.method} is not allowed here; see /openapi.json")
        declared = self.request.headers.get("Content-Length")
        if declared is not None and not _LENGTH.fullmatch(declared.strip()):
            raise Problem(400, "Content-Length must be a number of bytes")
        if self._chunked() or (declared is not None and int(declared) > 0):
            media = self.request.headers.get("Content-Type", "application/json")
            kind = media.partition(";")[0].strip().lower()
            if not _JSON_MEDIA.fullmatch(kind):
                raise Problem(415, "send the body as JSON: Content-Type: application/json")
        if declared is not None and int(declared) > self.body_limit():
            raise Problem(413, self._too_large())

    def refuse_deferred(self) -> None:
        """Raise the refusal ``prepare`` kept until the body was read."""
        if self.deferred is not None:
            raise self.deferred

    def client(self) -> Client:
        client = self.service.tokens.client(self.request.headers.get("Authorization"))
        if client is None:
            self.set_header("WWW-Authenticate", 'Bearer realm="contactsync"')
            raise Problem(
                401,
                "send Authorization: Bearer <token> with a token from CONTACTSYNC_INTAKE__TOKENS",
            )
        return client

    def operator(self) -> Client:
        if not self.caller.operator:
            raise Problem(
                403,
                f"client {self.caller.name!r} is not an operator (CONTACTSYNC_INTAKE__OPERATORS)",
            )
        return self.caller

    # -- the body -----------------------------------------------------------------------------
    def data_received(self, chunk: bytes) -> None:
        if self.refused or self._finished:
            return  # answered already; tornado closes the connection after the answer
        self.size += len(chunk)
        if self.deferred is not None:  # refused already: read it (small), answer after
            return
        if self.size > self.body_limit():
            self._refuse(Problem(413, self._too_large()))
            return
        if not self.held.take(chunk):
            self.set_header("Retry-After", "1")
            self._refuse(Problem(503, BUDGET_FULL))

    def _refuse(self, problem: Problem) -> None:
        """Answer now, while the body is still arriving: tornado then closes the connection
        instead of reading the rest."""
        self.refused = True
        self.held.give_back()
        self.reply(problem.status, problem.body())

    def body(self) -> bytes:
        return self.held.read()

    def on_finish(self) -> None:
        self.held.give_back()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self.held.give_back()

    def _too_large(self) -> str:
        return (
            f"the body is larger than {self.body_limit()} bytes (CONTACTSYNC_INTAKE__"
            "MAX_BODY_BYTES for /v1/jobs): send fewer jobs per request"
        )

    # -- Redis --------------------------------------------------------------------------------
    async def redis(self, work: Callable[[], T], deadline_s: float | None = None) -> T:
        """``work()`` (which talks to Redis) on one of the intake's Redis threads; 503 if it has
        not finished within the deadline (``redis_deadline_s``). A call still queued then is
        dropped; one already running may still complete, which an Idempotency-Key makes
        harmless to send again."""
        deadline_s = self.service.settings.redis_deadline_s if deadline_s is None else deadline_s
        try:
            return await on_redis_threads(self.service, work, deadline_s)
        except TimeoutError:
            log.warning("Redis did not answer within %.1f s", deadline_s)
            raise Problem(
                503,
                f"the job store (Redis) did not answer within {deadline_s:g} s; "
                "try again (with the same Idempotency-Key, nothing is queued "
                "twice)",
            ) from None

    # -- answers ------------------------------------------------------------------------------
    def reply(self, status: int, body: Any) -> None:
        if self._finished:
            return
        if status == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        send(self, status, body)

    def allowed_methods(self) -> list[str]:
        """The methods this handler answers (RFC 9110 asks for them with a 405)."""
        base = tornado.web.RequestHandler
        return [
            m
            for m in ("GET", "POST")
            if getattr(type(self), m.lower()) is not getattr(base, m.lower())
        ]

    def _handle_request_exception(self, e: BaseException) -> None:
        if self.deferred is not None:  # e.g. tornado's own 405 for a method of no handler
            e = self.deferred
        if isinstance(e, Problem):
            self.reply(e.status, e.body())
        elif isinstance(e, RedisError):
            log.warning("Redis unavailable: %s", type(e).__name__)
            self.reply(
                503,
                {
                    "error": "the job store (Redis) is unavailable; try again (with "
                    "the same Idempotency-Key, nothing is queued twice)"
                },
            )
        elif isinstance(e, tornado.web.HTTPError):
            # Not its log_message: tornado's may quote what the client sent (bad UTF-8 in a
            # query value).
            self.reply(e.status_code, {"error": HTTP_REASONS.get(e.status_code, "error")})
        else:
            # The exception's message may quote the request (a value that failed to parse):
            # its type and frames only.
            frames = "".join(traceback.format_tb(e.__traceback__))
            log.error(
                "unexpected %s in %s %s:\n%s",
                type(e).__name__,
                self.request.method,
                self.request.path,
                frames,
            )
            self.reply(500, {"error": "internal error; the intake's log has the details"})

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.reply(status_code, {"error": self._reason})


class JobsHandler(Handler):
    """``POST /v1/jobs``: one job or a batch. The body is read in chunks and refused with 413 as
    soon as it outgrows the limit."""

    def body_limit(self) -> int:
        return self.service.settings.max_body_bytes

    async def post(self) -> None:
        self.refuse_deferred()
        name = self.caller.name
        submission = parse_submission(
            self.body(), name, self.request.headers.get("Idempotency-Key")
        )
        ids = await self.redis(lambda: submit(submission, name))
        if submission.single:
            self.set_header("Location", f"/v1/jobs/{ids[0]}")
            self.reply(202, {"job_id": ids[0]})
        else:
            self.reply(202, {"job_ids": ids})


class JobHandler(Handler):
    """``GET /v1/jobs/{id}``: a client sees its own jobs, an operator every job."""

    async def get(self, job_id: str) -> None:
        self.refuse_deferred()
        client = self.caller
        if not _JOB_ID.fullmatch(job_id):
            raise Problem(404, "no such job: a job id is 32 hex digits")
        missing = Problem(404, f"no job {job_id} (unknown id, or its record expired)")

        def read() -> dict[str, Any] | None:
            book = ledger()
            record = book.get(job_id, with_history=True)
            if record is None or not (client.operator or record.client == client.name):
                return None
            return job_view(record, book.order_facts(record))

        shown = await self.redis(read)
        if shown is None:
            raise missing
        self.reply(200, shown)


class ReviewListHandler(Handler):
    """``GET /v1/review?offset=&limit=``: the jobs waiting for a person, oldest first."""

    async def get(self) -> None:
        self.refuse_deferred()
        self.operator()
        offset = _int_argument(self, "offset", 0, 0, 10**9)
        limit = _int_argument(self, "limit", 50, 1, MAX_PAGE)

        def page() -> dict[str, Any]:
            book = ledger()
            rows = book.listing("review", offset, limit)
            jobs = []
            for (job_id, at), record in zip(rows, book.get_many([i for i, _ in rows]), strict=True):
                if record is not None:
                    jobs.append(
                        {
                            "id": job_id,
                            "kind": record.kind,
                            "since": _iso(at),
                            "attempts": record.attempts,
                            "client": record.client or None,
                            "last_answer": {"code": record.last_code, "reason": record.last_reason},
                        }
                    )
            return {"total": book.size("review"), "offset": offset, "jobs": jobs}

        self.reply(200, await self.redis(page))


class ReviewActionHandler(Handler):
    """``POST /v1/review/{id}/requeue`` (optionally edited) and ``/discard`` (with a reason)."""

    async def post(self, job_id: str, action: str) -> None:
        self.refuse_deferred()
        client = self.operator()
        body = _json_object(self.body())
        if action == "requeue":
            changes = body.get("changes", {})
            if not isinstance(changes, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in changes.items()
            ):
                raise Problem(
                    422,
                    "invalid request",
                    [("$.changes", 'must map field names to text: {"disposition": "Sale"}')],
                )
            force = body.get("force", False)
            if not isinstance(force, bool):
                raise Problem(422, "invalid request", [("$.force", "must be true or false")])
            if extra := sorted(set(body) - {"changes", "force"}):
                raise Problem(422, "invalid request", [(_key_path(extra[0]), "unknown field")])
            state = await self.redis(
                lambda: _resolved(
                    job_id, lambda: requeue(job_id, changes, by=client.name, force=force)
                )
            )
            self.reply(202, {"job_id": job_id, "state": state})
            return
        reason = body.get("reason")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 1000:
            raise Problem(
                422,
                "invalid request",
                [("$.reason", "required: why the job is discarded (1-1000 characters)")],
            )
        if extra := sorted(set(body) - {"reason"}):
            raise Problem(422, "invalid request", [(_key_path(extra[0]), "unknown field")])
        await self.redis(lambda: _resolved(job_id, lambda: discard(job_id, reason, by=client.name)))
        self.reply(200, {"job_id": job_id, "state": "rejected"})


def _resolved(job_id: str, action: Callable[[], T]) -> T:
    """Run a review action (on a Redis thread), its refusals as the intake's answers."""
    try:
        return action()
    except JobValidationError as exc:
        raise Problem(
            422,
            "the edited job is invalid; nothing changed",
            [(f"$.changes.{path}", reason) for path, reason in exc.problems],
        ) from None
    except LedgerConflict as exc:
        missing = not _JOB_ID.fullmatch(job_id) or ledger().get(job_id) is None
        raise Problem(404 if missing else 409, str(exc)[:300]) from None


class HealthHandler(Handler):
    """``GET /healthz``: 200 when the intake can reach Redis, else 503, within a second even
    when Redis hangs. No auth."""

    authenticated = False

    async def get(self) -> None:
        self.refuse_deferred()
        try:
            await self.redis(lambda: ledger().r.ping(), HEALTH_DEADLINE_S)
        except (RedisError, Problem):
            self.reply(503, {"status": "unavailable", "redis": "unreachable"})
            return
        self.reply(200, {"status": "ok"})


class OpenAPIHandler(Handler):
    """``GET /openapi.json``. No auth: it describes the API, it holds no data."""

    authenticated = False

    def get(self) -> None:
        self.refuse_deferred()
        from producers.openapi import document

        self.reply(200, document())


class NotFoundHandler(Handler):
    """Every other path: 401 without a token (nothing is read first), then 404."""

    def _check_head(self) -> None:
        self.caller = self.client()
        raise Problem(
            404, "no such endpoint; see /docs or /openapi.json, and /console/ for operators"
        )


def _int_argument(handler: Handler, name: str, default: int, lo: int, hi: int) -> int:
    """A query number, strictly: ASCII digits within [lo, hi], else 422 (never the value)."""
    raw = handler.get_query_argument(name, None, strip=False)
    if raw is None:
        return default
    if not _QUERY_INT.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise Problem(422, "invalid request", [(f"query {name}", f"must be {lo} to {hi}")])
    return int(raw)


def _key_path(key: str) -> str:
    """``$.KEY`` for a key the client sent, if it looks like a field name; a key that does not
    may be a value put in the wrong place, and is not shown."""
    return f"$.{key}" if _FIELD_KEY.fullmatch(key) else "$.(a key that is not a field name)"


def _json(body: bytes) -> Any:
    """The body's JSON, or ``Problem`` 400: not UTF-8, not JSON, an integer of more than 4,300
    digits (Python refuses to read one: ValueError), nested too deep (RecursionError)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError included
        raise Problem(
            400, f"the body is not JSON we can read ({type(exc).__name__}): send a JSON object"
        ) from None


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    data = _json(body)
    if not isinstance(data, dict):
        raise Problem(422, "invalid request", [("$", "must be a JSON object")])
    return data


def make_app(settings: IntakeSettings | None = None) -> tornado.web.Application:
    """The intake's tornado application."""
    from producers import console

    settings = settings or get_settings().intake
    service = Service(
        Tokens(settings),
        settings,
        BodyBudget(settings.max_buffered_bytes),
        ThreadPoolExecutor(REDIS_THREADS, thread_name_prefix="intake-redis"),
    )
    common = {"service": service}
    secrets = {name: token.get_secret_value() for name, token in settings.tokens.items()}
    return tornado.web.Application(
        [
            (r"/", tornado.web.RedirectHandler, {"url": "/console/"}),
            (r"/redoc", tornado.web.RedirectHandler, {"url": "/docs"}),
            *console.routes(service),
            (r"/v1/jobs", JobsHandler, common),
            (r"/v1/jobs/([^/]+)", JobHandler, common),
            (r"/v1/review", ReviewListHandler, common),
            (r"/v1/review/([^/]+)/(requeue|discard)", ReviewActionHandler, common),
            (r"/healthz", HealthHandler, common),
            (r"/openapi.json", OpenAPIHandler, common),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=common,
        log_function=log_paths_only(log),
        **console.app_settings(secrets),
    )


#: What a handler that streams its body lets through the server (it caps the body itself as it
#: streams, with a 413 that says why; tornado's own refusal is an empty 400).
SERVER_MAX_BODY_BYTES = 1 << 40
#: What the server takes for a handler that does not stream its body (a console page, /docs,
#: a static file, a redirect): read whole before the handler runs, so it must be small. A
#: larger one is refused before it is read (Content-Length) or once past it (chunked).
UNSTREAMED_BODY_BYTES = 64 * 1024
#: Longest request head (request line and headers).
MAX_HEADER_BYTES = 16 * 1024


def serve(
    settings: IntakeSettings | None = None,
    ready: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve the intake until SIGINT/SIGTERM or ``stop`` (blocking)."""
    settings = settings or get_settings().intake
    if not settings.tokens:
        raise ValueError(
            'CONTACTSYNC_INTAKE__TOKENS is empty: set it to {"client-name": "long-random-token"} '
            "(JSON), one token per calling service"
        )
    configure_logs(get_settings().log_format)
    warm_up()
    return_large_blocks_at_once()
    serve_app(
        lambda: make_app(settings),
        settings.host,
        settings.port,
        ready,
        stop,
        "intake",
        max_body_size=UNSTREAMED_BODY_BYTES,
        max_header_size=MAX_HEADER_BYTES,
        body_timeout=settings.body_timeout_s,
        header_timeout_s=settings.header_timeout_s,
        max_connections_per_client=settings.max_connections_per_client,
        max_buffer_size=1 << 20,
    )


@lru_cache(maxsize=1)
def warm_up() -> None:
    """Load the job kinds and connect to Redis before the first request, not during it."""
    kinds()
    ledger().r.ping()


__all__ = ["MAX_BATCH", "Problem", "Submission", "make_app", "parse_submission", "serve"]
