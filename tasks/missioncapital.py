"""Mission Capital partner API (Salesforce Apex REST ``contactUser``): the job, the answer tables,
the client with the fleet's one OAuth token, and the task.

``contactUser`` answers ``{"IsSuccessful", "ResponseText"}`` with an HTTP status nobody documents,
so that body decides first; Salesforce's platform errors (a JSON array of ``errorCode``) and the
HTTP status decide the rest. The tables below are CRM_APIS.md §2 as data.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any, ClassVar

import httpx
import redis
from celery import shared_task
from pydantic import Field, field_validator

from tasks.auth import TokenAuth
from tasks.delivery import (
    GATEWAY_DOWN,
    Answer,
    DeliveryTask,
    LoginUnanswered,
    destination_gate,
    gateway_outcome,
    http_timeout,
    idempotent_transport_outcome,
    record_api_usage,
    require,
)
from tasks.models import JobModel
from tasks.outcomes import Outcome, Reauth, Retry, Review, Rule
from worker.broker import redis_client
from worker.credentials import LoginFailed, SharedToken, Token
from worker.destinations import Destination
from worker.gate import Gate, gate_name
from worker.settings import MissionCapitalSettings, get_settings

DESTINATION_NAME = "missioncapital"
DESTINATION = Destination(
    name=DESTINATION_NAME,
    settings=MissionCapitalSettings,
    job_kinds=("missioncapital.contact_user",),
    calls_per_job=3,  # a login, the call, the call again with a renewed token
    simulator="sandbox.missioncapital",
    simulator_summary="The Mission Capital (Salesforce Apex REST) simulator: OAuth password "
    "grant, contactUser, API usage limits.",
    url_setting="login_url",
    sandbox_env={
        "CLIENT_ID": "sandbox-client",
        "CLIENT_SECRET": "sandbox-secret",
        "USERNAME": "sandbox@example.com",
        "PASSWORD": "sandbox-password",
        "PARTNER_ID": "P-SANDBOX",
        "PARTNER_NAME": "contactsync-sandbox",
    },
    sandbox_args=("--latency", "0.05", "--jitter", "0.01"),
    token_login=True,
)
NAME = "Mission Capital"
LOGIN_NAME = "Salesforce login"
OAUTH_PATH = "/services/oauth2/token"
CONTACT_USER_PATH = "/services/apexrest/creditapp/contactUser"
LIMIT_HEADER = "Sforce-Limit-Info"
ENV = "CONTACTSYNC_MISSIONCAPITAL__"

#: A Salesforce id: 15 case-sensitive characters, or 18 with a case-checksum suffix.
_SALESFORCE_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_API_USAGE = re.compile(r"(?:^|[,\s])api-usage=(\d+)/(\d+)")
SAMPLE_ID = "00QEa00000ItVf8MAF"


# -- the job -----------------------------------------------------------------------------------
def id_suffix(base: str) -> str:
    """The 3-character case checksum of a 15-character Salesforce id: per block of 5, bit i set
    if character i is upper case, written as one character of A-Z0-5."""
    suffix = ""
    for start in range(0, 15, 5):
        bits = sum(1 << i for i, char in enumerate(base[start : start + 5]) if char.isupper())
        suffix += _SUFFIX_ALPHABET[bits]
    return suffix


class MissionCapitalContactUser(JobModel):
    """``contactUser``: re-enable contact for an application (a Salesforce Lead) that was marked
    "Do Not Contact". Safe to repeat."""

    kind: ClassVar[str] = "missioncapital.contact_user"
    destination: ClassVar[str] = DESTINATION_NAME
    public_fields: ClassVar[frozenset[str]] = frozenset({"application_id"})

    application_id: str = Field(
        alias="ApplicationID", description=f"the application's Salesforce Lead id, e.g. {SAMPLE_ID}"
    )

    def entity_key(self) -> str:
        """The application: a Salesforce id's first 15 characters name the record (the 18-character
        form only adds a checksum), so both forms of one id are one entity."""
        return f"{self.destination}:{self.application_id[:15]}"

    def mergeable(self, newer: JobModel) -> bool:
        """Every contactUser call of one application asks the same (re-enable contact) and is
        safe to repeat: any number pending are one call."""
        return isinstance(newer, MissionCapitalContactUser)

    def merge(self, newer: MissionCapitalContactUser) -> MissionCapitalContactUser:
        return newer

    @field_validator("application_id")
    @classmethod
    def _salesforce_lead_id(cls, value: str) -> str:
        if not _SALESFORCE_ID.fullmatch(value):
            raise ValueError(
                "must be a Salesforce Lead id: 15 or 18 letters and digits, nothing else, "
                f"e.g. {SAMPLE_ID}"
            )
        if len(value) == 18 and value[15:].upper() != id_suffix(value[:15]):
            raise ValueError(
                "the last 3 characters of an 18-character Salesforce id are a checksum of the "
                "upper/lower case of the first 15, and they do not match: copy the id exactly as "
                f"Salesforce shows it (case matters), e.g. {SAMPLE_ID}"
            )
        return value


# -- the answer tables -------------------------------------------------------------------------
def _outcome(rule: Rule, code: str, instance: str) -> Outcome:
    """A row's outcome, ``{instance}`` in its reason the instance URL the login returned."""
    return rule.outcome(code, rule.reason.replace("{instance}", instance or "unknown"))


