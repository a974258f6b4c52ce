"""The console's pages and actions: tornado handlers that render server-side templates.

Every page and action needs an operator's session (``producers/console/session.py``); a GET
without one is sent to the login page, anything else is refused with 403. Every POST carries
the session's CSRF token. Pages are ``Cache-Control: no-store`` and keep personal data masked
unless the operator reveals a job's payload, which its history records.

The console shares the intake's event loop, so it keeps the intake's rules: a request is
decided on before its body is read, the body streams in against a small cap and the intake's
body budget, and Redis is only called on the intake's Redis threads, with a deadline (a hung
Redis answers 503 and holds a thread, never the loop that serves ``/v1/jobs`` and
``/healthz``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

import tornado.httputil
import tornado.web
from redis.exceptions import RedisError

from producers.console import queries
from producers.console.session import COOKIE, Session
from producers.intake import BUDGET_FULL, SERVER_MAX_BODY_BYTES, HeldBody, on_redis_threads
from producers.review import NewerDelivered, apply_changes, discard, requeue
from tasks.models import JobModel, JobValidationError, load_kinds, model_for
from worker.app import destinations
from worker.ledger import REJECTED, RETRYING, REVIEW, JobRecord, LedgerConflict, now_ms
from worker.redaction import MASK, mask
from worker.reports import order_rows, when
from worker.runtime import ledger
from worker.settings import IntakeSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
PAGE = 50
#: The largest form the console takes (a bulk form's ticked ids are ~40 bytes each).
FORM_BYTES = 64 * 1024
#: How long a bulk action may take before the page says 503 (it may still finish).
BULK_DEADLINE_S = 60.0
_LENGTH = re.compile(r"[0-9]{1,19}")
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
#: Fields of a bulk form that carry its filter.
FILTER_FIELDS = ("destination", "code", "q", "sort", "order")
#: What a done= parameter says after an action redirected back to a page.
DONE = {
    "requeued": "Requeued: the job is queued and a worker will take it.",
    "held": "Requeued: the job waits behind earlier jobs of the same record.",
    "discarded": "Discarded: the job is rejected with your reason.",
    "retry-now": "Its next attempt is due now.",
    "not-retrying": "The job is no longer waiting for a retry: nothing changed.",
}
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Only our own files: the console loads nothing from elsewhere and runs no inline script.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; form-action 'self'; "
    "base-uri 'none'",
}


class ConsoleHandler(tornado.web.RequestHandler):
    """Session, security headers, Redis off the event loop and error pages of every console
    page. A page takes no body: the server refuses one past ``UNSTREAMED_BODY_BYTES`` (64 KiB)
    before it is read whole (``producers/intake.py``)."""

    public = False
    service: Any
    tokens: Any
    settings_: IntakeSettings

    def initialize(self, service: Any) -> None:
        self.service = service
        self.tokens = service.tokens
        self.settings_ = service.settings

    def set_default_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)

    def get_current_user(self) -> Session | None:
        raw = self.get_signed_cookie(COOKIE, max_age_days=self.settings_.session_hours / 24 + 1)
        session = Session.read(raw)
        if session is None or session.expired(self.settings_.session_hours):
            return None
        if not self.tokens.is_operator(session.client):
            return None  # no longer an operator, or the client was removed from the settings
        return session

    @property
    def session(self) -> Session:
        assert isinstance(self.current_user, Session)
        return self.current_user

    def prepare(self) -> None:
        if self.public:
            return
        if self.current_user is None:
            if self.request.method in ("GET", "HEAD"):
                self.redirect("/console/login?" + urlencode({"next": self.request.uri or ""}))
                return
            raise tornado.web.HTTPError(403, "log in first")

    # -- Redis ---------------------------------------------------------------------------------
    async def redis(self, work: Callable[[], T], deadline_s: float | None = None) -> T:
        """``work()`` (which talks to Redis) on one of the intake's Redis threads; 503 if it has
        not finished within the deadline. One still running then may yet complete."""
        deadline_s = self.settings_.redis_deadline_s if deadline_s is None else deadline_s
        try:
            return await on_redis_threads(self.service, work, deadline_s)
        except TimeoutError:
            log.warning("console: Redis did not answer within %.1f s", deadline_s)
            raise tornado.web.HTTPError(
                503, f"the job store (Redis) did not answer within {deadline_s:g} s; try again"
            ) from None

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = super().get_template_namespace()
        session = self.current_user if isinstance(self.current_user, Session) else None
        namespace.update(
            user=session.client if session else "",
            csrf=session.csrf if session else "",
            when=when,
            ago=ago,
            json=json,
            qs=urlencode,
            lists=queries.LISTS,
            destinations=destinations(),
        )
        return namespace

    def page(self, template: str, status: int = 200, **values: Any) -> None:
        self.set_status(status)
        self.render(template, **values)

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, RedisError):
            log.warning("console: Redis unavailable: %s", type(e).__name__)
            self.send_error(503, reason="the job store (Redis) is unavailable; try again")
            return
        super()._handle_request_exception(e)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # tornado's own logs the whole URI: a search's query may hold personal data.
        if isinstance(value, tornado.web.HTTPError):
            log.warning(
                "%d %s %s: %s",
                value.status_code,
                self.request.method,
                self.request.path,
                value.log_message or "",
            )
        else:
            log.error(
                "unexpected error in %s %s",
                self.request.method,
                self.request.path,
                exc_info=(typ, value, tb),
            )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            message = exc.log_message
        elif status_code >= 500:
            message = "internal error; the intake's log has the details"
        self.render("error.html", status=status_code, message=message)

    def local(self, target: str | None, default: str) -> str:
        """A redirect target only if it stays in the console (no open redirect)."""
        if target and target.startswith("/console/") and not target.startswith("//"):
            return target
        return default


@tornado.web.stream_request_body
class FormHandler(ConsoleHandler):
    """A page that takes a form: decided on before its body is read (its session, a declared
    length), the body streamed in against ``FORM_BYTES`` and the intake's body budget, then
    parsed, its CSRF token checked, and ``act`` called."""

    #: The form's POST, once its body is read and its CSRF token checked.
    act: Callable[..., Awaitable[None]]

    def initialize(self, service: Any) -> None:
        super().initialize(service)
        self.held = HeldBody(service.budget)
        self.size = 0
        self.deferred: tornado.web.HTTPError | None = None

    def prepare(self) -> None:
        # The server's own cap is for pages; a form refuses its body itself, with a 413 that
        # says why (the server's is an empty 400).
        self.request.connection.set_max_body_size(SERVER_MAX_BODY_BYTES)  # type: ignore[union-attr]
        declared = self.request.headers.get("Content-Length")
        if declared is not None and not _LENGTH.fullmatch(declared.strip()):
            raise tornado.web.HTTPError(400, "Content-Length must be a number of bytes")
        if declared is not None and int(declared) > FORM_BYTES:
            raise tornado.web.HTTPError(413, f"a console form is at most {FORM_BYTES} bytes")
        try:
            super().prepare()
        except tornado.web.HTTPError as refused:
            # A small form is read (and dropped) before its refusal is answered: closing a
            # connection with data unread in it resets it, and the client may lose the answer.
            if declared is None or "chunked" in self.request.headers.get("Transfer-Encoding", ""):
                raise
            self.deferred = refused

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return  # refused already; tornado closes the connection after the answer
        self.size += len(chunk)
        if self.deferred is not None:  # refused already: read (at most FORM_BYTES), answer after
            return
        if self.size > FORM_BYTES:
            self._refuse(413, f"a console form is at most {FORM_BYTES} bytes")
        elif not self.held.take(chunk):
            self.set_header("Retry-After", "1")
            self._refuse(503, BUDGET_FULL)

    def _refuse(self, status: int, message: str) -> None:
        self.held.give_back()
        self.send_error(
            status, exc_info=(tornado.web.HTTPError, tornado.web.HTTPError(status, message), None)
        )

    def on_finish(self) -> None:
        self.held.give_back()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self.held.give_back()

    async def post(self, *args: str) -> None:
        """Read the form (tornado does not, for a streamed body), check its CSRF token, act."""
        if self._finished:  # refused while its body arrived
            return
        if self.deferred is not None:
            raise self.deferred
        self.request.body = self.held.read()
        self.held.give_back()
        try:
            tornado.httputil.parse_body_arguments(
                self.request.headers.get("Content-Type", ""),
                self.request.body,
                self.request.body_arguments,
                self.request.files,
                self.request.headers,
            )
        except tornado.httputil.HTTPInputError:
            raise tornado.web.HTTPError(400, "the form could not be read") from None
        for name, values in self.request.body_arguments.items():
            self.request.arguments.setdefault(name, []).extend(values)
        if not self.public and not self.session.csrf_ok(self.get_body_argument("_csrf", "")):
            raise tornado.web.HTTPError(
                403, "the form's CSRF token is missing or stale: reload the page and send it again"
            )
        act = getattr(self, "act", None)
        if act is None:  # a page with no form
            raise tornado.web.HTTPError(405)
        await act(*args)


def ago(ms: int, now: int | None = None) -> str:
    """How long ago (or, for a time ahead, in how long) ``ms`` was, briefly: 42 s, 3 min, 2 h,
    5 d."""
    if not ms:
        return "-"
    delta_s = ((now or now_ms()) - ms) / 1000
    ahead = delta_s < 0
    span = abs(delta_s)
    text = (
        f"{span:.0f} s"
        if span < 90
        else f"{span / 60:.0f} min"
        if span < 5400
        else f"{span / 3600:.0f} h"
        if span < 172800
        else f"{span / 86400:.0f} d"
    )
    return f"in {text}" if ahead else f"{text} ago"


# -- login ------------------------------------------------------------------------------------
class LoginHandler(FormHandler):
    """``/console/login``: an operator token (CONTACTSYNC_INTAKE__TOKENS of a client named in
    CONTACTSYNC_INTAKE__OPERATORS) is exchanged for a signed session cookie."""

    public = True

    def get(self) -> None:
        self.page(
            "login.html",
            error="",
            next=self.local(self.get_query_argument("next", ""), "/console/"),
        )

    async def act(self) -> None:
        token = self.get_body_argument("token", "").strip()
        target = self.local(self.get_body_argument("next", ""), "/console/")
        client = self.tokens.client(f"Bearer {token}") if token else None
        if client is None or not client.operator:
            log.warning("console: a login was refused")
            self.page(
                "login.html",
                status=401,
                next=target,
                error=(
                    "That token is not an operator's: use a token of CONTACTSYNC_INTAKE__TOKENS "
                    "whose client is named in CONTACTSYNC_INTAKE__OPERATORS."
                ),
            )
            return
        session = Session.new(client.name)
        self.set_signed_cookie(
            COOKIE,
            session.dump(),
            expires_days=None,
            httponly=True,
            samesite="Strict",
            path="/console",
            secure=self.request.protocol == "https",
        )
        log.info("console: %s logged in", client.name, extra={"client": client.name})
        self.redirect(target, status=303)


class LogoutHandler(FormHandler):
    async def act(self) -> None:
        self.clear_cookie(COOKIE, path="/console")
        self.redirect("/console/login", status=303)


# -- pages ------------------------------------------------------------------------------------
class OverviewHandler(ConsoleHandler):
    """``/console/``: counts by state and destination, every gate, paused destinations."""

    async def get(self) -> None:
        seen = await self.redis(lambda: queries.overview(ledger(), destinations()))
        self.page("overview.html", o=seen, chart=chart_svg)


def chart_svg(values: list[int | None], maximum: int) -> str:
    """A gate's limit over time as a small inline SVG step line (numbers only: safe to embed)."""
    width, height = 300, 60
    top = max([maximum, 1, *(v for v in values if v is not None)]) * 1.15  # headroom
    step = width / max(1, len(values))
    points = []
    for i, value in enumerate(values):
        if value is None:
            continue
        y = height - 2 - (height - 4) * value / top
        points.append(f"{i * step:.1f},{y:.1f} {(i + 1) * step:.1f},{y:.1f}")
    line = " ".join(points)
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
        f'role="img" aria-label="limit over time, highest {maximum}">'
        f'<polyline fill="none" stroke="currentColor" stroke-width="2" points="{line}"/>'
        "</svg>"
    )


