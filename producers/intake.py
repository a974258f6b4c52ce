"""The HTTP intake: how services not written in Python submit jobs, read them back and resolve
the ones in review. Bearer tokens name the client; the OpenAPI document is at /openapi.json.

A request is validated whole before anything is queued: one bad job refuses its whole batch,
with the JSON path and reason of every bad field (never its value, which may be personal data).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import tornado.web
from redis.exceptions import RedisError

from producers.review import discard, requeue
from producers.submit import Priority, enqueue
from tasks.models import JobModel, JobValidationError, kinds, model_for, validate_job, version_key
from worker.ledger import JobRecord, LedgerConflict
from worker.logs import configure as configure_logs
from worker.runtime import ledger
from worker.serving import log_paths_only, send, serve_app
from worker.settings import IntakeSettings, get_settings

log = logging.getLogger(__name__)

#: Most jobs in one request.
MAX_BATCH = 1000
#: Idempotency keys (header or body): printable ASCII without spaces.
IDEMPOTENCY_KEY = r"^[\x21-\x7e]{1,128}$"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY)
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
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
        raise Problem(422, "invalid request: nothing was queued", [
            ("header Idempotency-Key", "must be 1-128 printable ASCII characters, no spaces")])
    if not isinstance(data, dict):
        raise Problem(422, "invalid request: nothing was queued", [
            ("$", 'must be a JSON object: {"kind": ..., "job": {...}} or {"jobs": [...]}')])
    errors: list[tuple[str, str]] = []
    default: Priority
    single = "jobs" not in data
    if single:
        entries, path, default = [data], ["$"], "realtime"
    else:
        unknown = sorted(set(data) - {"jobs", "priority"})
        errors += [(f"$.{name[:64]}", "unknown field of a batch; it takes jobs and priority")
                   for name in unknown]  # fmt: skip
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
    errors += [(f"{where}.{name[:64]}", "unknown field; a job takes kind, job, idempotency_key, "
                "priority and version") for name in sorted(set(entry) - allowed)]  # fmt: skip
    priority = _priority(entry.get("priority"), f"{where}.priority", errors) or default
    key = entry.get("idempotency_key")
    if key is not None and not (isinstance(key, str) and _IDEMPOTENCY_KEY.match(key)):
        errors.append((f"{where}.idempotency_key",
                       "must be 1-128 printable ASCII characters, no spaces"))  # fmt: skip
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
            made = enqueue([submission.jobs[i] for i in picked], priority,
                           [submission.keys[i] for i in picked], client,
                           versions=[submission.versions[i] for i in picked])  # fmt: skip
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
        payload = model_for(record.kind).model_validate_json(record.payload).masked()
    facts = dict(order or {})
    if "newer_delivered" in facts:
        facts["newer_delivered"] = {"job_id": facts["newer_delivered"]["job_id"],
                                    "at": _iso(facts["newer_delivered"]["at_ms"])}  # fmt: skip
    return {
        "id": record.id, "kind": record.kind, "destination": record.destination,
        "state": record.state, "priority": record.priority or None,
        "entity": record.entity or None, "version": record.version or None,
        "merged_into": facts.get("merged_into"), "superseded_by": facts.get("superseded_by"),
        "waits_behind": facts.get("waits_behind"), "newer_delivered": facts.get("newer_delivered"),
        "client": record.client or None, "attempts": record.attempts,
        "submitted_at": _iso(record.submitted_at_ms), "updated_at": _iso(record.updated_at_ms),
        "next_attempt_at": _iso(record.next_attempt_at_ms) if record.state == "retrying" else None,
        "last_answer": {"code": record.last_code, "reason": record.last_reason}
        if record.last_code or record.last_reason else None,
        "payload": payload,
        "history": record.history,
    }  # fmt: skip


# -- the service ------------------------------------------------------------------------------
class Tokens:
    """The configured client tokens, checked in constant time."""

    def __init__(self, settings: IntakeSettings) -> None:
        self._tokens = [(name, token.get_secret_value().encode())
                        for name, token in settings.tokens.items()]  # fmt: skip
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
        given = presented.strip().encode()
        found = None
        for name, token in self._tokens:  # every token compared: no early exit to time
            if hmac.compare_digest(given, token):
                found = name
        return None if found is None else Client(found, found in self._operators)


class Handler(tornado.web.RequestHandler):
    """JSON in and out; ``Problem`` becomes its answer; every other error a 500 that names no
    detail (the log has the traceback, never the request body)."""

    tokens: Tokens

    def initialize(self, tokens: Tokens) -> None:
        self.tokens = tokens

    def client(self) -> Client:
        client = self.tokens.client(self.request.headers.get("Authorization"))
        if client is None:
            self.set_header("WWW-Authenticate", 'Bearer realm="contactsync"')
            raise Problem(401, "send Authorization: Bearer <token> with a token from "
                               "CONTACTSYNC_INTAKE__TOKENS")  # fmt: skip
        return client

    def operator(self) -> Client:
        client = self.client()
        if not client.operator:
            raise Problem(403, f"client {client.name!r} is not an operator "
                               "(CONTACTSYNC_INTAKE__OPERATORS)")  # fmt: skip
        return client

    def reply(self, status: int, body: Any) -> None:
        if status == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        send(self, status, body)

    def allowed_methods(self) -> list[str]:
        """The methods this handler answers (RFC 9110 asks for them with a 405)."""
        base = tornado.web.RequestHandler
        return [m for m in ("GET", "POST")
                if getattr(type(self), m.lower()) is not getattr(base, m.lower())]  # fmt: skip

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, Problem):
            self.reply(e.status, e.body())
        elif isinstance(e, RedisError):
            log.warning("Redis unavailable: %s", type(e).__name__)
            self.reply(503, {"error": "the job store (Redis) is unavailable; try again (with "
                             "the same Idempotency-Key, nothing is queued twice)"})  # fmt: skip
        elif isinstance(e, tornado.web.HTTPError):
            self.reply(e.status_code, {"error": e.log_message or self._reason})
        else:
            log.error("unexpected error in %s %s", self.request.method, self.request.path,
                      exc_info=(type(e), e, e.__traceback__))  # fmt: skip
            self.reply(500, {"error": "internal error; the intake's log has the details"})

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.reply(status_code, {"error": self._reason})


@tornado.web.stream_request_body
class JobsHandler(Handler):
    """``POST /v1/jobs``: one job or a batch. The body is read in chunks and refused with 413 as
    soon as it outgrows the limit."""

    def initialize(self, tokens: Tokens, max_body_bytes: int) -> None:  # type: ignore[override]
        self.tokens = tokens
        self.max_body_bytes = max_body_bytes
        self.chunks: list[bytes] = []
        self.size = 0

    def prepare(self) -> None:
        if self.request.method != "POST":
            return
        self.caller = self.client()
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise Problem(413, self._too_large())

    def data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_body_bytes:
            raise Problem(413, self._too_large())
        self.chunks.append(chunk)

    def _too_large(self) -> str:
        return (f"the body is larger than {self.max_body_bytes} bytes "
                "(CONTACTSYNC_INTAKE__MAX_BODY_BYTES): send fewer jobs per request")  # fmt: skip

    def post(self) -> None:
        submission = parse_submission(
            b"".join(self.chunks), self.caller.name, self.request.headers.get("Idempotency-Key")
        )
        ids = submit(submission, self.caller.name)
        if submission.single:
            self.set_header("Location", f"/v1/jobs/{ids[0]}")
            self.reply(202, {"job_id": ids[0]})
        else:
            self.reply(202, {"job_ids": ids})


class JobHandler(Handler):
    """``GET /v1/jobs/{id}``: a client sees its own jobs, an operator every job."""

    def get(self, job_id: str) -> None:
        client = self.client()
        record = ledger().get(job_id, with_history=True) if _JOB_ID.match(job_id) else None
        if record is None or not (client.operator or record.client == client.name):
            raise Problem(404, f"no job {job_id[:64]} (unknown id, or its record expired)")
        self.reply(200, job_view(record, ledger().order_facts(record)))


class ReviewListHandler(Handler):
    """``GET /v1/review?offset=&limit=``: the jobs waiting for a person, oldest first."""

    def get(self) -> None:
        self.operator()
        offset = _int_argument(self, "offset", 0, 0, 10**9)
        limit = _int_argument(self, "limit", 50, 1, MAX_PAGE)
        book = ledger()
        jobs = []
        for job_id, at in book.listing("review", offset, limit):
            record = book.get(job_id)
            if record is not None:
                jobs.append({"id": job_id, "kind": record.kind, "since": _iso(at),
                             "attempts": record.attempts, "client": record.client or None,
                             "last_answer": {"code": record.last_code,
                                             "reason": record.last_reason}})  # fmt: skip
        self.reply(200, {"total": book.size("review"), "offset": offset, "jobs": jobs})


class ReviewActionHandler(Handler):
    """``POST /v1/review/{id}/requeue`` (optionally edited) and ``/discard`` (with a reason)."""

    def post(self, job_id: str, action: str) -> None:
        client = self.operator()
        body = _json_object(self.request.body)
        try:
            if action == "requeue":
                changes = body.get("changes", {})
                if not isinstance(changes, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in changes.items()
                ):
                    raise Problem(422, "invalid request", [
                        ("$.changes", 'must map field names to text: {"disposition": "Sale"}')])
                force = body.get("force", False)
                if not isinstance(force, bool):
                    raise Problem(422, "invalid request", [("$.force", "must be true or false")])
                if extra := sorted(set(body) - {"changes", "force"}):
                    raise Problem(422, "invalid request", [(f"$.{extra[0]}", "unknown field")])
                state = requeue(job_id, changes, by=client.name, force=force)
                self.reply(202, {"job_id": job_id, "state": state})
            else:
                reason = body.get("reason")
                if not isinstance(reason, str) or not reason.strip() or len(reason) > 1000:
                    raise Problem(422, "invalid request", [
                        ("$.reason", "required: why the job is discarded (1-1000 characters)")])
                if extra := sorted(set(body) - {"reason"}):
                    raise Problem(422, "invalid request", [(f"$.{extra[0]}", "unknown field")])
                discard(job_id, reason, by=client.name)
                self.reply(200, {"job_id": job_id, "state": "rejected"})
        except JobValidationError as exc:
            raise Problem(422, "the edited job is invalid; nothing changed",
                          [(f"$.changes.{path}", reason) for path, reason in exc.problems]) \
                from None  # fmt: skip
        except LedgerConflict as exc:
            missing = not _JOB_ID.match(job_id) or ledger().get(job_id) is None
            raise Problem(404 if missing else 409, str(exc)[:300]) from None


class HealthHandler(Handler):
    """``GET /healthz``: 200 when the intake can reach Redis, else 503. No auth."""

    def get(self) -> None:
        try:
            ledger().r.ping()
        except RedisError:
            self.reply(503, {"status": "unavailable", "redis": "unreachable"})
            return
        self.reply(200, {"status": "ok"})


class OpenAPIHandler(Handler):
    """``GET /openapi.json``. No auth: it describes the API, it holds no data."""

    def get(self) -> None:
        from producers.openapi import document

        self.reply(200, document())


class NotFoundHandler(Handler):
    def prepare(self) -> None:
        raise Problem(404, f"no such endpoint: {self.request.method} {self.request.path[:100]}; "
                           "see /docs or /openapi.json, and /console/ for operators")  # fmt: skip


def _int_argument(handler: Handler, name: str, default: int, lo: int, hi: int) -> int:
    raw = handler.get_query_argument(name, None)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise Problem(422, "invalid request", [(f"query {name}", f"must be {lo} to {hi}")])
    return int(raw)


def _json(body: bytes) -> Any:
    """The body's JSON, or ``Problem`` 400: not UTF-8, not JSON, an integer of more than 4,300
    digits (Python refuses to read one: ValueError), nested too deep (RecursionError)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError included
        raise Problem(400, f"the body is not JSON we can read ({type(exc).__name__}): send a "
                           "JSON object") from None  # fmt: skip


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
    tokens = Tokens(settings)
    common = {"tokens": tokens}
    secrets = {name: token.get_secret_value() for name, token in settings.tokens.items()}
    return tornado.web.Application(
        [
            (r"/", tornado.web.RedirectHandler, {"url": "/console/"}),
            (r"/redoc", tornado.web.RedirectHandler, {"url": "/docs"}),
            *console.routes(tokens, settings),
            (r"/v1/jobs", JobsHandler, {**common, "max_body_bytes": settings.max_body_bytes}),
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
    serve_app(lambda: make_app(settings), settings.host, settings.port, ready, stop, "intake",
              max_body_size=settings.max_body_bytes + 1)  # fmt: skip


@lru_cache(maxsize=1)
def warm_up() -> None:
    """Load the job kinds and connect to Redis before the first request, not during it."""
    kinds()
    ledger().r.ping()


__all__ = ["MAX_BATCH", "Problem", "Submission", "make_app", "parse_submission", "serve"]