DELIVERED = Rule("delivered", "contact re-enabled for the application", code="IsSuccessful")

#: contactUser's own failures (``IsSuccessful: false``), by ``ResponseText``.
# fmt: off
RESPONSE_TEXTS: dict[str, Rule] = {
    "Missing Application ID": Rule(
        "rejected", "Missing Application ID: the call carried no ApplicationID header; "
        "validation should have stopped this job (a contactsync bug: report it)",
        code="missing-application-id"),
    "Application not found": Rule(
        "review", "Application not found: the org has no Lead with this ApplicationID; check "
        f"the id, and that it belongs to the org {ENV}LOGIN_URL logs in to (a staging id sent "
        "to production, login.salesforce.com, or a production id to staging, test.salesforce.com)",
        code="application-not-found"),
    "Invalid username and password": Rule(
        "refused", "Invalid username and password: Mission Capital refused the integration user "
        f"even right after a fresh login; check {ENV}USERNAME, {ENV}PASSWORD and "
        f"{ENV}SECURITY_TOKEN, and that {ENV}LOGIN_URL is the org Mission Capital set the user "
        "up in", code="invalid-credentials"),
    "Invalid Request Header. PartnerName or PartnerId parameters are missing.": Rule(
        "broken", f"Invalid Request Header: Mission Capital did not accept the PartnerId or "
        f"PartnerName header; set {ENV}PARTNER_ID and {ENV}PARTNER_NAME to the values Mission "
        "Capital issued (the destination is paused until they are fixed), then requeue",
        code="missing-partner-header"),
}
# fmt: on
UNKNOWN_TEXT = Rule(
    "review",
    "contactUser answered IsSuccessful: false with a text not in the documented table; "
    "a person decides",
    code="unknown-response",
)

#: Salesforce platform errors (``[{"message", "errorCode"}]``), by ``errorCode``.
# fmt: off
PLATFORM_ERRORS: dict[str, Rule] = {
    "INVALID_SESSION_ID": Rule(
        "refused", "Salesforce refused the session (INVALID_SESSION_ID) even right after a fresh "
        f"login; check the connected app's session and IP policies for {ENV}USERNAME, and "
        f"{ENV}LOGIN_URL"),
    "REQUEST_LIMIT_EXCEEDED": Rule(
        "spent", "the org's API allowance for the last 24 h is spent (REQUEST_LIMIT_EXCEEDED): "
        "Mission Capital is paused, one call probes it every CONTACTSYNC_PAUSE__LIMIT_PROBE_"
        "INTERVAL_S until Salesforce frees calls; ask Mission Capital for a larger allowance if "
        "this recurs"),
}
# fmt: on