def _filter(handler: ConsoleHandler, body: bool = False) -> queries.Filter:
    get = handler.get_body_argument if body else handler.get_query_argument
    sort = get("sort", "age") or "age"
    return queries.Filter(
        destination=(get("destination", "") or "").strip()[:64],
        code=(get("code", "") or "").strip()[:64],
        text=(get("q", "") or "").strip()[:200],
        sort=sort if sort in queries.SORTS else "age",
        newest_first=get("order", "") == "desc",
    )


class ListHandler(ConsoleHandler):
    """``/console/{review,rejected,retrying,running,queued,merged,superseded}``: a page of 50,
    filtered by destination, code and text, sorted by age or attempts."""

    async def get(self, name: str) -> None:
        wanted = _filter(self)
        raw = self.get_query_argument("offset", "0") or "0"
        offset = int(raw) if raw.isdigit() and int(raw) < 10**9 else 0
        found = await self.redis(
            lambda: queries.job_page(ledger(), name, wanted, offset, PAGE, destinations())
        )
        self.page(
            "list.html",
            name=name,
            found=found,
            wanted=wanted,
            now=now_ms(),
            resolvable=name in queries.RESOLVABLE,
            done=DONE.get(self.get_query_argument("done", "") or "", ""),
        )


class SearchHandler(ConsoleHandler):
    """``/console/search?q=``: a job id, an idempotency key or a record (entity key)."""

    async def get(self) -> None:
        text = (self.get_query_argument("q", "") or "").strip()
        names = sorted(self.tokens.names)
        found = await self.redis(lambda: queries.search(ledger(), text, destinations(), names))
        if len(found.jobs) == 1 and not found.records and found.jobs[0][0] == "job id":
            self.redirect(f"/console/jobs/{found.jobs[0][1].id}")
            return
        self.page("search.html", text=text, found=found)


