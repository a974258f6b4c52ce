"""Trendsic Platform Service (ServiceStack): the contact-connection job, the answer table, the
client, the task.

An update reads the contact first and sends the job's changes merged over it: the service resets
every non-nullable date a request leaves out. The table below is CRM_APIS.md §3 as data.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, ClassVar

import httpx
import redis
from celery import shared_task
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    Strict,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from tasks.auth import AuthSession, TokenAuth
from tasks.delivery import (
    GATEWAY_DOWN,
    Answer,
    DeliveryTask,
    LoginUnanswered,
    destination_gate,
    gateway_outcome,
    http_timeout,
    idempotent_transport_outcome,
    require,
)
from tasks.models import INT32_MAX, TEXT_CONTROL_CHARACTERS, JobModel
from tasks.outcomes import Outcome, Reauth, Retry, Review, Rule
from worker.broker import redis_client
from worker.credentials import LoginFailed, SharedToken, Token
from worker.destinations import Destination
from worker.gate import Gate
from worker.redaction import scrub
from worker.settings import TrendsicSettings, get_settings

NAME = "Trendsic"
DESTINATION = Destination(
    name="trendsic",
    settings=TrendsicSettings,
    job_kinds=("trendsic.contact_connection",),
    calls_per_job=3,  # a login, the read before the write, the write
    simulator="sandbox.trendsic",
    simulator_summary="The Trendsic Platform Service (ServiceStack) simulator: credentials, "
    "refresh and API-key auth, ContactConnections.",
    sandbox_env={"USERNAME": "sandbox-user", "PASSWORD": "sandbox-pass"},
    sandbox_args=("--latency", "0.05"),
    token_login=True,
)
CONTACT_PATH = "/v1/ContactConnections/{}"
LOGIN_PATH = "/auth/credentials"
REFRESH_PATH = "/access-token"
#: Where newer ServiceStack servers put the tokens when they leave them out of the body.
TOKEN_COOKIE = "ss-tok"  # noqa: S105 (a cookie name)
REFRESH_COOKIE = "ss-reftok"

CHECK_CREDENTIALS = "check CONTACTSYNC_TRENDSIC__USERNAME and CONTACTSYNC_TRENDSIC__PASSWORD"
#: What a token refused after everything the client could do means, by how it authenticates.
REFUSED_LOGIN_TOKEN = f"; so was a fresh one fetched for the fleet: {CHECK_CREDENTIALS}"
REFUSED_API_KEY = (
    "; the API key is static, so there is nothing to refresh: check CONTACTSYNC_TRENDSIC__API_KEY"
)

UNSET_DATE = "0001-01-01T00:00:00.0000000"  # .NET DateTime.MinValue: ServiceStack's "unset"
#: Longest text field (ours: the DTO names no length); a bound far above any real field.
TEXT_MAX = 4_000
# .NET's round-trip format: exactly 7 fractional digits, then nothing, Z or an offset.
_DATE = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})\.[0-9]{7}"
    r"(Z|[+-](?:0[0-9]|1[0-4]):[0-5][0-9])?"
)
_GUID = re.compile(r"[0-9A-Fa-f]{32}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(rf"[^@\s]{{1,64}}@{_LABEL}(?:\.{_LABEL})+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


# -- jobs --------------------------------------------------------------------------------------
def _servicestack_date(value: str) -> str:
    match = _DATE.fullmatch(value)
    try:
        if match is None:
            raise ValueError
        datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        raise ValueError(
            "must be an ISO-8601 date with exactly 7 fractional digits, optionally Z or +hh:mm, "
            f"e.g. 2026-11-23T09:30:00.0000000; {UNSET_DATE} means unset"
        ) from None
    return value


def _guid(value: str) -> str:
    if not _GUID.fullmatch(value):
        raise ValueError("must be 32 hex digits without dashes or braces")
    return value


def _plain_text(value: str) -> str:
    if TEXT_CONTROL_CHARACTERS.search(value):
        raise ValueError("contains control characters (only tab and line breaks are allowed)")
    return value


def _email(value: str) -> str:
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise ValueError("not an e-mail address (name@example.com); send null to clear it")
    return value


Int = Annotated[int, Strict(), Field(ge=-INT32_MAX - 1, le=INT32_MAX)]
Bool = Annotated[bool, Strict()]
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Text = Annotated[str, Strict(), Field(max_length=TEXT_MAX), AfterValidator(_plain_text)]
Date = Annotated[str, Strict(), AfterValidator(_servicestack_date)]
Guid = Annotated[str, Strict(), AfterValidator(_guid)]
Email = Annotated[str, Strict(), AfterValidator(_email)]

#: The default of a field the job leaves out (not changed). Fields typed without ``| None`` are
#: non-nullable .NET values: a job may leave them out but not send null.
OMITTED: Any = None

#: What resets a non-nullable value, by type (dates and the GUID are str), for the message that
#: refuses a null.
_RESET: dict[Any, str] = {int: "0", float: "0", bool: "false", str: UNSET_DATE}


class Contact(BaseModel):
    """The Contact DTO of ``/v1/ContactConnections`` (the seed page), field names exactly as
    ServiceStack spells them. In a job it holds only the fields to change."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    ContactId: Int = OMITTED
    ContactType: Int = OMITTED
    FirstName: Text | None = None
    LastName: Text | None = None
    Name: Text | None = None
    Role: Text | None = None
    Title: Text | None = None
    EmailWork: Email | None = None
    EmailPersonal: Email | None = None
    District: Text | None = None
    DistrictID: Int = OMITTED
    School: Text | None = None
    SchoolID: Int = OMITTED
    State: Text | None = None
    StateName: Text | None = None
    StateID: Int = OMITTED
    CountyID: Int = OMITTED
    County: Text | None = None
    Phone: Text | None = None
    Department: Text | None = None
    Flow: Text | None = None
    LastContact: Date = OMITTED
    DoNotContact: Bool = OMITTED
    Active: Bool = OMITTED
    AgentId: Int = OMITTED
    PhoneAlt: Text | None = None
    PeraContactId: Int = OMITTED
    RoomNumber: Text | None = None
    SourceTypeId: Int = OMITTED
    SourceTypeDesc: Text | None = None
    SourceNote: Text | None = None
    ContactStatusId: Int = OMITTED
    ContactStatusDesc: Text | None = None
    SSN: Text | None = None
    DateOfBirth: Date = OMITTED
    Deleted: Bool = OMITTED
    IsShared: Bool = OMITTED
    address_line1: Text | None = None
    address_city: Text | None = None
    address_state: Text | None = None
    address_zip: Text | None = None
    DeletedBy: Text | None = None
    DeletedDateTimeUtc: Date | None = None  # the one nullable date
    HasNBC: Bool = OMITTED
    HasFactFinderSheet: Bool = OMITTED
    MiddleInitial: Text | None = None
    Tags: Text | None = None
    DateCreated: Date = OMITTED
    PhoneLabel: Text | None = None
    AltPhoneLabel: Text | None = None
    Carriers: Text | None = None
    ContactImage: Text | None = None
    CompanyAffiliation: Text | None = None
    AdditionalInformation: Text | None = None
    HasGiftCard: Bool = OMITTED
    ContactCategory: Int = OMITTED
    WritingAgentId: Int = OMITTED
    WritingAgentName: Text | None = None
    MaritalStatus: Text | None = None
    TotalDebtAmount: Number = OMITTED
    NumberOfDebtAccounts: Int = OMITTED
    FactFinderCodeId: Int = OMITTED
    BusinessName: Text | None = None
    DBA: Text | None = None
    ContactGUID: Guid = OMITTED
    ProjectEndDate: Date = OMITTED
    Rate: Number = OMITTED
    JobID: Int = OMITTED
    JobName: Text | None = None
    JobCount: Int = OMITTED
    Locked: Bool = OMITTED
    LockedByAgentId: Int = OMITTED
    LockedTimestamp: Date = OMITTED
    Initials: Text | None = None
    ContactCategoryName: Text | None = None
    SMSOptIn: Bool = OMITTED

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        unknown = [str(name) for name in data if name not in cls.model_fields]
        if unknown:
            raise ValueError(
                "; ".join(_unknown_field(name) for name in unknown)
                + "; Contact field names are ServiceStack's, case-sensitive"
            )
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _null_only_where_nullable(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[str(info.field_name)].annotation
        if value is None and annotation in _RESET:
            reset = "32 zeros" if info.field_name == "ContactGUID" else _RESET[annotation]
            raise ValueError(
                f"cannot be null (a non-nullable .NET value): leave it out to keep "
                f"it, or send {reset} to reset it"
            )
        return value

    @model_validator(mode="after")
    def _something_to_change(self) -> Contact:
        if not self.model_fields_set - {"ContactId"}:
            raise ValueError(
                "no field to change: give at least one Contact field besides ContactId, e.g. Phone"
            )
        return self

    @model_serializer(mode="wrap")
    def _given_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Only the fields the job gave: a field left out is not changed (and a stored job
        validates again to the same changes)."""
        dumped: dict[str, Any] = handler(self)
        return {name: value for name, value in dumped.items() if name in self.model_fields_set}


def _unknown_field(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):  # never echo what may be a value pasted as a key
        return "a field name that is not a Contact field"
    lowered = {known.lower(): known for known in Contact.model_fields}
    close = difflib.get_close_matches(name.lower(), lowered, n=1, cutoff=0.75)
    hint = f" (did you mean {lowered[close[0]]}?)" if close else ""
    return f"unknown field {name}{hint}"


class TrendsicContactConnection(JobModel):
    """``POST /v1/ContactConnections/{ContactId}``: change fields of one contact. The client reads
    the contact first and sends these changes merged over it."""

    kind: ClassVar[str] = "trendsic.contact_connection"
    destination: ClassVar[str] = "trendsic"
    public_fields: ClassVar[frozenset[str]] = frozenset({"contact_id", "agent_id"})
    entity_fields: ClassVar[tuple[str, ...]] = ("contact_id",)

    contact_id: int = Field(strict=True, gt=0, le=INT32_MAX, description="the route's ContactId")
    agent_id: int = Field(strict=True, gt=0, le=INT32_MAX, description="AgentId of the request")
    contact: Contact = Field(description="the Contact fields to change (personal data)")

    @model_validator(mode="after")
    def _same_contact(self) -> TrendsicContactConnection:
        given = self.contact.model_fields_set
        if "ContactId" in given and self.contact.ContactId != self.contact_id:
            raise ValueError("contact.ContactId must equal contact_id (or be left out)")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields to change, in wire names and JSON types."""
        changed: dict[str, Any] = self.contact.model_dump(mode="json")
        return changed

    def mergeable(self, newer: JobModel) -> bool:
        """Updates of one contact always merge: each sends the whole record read just before,
        with its changes on top, so one call with every change is what they would have made."""
        return isinstance(newer, TrendsicContactConnection)

    def merge(self, newer: TrendsicContactConnection) -> TrendsicContactConnection:
        """Newest value of each Contact field; the newer job's AgentId."""
        return TrendsicContactConnection.model_validate(
            {
                "contact_id": self.contact_id,
                "agent_id": newer.agent_id,
                "contact": {**self.changes(), **newer.changes()},
            }
        )


# -- the answer table --------------------------------------------------------------------------
# fmt: off
ANSWERS: dict[int, Rule] = {
    200: Rule("delivered", "OK", measured=True),
    400: Rule("rejected", "validation failed; fix these fields in the job, then requeue",
              measured=True),
    401: Rule("refused", "the bearer token was refused"),
    403: Rule("review", "Invalid Role: the API user needs the Worker, Agent or Administrator "
                        "role in Trendsic; grant one, then requeue"),
    404: Rule("rejected", "no contact has this ContactId in Trendsic", measured=True),
    409: Rule("fault", "the contact changed while it was sent; the next attempt reads it again "
                       "and merges the changes over the new record", measured=True),
    500: Rule("fault", "Trendsic failed while handling the call"),
}
# fmt: on
UNKNOWN_STATUS = Rule(
    "review", "an HTTP status outside Trendsic's documented table; a person decides"
)


def rule_for(status: int) -> Rule:
    """The table's row for an HTTP status (any 2xx is the 200 row)."""
    return ANSWERS.get(200 if 200 <= status < 300 else status, UNKNOWN_STATUS)


#: The two calls of an update, as the reasons name them.
READ = "the read before the update"
UPDATE = "the update"


def _response_status(response: httpx.Response) -> dict[str, Any]:
    """ServiceStack's ``ResponseStatus`` of an answer, or {} if it has none."""
    try:
        data = response.json()
    except ValueError:
        return {}
    status = data.get("ResponseStatus") if isinstance(data, dict) else None
    return status if isinstance(status, dict) else {}


def _text(value: Any, values: list[str], limit: int = 160) -> str:
    """A code or message of Trendsic's, with any value we sent or read masked: a validator's
    message may quote the value it refused."""
    return scrub(str(value), values)[:limit] if value is not None else ""


def field_errors(status: dict[str, Any], values: list[str]) -> str:
    """``Errors[]`` field by field: ``FieldName (ErrorCode: Message)``; never the values."""
    errors = status.get("Errors")
    described = []
    for error in errors if isinstance(errors, list) else []:
        if isinstance(error, dict):
            field = _text(error.get("FieldName"), values, 80) or "(no field)"
            detail = ": ".join(
                t
                for t in (
                    _text(error.get("ErrorCode"), values, 60),
                    _text(error.get("Message"), values),
                )
                if t
            )
            described.append(f"{field} ({detail})" if detail else field)
    return "; ".join(described)


def classify_answer(
    response: httpx.Response, stage: str, values: list[str], refused: str = REFUSED_LOGIN_TOKEN
) -> Outcome:
    """One ServiceStack answer of ``stage`` (READ or UPDATE) → one outcome, by HTTP status.
    ``values``: strings sent or read, masked wherever the answer quotes them; ``refused``: what
    a 401 means for how the client authenticates, and the settings to check."""
    code = response.status_code
    if code in GATEWAY_DOWN:
        return gateway_outcome(code, NAME)
    rule = rule_for(code)
    status = _response_status(response)
    error_code = _text(status.get("ErrorCode"), values, 60)
    reason = f"{NAME} answered HTTP {code}{f' {error_code}' if error_code else ''} to {stage}: "
    reason += rule.reason
    if code == 400:
        reason += f": {field_errors(status, values) or _text(status.get('Message'), values)}"
    elif rule.verdict == "refused":
        reason += refused
    return rule.outcome(f"http-{code}", reason)


def describe_answer(response: httpx.Response, values: list[str]) -> str:
    """What the ledger keeps of an answer: ServiceStack's ErrorCode, Message and the names of
    the fields in error. Never the body: a read answers the whole contact, and an error page
    may quote the request."""
    status = _response_status(response)
    if not status:
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        if response.is_success:
            return f"HTTP {response.status_code}"
        return f"HTTP {response.status_code}: {len(response.content)} bytes of {kind}"
    kept = {key: _text(status.get(key), values) for key in ("ErrorCode", "Message")}
    errors = status.get("Errors")
    fields = (
        [_text(e.get("FieldName"), values, 80) for e in errors if isinstance(e, dict)]
        if (isinstance(errors, list))
        else []
    )
    if fields:
        kept["Errors"] = ", ".join(fields)
    return f"HTTP {response.status_code} {json.dumps(kept)}"


def _strings(*records: dict[str, Any]) -> list[str]:
    """The string values of contact records worth masking in Trendsic's messages (short ones
    would mask ordinary words), longest first."""
    found = {
        value
        for record in records
        for value in record.values()
        if isinstance(value, str) and len(value) >= 4
    }
    return sorted(found, key=len, reverse=True)


# -- the client --------------------------------------------------------------------------------
class TrendsicClient:
    """One pooled, thread-safe HTTP client per worker process for one Trendsic host, and the
    fleet's token for it (``worker/credentials.py``)."""

    def __init__(
        self,
        settings: TrendsicSettings,
        token_cache: redis.Redis | None = None,
        prefix: str | None = None,
        max_connections: int = 64,
    ) -> None:
        require("trendsic", settings)
        base_url = str(settings.base_url).rstrip("/")
        self.gate: Gate | None = destination_gate("trendsic", base_url, settings)
        self._api_key = settings.api_key.get_secret_value()
        self._username = settings.username
        self._password = settings.password.get_secret_value()
        # Requests go straight to the transport: no cookie jar, so one job's session cookies
        # (ss-id, ss-tok) never ride along on another's call.
        self._transport = httpx.HTTPTransport(limits=httpx.Limits(max_connections=max_connections))
        self._http = httpx.Client(
            base_url=base_url,
            timeout=http_timeout(settings),
            headers={"Accept": "application/json"},
            transport=self._transport,
        )
        shared: SharedToken | None = None
        if not self._api_key:
            user = hashlib.sha256(self._username.encode()).hexdigest()[:8]
            shared = SharedToken(
                token_cache if token_cache is not None else redis_client(),
                f"{self.gate.name}:{user}",
                self._login,
                prefix=prefix if prefix is not None else get_settings().key_prefix,
            )
        # A 401 renews a login's token for the fleet, once per job (its read and its write
        # together), and the call is sent once more; an API key is static: its 401 stands.
        self._auth: TokenAuth[httpx.Response] = TokenAuth(
            shared,
            lambda response: response.status_code == 401,
            _login_refused,
            static=Token(self._api_key) if shared is None else None,
        )

    # -- the connector ------------------------------------------------------------------------
    def prepare(self, job: JobModel) -> Callable[[], Answer]:
        assert isinstance(job, TrendsicContactConnection)
        path = CONTACT_PATH.format(job.contact_id)
        changes = job.changes()
        return lambda: self._update(job, path, changes)

    def send(self, job: JobModel) -> Answer:
        """Build and send at once (tools and tests; deliveries prepare, then send)."""
        return self.prepare(job)()

    def secrets(self) -> list[str]:
        return [s for s in (self._api_key, self._password, *self._auth.secrets()) if s]

    # -- one update: read, merge, write -------------------------------------------------------
    def _update(self, job: TrendsicContactConnection, path: str, changes: dict[str, Any]) -> Answer:
        return self._auth.run(lambda session: self._read_merge_write(session, job, path, changes))

    def _read_merge_write(
        self,
        session: AuthSession[httpx.Response],
        job: TrendsicContactConnection,
        path: str,
        changes: dict[str, Any],
    ) -> Answer:
        values = _strings(changes)
        # The read and the write share the job's token, renewed at most once between them.
        read = self._call(session, "GET", path)
        if isinstance(read, Answer):
            return read
        if not read.is_success:
            return self._answer(read, READ, values)
        record = _contact_of(read)
        if record is None:
            return Answer(
                Review(
                    "unexpected-read",
                    f"{NAME} answered the read with HTTP 200 but not one Contact; a person decides",
                ),
                describe_answer(read, values),
            )
        merged = {**record, **changes, "ContactId": job.contact_id}
        body = {"Contact": [merged], "ContactId": job.contact_id, "AgentId": job.agent_id}
        sent = self._call(session, "POST", path, body)
        if isinstance(sent, Answer):
            return sent
        return self._answer(sent, UPDATE, _strings(changes, record))

    def _answer(self, response: httpx.Response, stage: str, values: list[str]) -> Answer:
        refused = REFUSED_API_KEY if self._auth.shared is None else REFUSED_LOGIN_TOKEN
        outcome = classify_answer(response, stage, values, refused)
        measured = rule_for(response.status_code).measured
        return Answer(outcome, describe_answer(response, values), measured=measured)

    def _call(
        self, session: AuthSession[httpx.Response], method: str, path: str, body: Any = None
    ) -> httpx.Response | Answer:
        """One call with the job's token (``tasks/auth.py``: a refused token is renewed for the
        fleet once per job and the call sent once more). A transport error is the Answer."""

        def exchange(token: Token) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token.value}"}
            return self._exchange(
                self._http.build_request(method, path, json=body, headers=headers)
            )

        try:
            return session.send(exchange)
        except httpx.TransportError as exc:
            return Answer(idempotent_transport_outcome(exc, NAME), type(exc).__name__)

    def _exchange(self, request: httpx.Request) -> httpx.Response:
        response = self._transport.handle_request(request)
        try:
            response.read()
        finally:
            response.close()
        response.request = request
        return response

    # -- auth ---------------------------------------------------------------------------------
    def _login(self, stale: Token | None) -> Token:
        """SharedToken's login: the refresh token if the stale token has one and it is still
        good, else the credentials."""
        refresh_token = stale.data.get("refresh_token") if stale is not None else None
        if refresh_token:
            refreshed = self._refreshed(refresh_token)
            if refreshed is not None:
                return refreshed
        return self._credentials_login()

    def _refreshed(self, refresh_token: str) -> Token | None:
        """``POST /access-token``: a new bearer, or None if the refresh token was refused."""
        response = self._auth_call(REFRESH_PATH, {"RefreshToken": refresh_token})
        token = _json_field(response, "AccessToken")
        if response.status_code != 200 or not token:
            return None
        return Token(token, {"refresh_token": refresh_token})

    def _credentials_login(self) -> Token:
        response = self._auth_call(
            LOGIN_PATH, {"UserName": self._username, "Password": self._password, "RememberMe": True}
        )
        if response.status_code != 200:
            error_code = _text(_response_status(response).get("ErrorCode"), [self._password], 60)
            raise LoginFailed(f"HTTP {response.status_code} {error_code}".strip())
        bearer = _json_field(response, "BearerToken") or response.cookies.get(TOKEN_COOKIE)
        refresh = _json_field(response, "RefreshToken") or response.cookies.get(REFRESH_COOKIE)
        if not bearer:
            raise LoginFailed(
                "the login answered no BearerToken and no ss-tok cookie (is JWT "
                "auth enabled on CONTACTSYNC_TRENDSIC__BASE_URL?)"
            )
        return Token(bearer, {"refresh_token": refresh} if refresh else {})

    def _auth_call(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """A login or refresh call; the service being down is not the credentials' fault."""
        try:
            response = self._exchange(self._http.build_request("POST", path, json=body))
        except httpx.TransportError as exc:
            answer = Answer(idempotent_transport_outcome(exc, NAME), type(exc).__name__)
            raise LoginUnanswered(answer) from None
        status = response.status_code
        if status in GATEWAY_DOWN:
            raise LoginUnanswered(
                Answer(gateway_outcome(status, NAME), f"HTTP {status} to the login")
            )
        if status >= 500:
            failed = Retry(
                f"http-{status}", f"{NAME} failed while logging in (HTTP {status})", bounded=True
            )
            raise LoginUnanswered(Answer(failed))
        return response


def _login_refused(exc: LoginFailed) -> Answer:
    return Answer(Reauth("login-failed", f"{NAME} login failed: {exc}; {CHECK_CREDENTIALS}"))


def _json_field(response: httpx.Response, name: str) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    value = data.get(name) if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


def _contact_of(response: httpx.Response) -> dict[str, Any] | None:
    """The one Contact of a read's ``ContactResponse``, or None if it holds no single one."""
    try:
        data = response.json()
    except ValueError:
        return None
    contacts = data.get("Contact") if isinstance(data, dict) else None
    if isinstance(contacts, list) and len(contacts) == 1 and isinstance(contacts[0], dict):
        return dict(contacts[0])
    return None


def _client() -> TrendsicClient:
    settings = get_settings()
    return TrendsicClient(settings.trendsic, max_connections=settings.worker_concurrency * 2)


class TrendsicDelivery(DeliveryTask):
    abstract = True
    connector_factory: ClassVar[Callable[[], TrendsicClient]] = staticmethod(_client)


@shared_task(base=TrendsicDelivery, bind=True, name="trendsic.deliver", queue="trendsic")
def deliver(self: TrendsicDelivery, job_id: str) -> dict[str, Any]:
    """Deliver one Trendsic contact-connection job from the ledger (read, merge, write)."""
    return self.deliver(job_id)