#: What the HTTP status says when neither body decides.
# fmt: off
STATUSES: dict[int, Rule] = {
    401: PLATFORM_ERRORS["INVALID_SESSION_ID"],
    403: Rule(
        "review", "Salesforce refused access (HTTP 403): the integration user may lack permission "
        "for the contactUser Apex class; ask Mission Capital to check its profile, then requeue"),
    404: Rule(
        "rejected", f"HTTP 404: no {CONTACT_USER_PATH} at the instance {{instance}}; check "
        f"{ENV}LOGIN_URL (https://login.salesforce.com for production, https://test.salesforce.com "
        "for staging) and that Mission Capital deployed the endpoint there, then requeue"),
    405: Rule(
        "rejected", f"HTTP 405: the instance {{instance}} does not take POST at "
        f"{CONTACT_USER_PATH}; the endpoint changed or {ENV}LOGIN_URL logs in to the wrong org; "
        "check with Mission Capital, then requeue"),
    500: Rule("fault", "Salesforce failed while running contactUser (HTTP 500)"),
}
# fmt: on


def classify_answer(status: int, data: Any, instance: str = "") -> Outcome:
    """One contactUser answer (its parsed JSON body, None if not JSON) → one outcome: the
    ``IsSuccessful`` body first (its HTTP status is undocumented), then the platform
    ``errorCode``, then the HTTP status. A refused token comes out as ``Reauth``: the client logs
    in again once before it settles the job."""
    if isinstance(data, dict) and isinstance(data.get("IsSuccessful"), bool):
        if data["IsSuccessful"]:
            return DELIVERED.outcome("IsSuccessful")
        text = data.get("ResponseText")
        rule = RESPONSE_TEXTS.get(text.strip()) if isinstance(text, str) else None
        return _outcome(rule or UNKNOWN_TEXT, "", instance)
    codes = _error_codes(data)
    for code in codes:
        if code in PLATFORM_ERRORS:
            return _outcome(PLATFORM_ERRORS[code], code, instance)
    code = codes[0] if codes else f"http-{status}"
    if status in STATUSES:
        return _outcome(STATUSES[status], code, instance)
    if status in GATEWAY_DOWN:
        return gateway_outcome(status, NAME)
    return Review(code, f"HTTP {status} without a documented contactUser answer; a person decides")


def describe_answer(response: httpx.Response, data: Any) -> str:
    """What the ledger keeps of an answer (``data``: its parsed JSON body): contactUser's fields,
    or the platform's error codes and messages; of anything else (an error page) only its size
    and type."""
    head = f"HTTP {response.status_code}"
    if isinstance(data, dict) and "IsSuccessful" in data:
        kept = {k: data[k] for k in ("IsSuccessful", "ResponseText") if k in data}
        return f"{head} {json.dumps(kept)[:200]}"
    if _error_codes(data):
        errors = [
            {k: e.get(k) for k in ("errorCode", "message")} for e in data[:3] if isinstance(e, dict)
        ]
        return f"{head} {json.dumps(errors)[:200]}"
    kind = response.headers.get("content-type", "no content type").split(";")[0]
    return f"{head}: {len(response.content)} bytes of {kind}, not a Salesforce answer"


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _error_codes(data: Any) -> list[str]:
    if not isinstance(data, list):
        return []
    return [
        e["errorCode"] for e in data if isinstance(e, dict) and isinstance(e.get("errorCode"), str)
    ]


# -- the login ---------------------------------------------------------------------------------
_CREDENTIALS = f"{ENV}USERNAME, {ENV}PASSWORD and {ENV}SECURITY_TOKEN"
_WHICH_ORG = (
    f"and that {ENV}LOGIN_URL is the org's environment (https://login.salesforce.com for "
    "production, https://test.salesforce.com for staging)"
)