# -- a job ------------------------------------------------------------------------------------
def form_fields(record: JobRecord) -> list[dict[str, Any]]:
    """The inputs of a job's edit form: each scalar field of its model, and each entry of a
    nested object (``fields.FirstPhone``). Public fields show their value; personal ones stay
    empty, with the masked value as a hint (an empty input keeps the value)."""
    if not record.payload:
        return []
    model = model_for(record.kind)
    data: dict[str, Any] = json.loads(record.payload)
    public = model.public_fields
    inputs: list[dict[str, Any]] = []
    for name, info in model.model_fields.items():
        value = data.get(name)
        if isinstance(value, dict):
            for key, inner in value.items():
                if isinstance(inner, dict | list):
                    continue
                inputs.append(
                    _input(
                        f"{name}.{key}",
                        inner,
                        name in public or key in public,
                        f"{info.alias or name}: {key}",
                    )
                )
        elif not isinstance(value, list):
            if value is None and "dict" in str(info.annotation):
                continue
            inputs.append(_input(name, value, name in public, info.alias or name))
    return inputs


def _input(name: str, value: Any, public: bool, label: str) -> dict[str, Any]:
    shown = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return {
        "name": name,
        "label": label,
        "public": public,
        "value": shown if public else "",
        "hint": "" if public or value is None else f"{mask(shown)} (unchanged if empty)",
        "current": shown,
    }


