"""Expandable ERP API: the customer-contact update job, the answer table, the client, the task.

The login's ``AUTH_TOKEN`` travels in the JSON body of every call; one token serves the whole
fleet (``worker/credentials.py``) and a 401 renews it once. The table is CRM_APIS.md §4 as data.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar

import httpx
from celery import shared_task
from pydantic import ConfigDict, Field, field_validator, model_validator
from redis import Redis

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
from tasks.models import CONTROL_CHARACTERS, TEXT_CONTROL_CHARACTERS, JobModel
from tasks.outcomes import Outcome, Reauth, Retry, Rule
from worker.broker import redis_client
from worker.credentials import LoginFailed, SharedToken, Token
from worker.destinations import Destination
from worker.gate import Gate
from worker.settings import ExpandableSettings, get_settings

NAME = "Expandable"
DESTINATION = Destination(
    name="expandable",
    settings=ExpandableSettings,
    job_kinds=("expandable.contact_update",),
    calls_per_job=3,  # a login, the call, the call again with a renewed token
    simulator="sandbox.expandable",
    simulator_summary="The Expandable ERP simulator: auth-token-get, customer-contact-update.",
    sandbox_env={"DATA_SOURCE": "SANDBOX", "USERNAME": "sandbox", "PASSWORD": "sandbox-password"},
    sandbox_args=("--latency", "0.05"),
    token_login=True,
)
LOGIN_PATH = "/api/auth-token-get"
UPDATE_PATH = "/api/customer-contact-update"
NOTES_MAX = 32_765  # documented: "Notes can be up to 32,765 characters long."
ID_MAX = 64  # ours: the page names no length; both keys are short codes in the ERP
FIELD_MAX = 4_000  # ours: the page names no length; a bound far above any real field
E_MAIL_MAX = 254
CREDENTIAL_SETTINGS = (
    "CONTACTSYNC_EXPANDABLE__DATA_SOURCE, CONTACTSYNC_EXPANDABLE__USERNAME and "
    "CONTACTSYNC_EXPANDABLE__PASSWORD"
)

KEYS = ("CUSTOMER_ID", "CUST_CONTACT")
#: The fields a call may change, in the order of the page's "Full Request JSON".
FIELDS = (
    "CONTACT_STATUS",
    "FIRST_NAME",
    "LAST_NAME",
    "INITIAL",
    "TITLE",
    "MAIL_STOP",
    "ADDRESS_1",
    "ADDRESS_2",
    "ADDRESS_3",
    "CITY",
    "STATE",
    "ZIP_CODE",
    "COUNTRY",
    "PHONE_NO",
    "FAX_NO",
    "CELL_PHONE_NO",
    "PAGER_NO",
    "E_MAIL",
    "E_MAIL_2",
    "WEB_ADDRESS",
    *(f"SOFCT_USER_{n}" for n in range(1, 17)),
    "NOTES",
    "ATTACHMENTS",
)
FIELD_LIST = ", ".join((*FIELDS[:20], "SOFCT_USER_1 to SOFCT_USER_16", *FIELDS[-2:]))
#: Keys that are not job fields, and why.
NOT_IN_A_JOB = {
    **dict.fromkeys(
        ("AUTH_TOKEN", "DATA_SOURCE", "USER_NAME", "PASSWORD"),
        "credentials never travel in a job: the worker logs in with "
        f"{CREDENTIAL_SETTINGS} and adds the token to each call; remove it",
    ),
    **dict.fromkeys(
        (
            "CREATED_BY",
            "DATE_CREATED",
            "MODIFIED_BY",
            "DATE_MODIFIED",
            "OPERATOR_ID",
            "DATE_LAST_UPDT",
            "TIME_LAST_UPDT",
        ),
        "Expandable sets this audit field itself; remove it",
    ),
}

_KEY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")
_E_MAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")

#: Messages the page documents word for word (and "expired", from CRM_APIS.md): constants of
#: the API, so they may be shown. Any other MESSAGE is free text and may quote contact data.
DOCUMENTED_MESSAGES = frozenset(
    {
        "Request JSON is invalid.",
        "Auth Token was not provided.",
        "Auth Token is malformed.",
        "Auth Token login failure.",
        "Auth Token is expired.",
        "Request method must be POST.",
    }
)


# -- the job -----------------------------------------------------------------------------------
def _squeeze(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", name.upper())


_SQUEEZED = {_squeeze(name): name for name in (*KEYS, *FIELDS)}


def _unknown_keys(keys: list[Any]) -> str:
    """Why each of ``keys`` is refused, with the field probably meant; the list of fields once
    if any key has no likely match. A key that does not look like a field name is not shown:
    it may be personal data put in the wrong place."""
    problems, unmatched = [], False
    for key in keys:
        if not (isinstance(key, str) and _KEY_NAME.fullmatch(key)):
            problems.append("a key that is not a field name (not shown)")
            unmatched = True
            continue
        if key in NOT_IN_A_JOB:
            problems.append(f"{key}: {NOT_IN_A_JOB[key]}")
            continue
        squeezed = _squeeze(key)
        meant = _SQUEEZED.get(squeezed)
        if meant is None and squeezed.startswith("SOFCTUSER"):
            meant = "one of SOFCT_USER_1 to SOFCT_USER_16"
        if meant is None:
            close = difflib.get_close_matches(squeezed, _SQUEEZED, n=1, cutoff=0.85)
            meant = _SQUEEZED[close[0]] if close else None
        problems.append(f"{key}: no such field" + (f"; did you mean {meant}?" if meant else ""))
        unmatched = unmatched or meant is None
    if unmatched:
        problems.append(
            f"the fields are CUSTOMER_ID, CUST_CONTACT, {FIELD_LIST} (spelt exactly so, upper case)"
        )
    return "; ".join(problems)


Text = Annotated[str | None, Field(max_length=FIELD_MAX)]
EMail = Annotated[str | None, Field(max_length=E_MAIL_MAX)]


class ExpandableContactUpdate(JobModel):
    """``customer-contact-update``: change fields of one existing customer contact.

    Field names are Expandable's own. A field left out (or ``None``) is not sent and stays as it
    is; ``""`` clears it. At least one field besides the two keys must be given.
    """

    model_config = ConfigDict(hide_input_in_errors=True)

    kind: ClassVar[str] = "expandable.contact_update"
    destination: ClassVar[str] = "expandable"
    public_fields: ClassVar[frozenset[str]] = frozenset(KEYS)
    entity_fields: ClassVar[tuple[str, ...]] = KEYS

    CUSTOMER_ID: str = Field(min_length=1, max_length=ID_MAX)
    CUST_CONTACT: str = Field(min_length=1, max_length=ID_MAX)
    CONTACT_STATUS: Text = None
    FIRST_NAME: Text = None
    LAST_NAME: Text = None
    INITIAL: Text = None
    TITLE: Text = None
    MAIL_STOP: Text = None
    ADDRESS_1: Text = None
    ADDRESS_2: Text = None
    ADDRESS_3: Text = None
    CITY: Text = None
    STATE: Text = None
    ZIP_CODE: Text = None
    COUNTRY: Text = None
    PHONE_NO: Text = None
    FAX_NO: Text = None
    CELL_PHONE_NO: Text = None
    PAGER_NO: Text = None
    E_MAIL: EMail = None
    E_MAIL_2: EMail = None
    WEB_ADDRESS: Text = None
    SOFCT_USER_1: Text = None
    SOFCT_USER_2: Text = None
    SOFCT_USER_3: Text = None
    SOFCT_USER_4: Text = None
    SOFCT_USER_5: Text = None
    SOFCT_USER_6: Text = None
    SOFCT_USER_7: Text = None
    SOFCT_USER_8: Text = None
    SOFCT_USER_9: Text = None
    SOFCT_USER_10: Text = None
    SOFCT_USER_11: Text = None
    SOFCT_USER_12: Text = None
    SOFCT_USER_13: Text = None
    SOFCT_USER_14: Text = None
    SOFCT_USER_15: Text = None
    SOFCT_USER_16: Text = None
    NOTES: Annotated[str | None, Field(max_length=NOTES_MAX)] = None
    ATTACHMENTS: Text = None

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        # Before pydantic's own "extra inputs are not permitted": that names the key but cannot
        # say what was meant, nor why AUTH_TOKEN has no place here.
        if isinstance(data, dict):
            unknown = [key for key in data if key not in cls.model_fields]
            if unknown:
                raise ValueError(_unknown_keys(unknown))
        return data

    @field_validator(*KEYS)
    @classmethod
    def _key_is_plain(cls, value: str) -> str:
        if value != value.strip() or CONTROL_CHARACTERS.search(value):
            raise ValueError("must not have spaces at either end nor control characters")
        return value

    @field_validator(*FIELDS)
    @classmethod
    def _no_control_characters(cls, value: str | None) -> str | None:
        if value is not None and TEXT_CONTROL_CHARACTERS.search(value):
            raise ValueError("contains control characters (only tab and line breaks are allowed)")
        return value

    @field_validator("E_MAIL", "E_MAIL_2")
    @classmethod
    def _plausible_e_mail(cls, value: str | None) -> str | None:
        if value and not _E_MAIL.fullmatch(value):
            raise ValueError('not an e-mail address (name@example.com); "" clears the field')
        return value

    @field_validator("ATTACHMENTS")
    @classmethod
    def _attachments_are_pipe_separated(cls, value: str | None) -> str | None:
        if value:
            items = value.split("|")
            for number, item in enumerate(items, start=1):
                if not item.strip():
                    raise ValueError(
                        f"item {number} of {len(items)} is empty: separate the file paths or "
                        "URLs with a single | (none at either end)"
                    )
        return value

    @model_validator(mode="after")
    def _something_to_change(self) -> ExpandableContactUpdate:
        if not self.changes():
            raise ValueError(
                "at least one field to change is required besides CUSTOMER_ID and CUST_CONTACT "
                f'("" clears a field); the fields are {FIELD_LIST}'
            )
        return self

    def changes(self) -> dict[str, str]:
        """The fields the call sets (``""`` included: it clears the field)."""
        return {name: value for name in FIELDS if (value := getattr(self, name)) is not None}

    def mergeable(self, newer: JobModel) -> bool:
        """Updates of one customer contact always merge: each sets only the fields it names."""
        return isinstance(newer, ExpandableContactUpdate)

    def merge(self, newer: ExpandableContactUpdate) -> ExpandableContactUpdate:
        """Newest value of each field (``""``, which clears a field, counts as a value)."""
        return ExpandableContactUpdate.model_validate({**self.body(), **newer.body()})

    def body(self) -> dict[str, str]:
        """The request body without its ``AUTH_TOKEN``."""
        return {
            "CUSTOMER_ID": self.CUSTOMER_ID,
            "CUST_CONTACT": self.CUST_CONTACT,
            **self.changes(),
        }


# -- the answer table --------------------------------------------------------------------------
#: By HTTP status (502/503/504 go to ``gateway_outcome``). What a reason may quote of the
#: answer: MESSAGE_CODE when it is an upper-case identifier (it names the error; the ERP does
#: not build it from the request), MESSAGE only when it is one of the page's fixed messages.
#: A 500's MESSAGE is "(Error Message)", free text that may quote the contact's data, so it is
#: never kept; only its length is.
# fmt: off
ANSWERS: dict[int, Rule] = {
    200: Rule("delivered", "customer contact updated"),
    400: Rule("rejected", "Expandable refused the request as invalid (a field name, type or "
                          "length it does not accept); fix the job, then requeue"),
    401: Rule("refused", "Expandable refused a freshly fetched AUTH_TOKEN: check "
                        f"{CREDENTIAL_SETTINGS}, and that this user may edit customer contacts"),
    # Not on the page: no such endpoint at the configured address.
    404: Rule("broken", "no customer-contact-update endpoint at this address: check "
                      "CONTACTSYNC_EXPANDABLE__BASE_URL; the destination is paused"),
    # A client bug or a redirect/proxy that turned the POST into a GET: every call would fail
    # alike, so the destination is paused as well as this job rejected.
    405: Rule("broken", "Expandable saw a method other than POST (a redirect or proxy on the way, "
                      "or a contactsync bug): check CONTACTSYNC_EXPANDABLE__BASE_URL is the "
                      "exact https address; the destination is paused"),
    # Business errors (unknown CUSTOMER_ID / CUST_CONTACT) and faults alike, told apart by
    # nothing documented: a few retries, then a person looks (the fault budget).
    500: Rule("fault", "Expandable could not update the contact: a business error (such as an "
                       "unknown CUSTOMER_ID or CUST_CONTACT) or a fault; retried a few times, "
                       "then a person looks"),
}
# fmt: on
OTHER_SERVER_ERROR = Rule("fault", "a server error Expandable does not document")
UNKNOWN_STATUS = Rule("review", "an answer Expandable does not document; a person decides")
#: Answers after which Expandable did the work: their latency says how loaded it is.
MEASURED = frozenset({200, 500})


def _message_code(data: Any) -> str | None:
    code = data.get("MESSAGE_CODE") if isinstance(data, dict) else None
    return code if isinstance(code, str) and _CODE.fullmatch(code) else None


def _message(data: Any) -> str | None:
    message = data.get("MESSAGE") if isinstance(data, dict) else None
    return message if message in DOCUMENTED_MESSAGES else None


def classify_answer(status: int, data: Any) -> Outcome:
    """One ``customer-contact-update`` answer (status, parsed JSON or None) → one outcome."""
    if status in GATEWAY_DOWN:
        return gateway_outcome(status, NAME)
    rule = ANSWERS.get(status) or (OTHER_SERVER_ERROR if status >= 500 else UNKNOWN_STATUS)
    message_code = _message_code(data)
    message = _message(data)
    said = " ".join(filter(None, (f"HTTP {status}", message_code, message and repr(message))))
    return rule.outcome(message_code or str(status), f"{said}: {rule.reason}")


def describe_answer(response: httpx.Response) -> str:
    """What the ledger keeps of an answer. A 200 is the whole updated record (personal data):
    only its two keys are kept. An error keeps MESSAGE_CODE, and MESSAGE only if documented."""
    data = _json(response)
    status = response.status_code
    if status == 200 and isinstance(data, dict):
        keys = {key: str(data.get(key, ""))[:ID_MAX] for key in KEYS}
        return f"HTTP 200 CUSTOMER_ID={keys['CUSTOMER_ID']} CUST_CONTACT={keys['CUST_CONTACT']}"
    if isinstance(data, dict) and ("MESSAGE" in data or "MESSAGE_CODE" in data):
        parts = [f"HTTP {status}"]
        if (code := _message_code(data)) is not None:
            parts.append(f"MESSAGE_CODE={code}")
        raw = data.get("MESSAGE")
        if (message := _message(data)) is not None:
            parts.append(f"MESSAGE={message!r}")
        elif isinstance(raw, str):
            parts.append(f"MESSAGE withheld ({len(raw)} characters; may quote contact data)")
        return " ".join(parts)
    kind = response.headers.get("content-type", "no content type").split(";")[0]
    return f"HTTP {status}: {len(response.content)} bytes of {kind}, not an Expandable answer"


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


# -- the client --------------------------------------------------------------------------------
class ExpandableClient:
    """One pooled, thread-safe HTTP client per worker process for one Expandable installation.

    token_cache: the Redis where the fleet's token is cached (default: the broker's); prefix:
    its key prefix (default ``key_prefix`` of the settings).
    """

    def __init__(
        self,
        settings: ExpandableSettings,
        token_cache: Redis | None = None,
        prefix: str | None = None,
        max_connections: int = 16,
    ) -> None:
        require("expandable", settings)
        base_url = str(settings.base_url).rstrip("/")
        self._credentials = {
            "DATA_SOURCE": settings.data_source,
            "USER_NAME": settings.username,
            "PASSWORD": settings.password.get_secret_value(),
        }
        gate = destination_gate("expandable", base_url, settings)
        self.gate: Gate | None = gate
        self._http = httpx.Client(
            base_url=base_url,
            timeout=http_timeout(settings),
            headers={"Accept": "application/json"},
            limits=httpx.Limits(max_connections=max_connections),
        )
        # A token of one DATA_SOURCE or user must never serve another: the login is in the name.
        login = f"{settings.data_source}\0{settings.username}".encode()
        #: The fleet's token for this installation and login (``worker/credentials.py``).
        self.shared_token = SharedToken(
            token_cache if token_cache is not None else redis_client(),
            f"{gate.name}:{hashlib.sha256(login).hexdigest()[:10]}",
            self._login,
            prefix=prefix if prefix is not None else get_settings().key_prefix,
        )
        # Any 401 (missing, malformed, expired or forgotten token) renews it once per job.
        self._auth: TokenAuth[httpx.Response] = TokenAuth(
            self.shared_token, lambda response: response.status_code == 401, _login_refused
        )

    def prepare(self, job: JobModel) -> Callable[[], Answer]:
        assert isinstance(job, ExpandableContactUpdate)
        body = job.body()
        return lambda: self._exchange(body)

    def send(self, job: JobModel) -> Answer:
        """Build and send at once (tools and tests; deliveries prepare, then send)."""
        return self.prepare(job)()

    def secrets(self) -> list[str]:
        return [self._credentials["PASSWORD"], *self._auth.secrets()]

    def _exchange(self, body: dict[str, str]) -> Answer:
        try:
            return self._auth.run(lambda session: self._updated(session, body))
        except httpx.TransportError as exc:
            return Answer(idempotent_transport_outcome(exc, NAME), type(exc).__name__)

    def _updated(self, session: AuthSession[httpx.Response], body: dict[str, str]) -> Answer:
        response = session.send(lambda token: self._update(body, token))
        status = response.status_code
        # After a renewal the latency covers a login and two calls: not a sample of the load.
        measured = status in MEASURED and not session.refreshed
        return Answer(
            classify_answer(status, _json(response)), describe_answer(response), measured=measured
        )

    def _update(self, body: dict[str, str], token: Token) -> httpx.Response:
        return self._http.post(UPDATE_PATH, json={**body, "AUTH_TOKEN": token.value})

    def _login(self, stale: Token | None) -> Token:
        """``auth-token-get`` for the fleet (called by ``SharedToken`` under its lock)."""
        response = self._http.post(LOGIN_PATH, json=self._credentials)
        status = response.status_code
        if status == 200:
            data = _json(response)
            value = data.get("AUTH_TOKEN") if isinstance(data, dict) else None
            if isinstance(value, str) and value:
                return Token(value)  # lifetime unknown: renewed only when refused
            raise LoginFailed(
                "Expandable answered the login without an AUTH_TOKEN: check "
                "CONTACTSYNC_EXPANDABLE__BASE_URL points at its API"
            )
        if status in GATEWAY_DOWN:
            raise LoginUnanswered(
                Answer(gateway_outcome(status, f"{NAME} (login)"), describe_answer(response))
            )
        code = _message_code(_json(response))
        if status == 500 and code:
            # An ERP that refuses credentials answers its login with a 500 and a MESSAGE_CODE
            # (a verdict, not a crash): retrying per job would only log in again and again.
            raise LoginFailed(
                f"Expandable refused the login (HTTP 500 {code[:60]}): check {CREDENTIAL_SETTINGS}"
            )
        if status >= 500:
            outcome = Retry(
                f"login-http-{status}", f"the {NAME} login answered HTTP {status}", bounded=True
            )
            raise LoginUnanswered(Answer(outcome, describe_answer(response)))
        if status == 401:
            raise LoginFailed(
                f"Expandable refused the login (HTTP 401): check {CREDENTIAL_SETTINGS}"
            )
        raise LoginFailed(
            f"the Expandable login answered HTTP {status}: check CONTACTSYNC_"
            f"EXPANDABLE__BASE_URL and {CREDENTIAL_SETTINGS}"
        )


def _login_refused(exc: LoginFailed) -> Answer:
    reason = str(exc)
    if "CONTACTSYNC_EXPANDABLE__" not in reason:
        reason = f"{reason}; check {CREDENTIAL_SETTINGS}"
    return Answer(Reauth("login-failed", reason), "auth-token-get: no token")


def _client() -> ExpandableClient:
    settings = get_settings()
    return ExpandableClient(settings.expandable, max_connections=settings.worker_concurrency * 2)


class ExpandableDelivery(DeliveryTask):
    abstract = True
    connector_factory: ClassVar[Callable[[], ExpandableClient]] = staticmethod(_client)


@shared_task(base=ExpandableDelivery, bind=True, name="expandable.deliver", queue="expandable")
def deliver(self: ExpandableDelivery, job_id: str) -> dict[str, Any]:
    """Deliver one Expandable customer-contact update from the ledger."""
    return self.deliver(job_id)