#: Salesforce's OAuth ``error`` → what the operator should check.
# fmt: off
LOGIN_ERRORS: dict[str, str] = {
    "invalid_grant": f"check {_CREDENTIALS} (password and security token are sent together), "
                     f"that the user is not locked out, {_WHICH_ORG}",
    "invalid_client_id": f"check {ENV}CLIENT_ID (the connected app's consumer key) {_WHICH_ORG}",
    "invalid_client": f"check {ENV}CLIENT_SECRET (the connected app's consumer secret) and "
                      f"{ENV}CLIENT_ID",
    "unsupported_grant_type": "the connected app does not allow the username-password flow; "
                              "ask Mission Capital to enable it",
}
# fmt: on
LOGIN_OTHER = (
    f"check {ENV}LOGIN_URL (https://login.salesforce.com or https://test.salesforce.com), "
    f"{ENV}CLIENT_ID, {ENV}CLIENT_SECRET, {_CREDENTIALS}"
)


def login_refusal(response: httpx.Response) -> str:
    """The ``LoginFailed`` message for a refused login: Salesforce's error and what to check."""
    data = _json(response.content)
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, str) or not error:
        return f"Salesforce refused the login (HTTP {response.status_code}): {LOGIN_OTHER}"
    description = data.get("error_description") if isinstance(data, dict) else None
    said = f"{error}: {description}" if isinstance(description, str) else error
    return f"Salesforce refused the login ({said[:100]}): {LOGIN_ERRORS.get(error, LOGIN_OTHER)}"