class JobHandler(ConsoleHandler):
    """``/console/jobs/{id}``: state, answers, history, the masked payload; the actions its
    state allows."""

    async def get(self, job_id: str) -> None:
        await self.show(job_id, done=DONE.get(self.get_query_argument("done", "") or "", ""))

    async def show(
        self,
        job_id: str,
        status: int = 200,
        reveal: bool = False,
        errors: dict[str, str] | None = None,
        problem: str = "",
        typed: dict[str, str] | None = None,
        refused_newer: str = "",
        done: str = "",
    ) -> None:
        load_kinds()
        found = await self.redis(lambda: _with_facts(job_id))
        if found is None:
            raise tornado.web.HTTPError(
                404,
                f"no job {job_id} (unknown id, or its record expired after the retention period)",
            )
        record, facts = found
        payload = None
        if record.payload:
            job: JobModel = model_for(record.kind).model_validate_json(record.payload)
            payload = job.model_dump(mode="json", exclude_none=True) if reveal else job.masked()
        inputs = form_fields(record) if record.state in (REVIEW, REJECTED) else []
        for item in inputs:
            if typed and item["name"] in typed:
                item["value"] = typed[item["name"]]
        self.page(
            "job.html",
            status=status,
            r=record,
            facts=order_rows(facts, when, "force"),
            payload=payload,
            revealed=reveal,
            inputs=inputs,
            errors=errors or {},
            problem=problem,
            newer=facts.get("newer_delivered"),
            refused_newer=refused_newer,
            done=done,
            phase=queries.phase(record),
            now=now_ms(),
            mask_sign=MASK,
            typed=typed or {},
        )


def _with_facts(job_id: str) -> tuple[JobRecord, dict[str, Any]] | None:
    """A job's record with its history, and its order facts (on a Redis thread)."""
    book = ledger()
    record = book.get(job_id, with_history=True)
    return None if record is None else (record, book.order_facts(record))


def _exists(job_id: str) -> JobRecord:
    record = ledger().get(job_id)
    if record is None:
        raise tornado.web.HTTPError(404, f"no job {job_id}")
    return record


def _reveal(job_id: str, by: str) -> None:
    _exists(job_id)
    ledger().note(job_id, {"event": "revealed", "by": by})


def _retry_now(job_id: str, by: str) -> bool:
    record = _exists(job_id)
    moved = record.state == RETRYING and ledger().retry_now(job_id)
    if moved:
        ledger().note(job_id, {"event": "retry-now", "by": by})
    return moved


class JobActionHandler(FormHandler, JobHandler):
    """``POST /console/jobs/{id}/{reveal,requeue,discard,retry-now}``."""

    async def act(self, job_id: str, action: str) -> None:
        by = self.session.client
        if action == "reveal":
            await self.redis(lambda: _reveal(job_id, by))
            log.info("console: %s revealed job %s", by, job_id, extra={"job_id": job_id, "by": by})
            await self.show(job_id, reveal=True)
        elif action == "requeue":
            await self._requeue(job_id, by)
        elif action == "discard":
            reason = self.get_body_argument("reason", "").strip()
            if not reason or len(reason) > 1000:
                await self.show(
                    job_id,
                    status=422,
                    errors={"reason": "required: why the job is discarded (1-1000 characters)"},
                )
                return
            try:
                await self.redis(lambda: discard(job_id, reason, by))
            except LedgerConflict as exc:
                await self.show(job_id, status=409, problem=str(exc))
                return
            self.redirect(f"/console/jobs/{job_id}?done=discarded", status=303)
        else:  # retry-now
            moved = await self.redis(lambda: _retry_now(job_id, by))
            done = "retry-now" if moved else "not-retrying"
            back = self.local(self.get_body_argument("next", ""), f"/console/jobs/{job_id}")
            self.redirect(f"{back}{'&' if '?' in back else '?'}done={done}", status=303)

    async def _requeue(self, job_id: str, by: str) -> None:
        record = await self.redis(lambda: _exists(job_id))
        typed = {
            name[2:]: value
            for name, values in self.request.body_arguments.items()
            if name.startswith("f:")
            for value in [values[-1].decode("utf-8", "replace")]
        }
        current = {item["name"]: item["current"] for item in form_fields(record)}
        changes = {
            name: value
            for name, value in typed.items()
            if value.strip() and value != current.get(name)
        }
        new_name = self.get_body_argument("new_name", "").strip()
        if new_name:
            changes[new_name] = self.get_body_argument("new_value", "")
        force = self.get_body_argument("force", "") == "1"
        try:
            if record.payload:  # validate first: errors belong next to the fields
                from tasks.models import validate_job

                validate_job(
                    record.kind,
                    apply_changes(record.kind, json.loads(record.payload), dict(changes)),
                )
            state = await self.redis(lambda: requeue(job_id, changes, by=by, force=force))
        except JobValidationError as exc:
            await self.show(
                job_id,
                status=422,
                errors=_errors_by_input(record, exc.problems),
                problem="The edited job is invalid; nothing changed.",
                typed=typed,
            )
            return
        except NewerDelivered as exc:
            await self.show(job_id, status=409, refused_newer=str(exc), typed=typed)
            return
        except LedgerConflict as exc:
            await self.show(job_id, status=409, problem=str(exc))
            return
        self.redirect(
            f"/console/jobs/{job_id}?done={'held' if state == 'held' else 'requeued'}", status=303
        )


def _errors_by_input(record: JobRecord, problems: list[tuple[str, str]]) -> dict[str, str]:
    """Validation problems keyed by the form input they belong to (a field's name or wire
    name); the rest under ``""``, shown above the form."""
    model = model_for(record.kind)
    names = {
        alias: name for name, f in model.model_fields.items() for alias in (name, f.alias) if alias
    }
    errors: dict[str, str] = {}
    for path, message in problems:
        head, _, rest = path.partition(".")
        key = names.get(head, head) + (f".{rest}" if rest else "")
        errors[key] = f"{errors[key]}; {message}" if key in errors else message
    inputs = {item["name"] for item in form_fields(record)}
    loose = [f"{k}: {v}" for k, v in errors.items() if k not in inputs]
    shown = {k: v for k, v in errors.items() if k in inputs}
    if loose:
        shown[""] = "; ".join(loose)
    return shown