# -- the client --------------------------------------------------------------------------------
class MissionCapitalClient:
    """One pooled, thread-safe HTTP client per worker process; the token is the fleet's."""

    def __init__(
        self,
        settings: MissionCapitalSettings,
        token_cache: redis.Redis | None = None,
        prefix: str | None = None,
        max_connections: int = 64,
    ) -> None:
        require(DESTINATION_NAME, settings)
        self._settings = settings
        self._login_url = str(settings.login_url).rstrip("/")
        self._password = settings.password.get_secret_value() + (
            settings.security_token.get_secret_value()
        )
        self._configured_secrets = [
            s
            for s in (
                self._password,
                settings.password.get_secret_value(),
                settings.security_token.get_secret_value(),
                settings.client_secret.get_secret_value(),
            )
            if s
        ]
        self._partner = {"PartnerId": settings.partner_id, "PartnerName": settings.partner_name}
        self.gate: Gate | None = destination_gate(DESTINATION_NAME, self._login_url, settings)
        self._http = httpx.Client(
            timeout=http_timeout(settings),
            headers={"Accept": "application/json"},
            limits=httpx.Limits(max_connections=max_connections),
        )
        # One token per org user and connected app, for the whole fleet.
        who = f"{self._login_url} {settings.username} {settings.client_id}"
        self.shared_token = SharedToken(
            token_cache if token_cache is not None else redis_client(),
            gate_name(DESTINATION_NAME, who),
            self._login,
            prefix=get_settings().key_prefix if prefix is None else prefix,
        )
        # A refused token (a Reauth answer) is renewed for the fleet once and the call sent once
        # more (safe: contactUser is idempotent).
        self._auth: TokenAuth[Answer] = TokenAuth(
            self.shared_token,
            lambda answer: isinstance(answer.outcome, Reauth),
            lambda exc: Answer(Reauth("login-failed", str(exc)), "login refused"),
        )

    def prepare(self, job: JobModel) -> Callable[[], Answer]:
        assert isinstance(job, MissionCapitalContactUser)
        headers = {
            **self._partner,
            "Content-Type": "application/json",
            "ApplicationID": job.application_id,
        }
        return lambda: self._deliver(headers)

    def send(self, job: JobModel) -> Answer:
        """Build and send at once (tools and tests; deliveries prepare, then send)."""
        return self.prepare(job)()

    def secrets(self) -> list[str]:
        return [*self._configured_secrets, *self._auth.secrets()]

    def close(self) -> None:
        self._http.close()

    def _deliver(self, headers: dict[str, str]) -> Answer:
        """Call with the fleet's token; a refused token is renewed once for the fleet and the
        call sent once more (safe: contactUser is idempotent)."""
        try:
            return self._auth.run(
                lambda session: session.send(lambda token: self._call(token, headers))
            )
        except httpx.TransportError as exc:  # the login's: the call's own is its answer
            return Answer(idempotent_transport_outcome(exc, LOGIN_NAME), type(exc).__name__)

    def _call(self, token: Token, headers: dict[str, str]) -> Answer:
        instance = token.data.get("instance_url", "").rstrip("/")
        try:
            response = self._http.post(
                f"{instance}{CONTACT_USER_PATH}",
                headers={**headers, "Authorization": f"Bearer {token.value}"},
            )
        except httpx.TransportError as exc:
            return Answer(idempotent_transport_outcome(exc, NAME), type(exc).__name__)
        self._record_usage(response)
        data = _json(response.content)
        outcome = classify_answer(response.status_code, data, instance)
        measured = isinstance(data, dict)  # the Apex code itself answered
        return Answer(outcome, describe_answer(response, data), measured=measured)

    def _login(self, stale: Token | None) -> Token:
        """The OAuth2 username-password grant (``SharedToken`` calls it under the fleet's lock).
        Raises ``LoginFailed`` if the credentials are refused, ``LoginUnanswered`` on a 5xx."""
        settings = self._settings
        response = self._http.post(
            f"{self._login_url}{OAUTH_PATH}",
            data={
                "grant_type": "password",
                "client_id": settings.client_id,
                "client_secret": settings.client_secret.get_secret_value(),
                "username": settings.username,
                "password": self._password,
            },
        )
        self._record_usage(response)
        status = response.status_code
        if status >= 500:
            outcome = (
                gateway_outcome(status, LOGIN_NAME)
                if status in GATEWAY_DOWN
                else Retry(f"http-{status}", f"{LOGIN_NAME} failed (HTTP {status})", bounded=True)
            )
            raise LoginUnanswered(Answer(outcome, f"login HTTP {status}"))
        if status != 200:
            raise LoginFailed(login_refusal(response))
        data = _json(response.content)
        value = data.get("access_token") if isinstance(data, dict) else None
        instance = data.get("instance_url") if isinstance(data, dict) else None
        if not (
            isinstance(value, str)
            and value
            and isinstance(instance, str)
            and instance.startswith(("https://", "http://"))
        ):
            raise LoginFailed(
                f"{LOGIN_NAME} answered HTTP 200 without an access_token and an "
                f"instance_url: check {ENV}LOGIN_URL"
            )
        refresh_at_ms = int(time.time() * 1000 + 0.9 * settings.token_lifetime_s * 1000)
        return self._auth.remember(
            Token(value, {"instance_url": instance}, refresh_at_ms=refresh_at_ms)
        )

    @staticmethod
    def _record_usage(response: httpx.Response) -> None:
        found = _API_USAGE.search(response.headers.get(LIMIT_HEADER, ""))
        if found:
            record_api_usage(DESTINATION_NAME, int(found[1]), int(found[2]))


def _client() -> MissionCapitalClient:
    settings = get_settings()
    return MissionCapitalClient(
        settings.missioncapital, max_connections=settings.worker_concurrency * 2
    )


class MissionCapitalDelivery(DeliveryTask):
    abstract = True
    connector_factory: ClassVar[Callable[[], MissionCapitalClient]] = staticmethod(_client)


@shared_task(
    base=MissionCapitalDelivery, bind=True, name="missioncapital.deliver", queue="missioncapital"
)
def deliver(self: MissionCapitalDelivery, job_id: str) -> dict[str, Any]:
    """Deliver one Mission Capital job (contactUser) from the ledger."""
    return self.deliver(job_id)