# -- bulk -------------------------------------------------------------------------------------
class BulkHandler(FormHandler):
    """``POST /console/bulk``: requeue or discard the selected jobs of a list, or every job the
    list's filter matches. The first POST shows a confirmation stating the count; the second
    (``confirm=1``, with that count) acts, unless the selection changed meanwhile."""

    async def act(self) -> None:
        name = self.get_body_argument("list", "")
        action = self.get_body_argument("action", "")
        if (
            name not in queries.RESOLVABLE
            or action not in ("requeue", "discard")
            or (action == "discard" and name != "review")
        ):
            raise tornado.web.HTTPError(
                400, "bulk actions: requeue (review, rejected) or discard (review)"
            )
        wanted = _filter(self, body=True)
        scope = self.get_body_argument("scope", "selected")
        if scope == "matching":
            ids = await self.redis(
                lambda: queries.matching_ids(ledger(), name, wanted, destinations())
            )
        else:
            ids = [i for i in self.get_body_arguments("ids") if _JOB_ID.match(i)]
        reason = self.get_body_argument("reason", "").strip()[:1000]
        force = self.get_body_argument("force", "") == "1"
        expected = self.get_body_argument("expected", "")
        form: dict[str, Any] = {
            "list": name,
            "action": action,
            "scope": scope,
            "ids": ids,
            "wanted": wanted,
            "reason": reason,
            "force": force,
        }
        if not ids:
            self.page(
                "confirm.html",
                status=422,
                count=0,
                note="Nothing is selected: tick jobs, or act on every job the filter matches.",
                **form,
            )
            return
        if self.get_body_argument("confirm", "") != "1" or expected != str(len(ids)):
            note = (
                ""
                if not expected
                else (
                    f"The selection changed since you confirmed "
                    f"{expected}: {len(ids)} jobs match now."
                )
            )
            self.page("confirm.html", count=len(ids), note=note, **form)
            return
        if action == "discard" and not reason:
            self.page(
                "confirm.html",
                status=422,
                count=len(ids),
                note="A reason is required to discard.",
                **form,
            )
            return
        by = self.session.client
        outcome, refused = await self.redis(
            lambda: _bulk(ids, action, by, force, reason), BULK_DEADLINE_S
        )
        log.info(
            "console: %s bulk %s of %d %s jobs: %s, %d refused",
            by,
            action,
            len(ids),
            name,
            outcome,
            len(refused),
            extra={"by": by},
        )
        self.page(
            "bulk_done.html",
            action=action,
            name=name,
            count=len(ids),
            outcome=outcome,
            refused=refused,
            wanted=wanted,
        )


def _bulk(
    ids: list[str], action: str, by: str, force: bool, reason: str
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Requeue or discard each job (on a Redis thread): how many ended in each state, and the
    ones refused with why."""
    outcome: dict[str, int] = {}
    refused: list[tuple[str, str]] = []
    for job_id in ids:
        try:
            if action == "requeue":
                state = requeue(job_id, {}, by=by, force=force)
            else:
                discard(job_id, reason, by)
                state = "rejected"
            outcome[state] = outcome.get(state, 0) + 1
        except (JobValidationError, LedgerConflict) as exc:
            refused.append((job_id, str(exc).splitlines()[0][:300]))
    return outcome, refused


# -- the API's documentation -----------------------------------------------------------------
class DocsHandler(tornado.web.RequestHandler):
    """``/docs``: the OpenAPI document as a page (no auth, like /openapi.json: it describes
    the API and holds no data)."""

    def set_default_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)

    def get(self) -> None:
        from producers.openapi import document

        doc = document()
        self.render("docs.html", doc=doc, json=json, ref=_ref_name, generated=datetime.now(UTC))


def _ref_name(schema: dict[str, Any]) -> str:
    """A schema as a short type name: its ``$ref``'s last part, or its type."""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    for combined in ("oneOf", "anyOf"):
        if combined in schema:
            return " | ".join(_ref_name(s) for s in schema[combined])
    if schema.get("type") == "array":
        return f"array of {_ref_name(schema.get('items', {}))}"
    return str(schema.get("type", "any"))
