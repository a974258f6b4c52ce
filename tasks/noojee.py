"""Noojee Contact CampaignAPI: lead update and insert jobs, the answer table, the client, the task.

Noojee answers ``{"code", "message"}``; we classify on ``code``, never on the HTTP status (the
retryable 109 arrives as HTTP 400). The table below is CRM_APIS.md §1 as data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

import httpx
from celery import shared_task
from pydantic import Field, field_validator

from tasks.delivery import GATEWAY_DOWN, Answer, DeliveryTask, NotConfigured, destination_gate
from tasks.models import (
    CONTROL_CHARACTERS,
    TEXT_CONTROL_CHARACTERS,
    Int32Id,
    JobModel,
    Percent,
)
from tasks.outcomes import Outcome, Retry, Review, Rule
from worker.destinations import Destination
from worker.gate import Gate
from worker.settings import NoojeeSettings, Settings, get_settings

NO_CHANGE = "<No Change>"
PHONE_SUFFIX = "Phone"
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_PHONE = re.compile(r"^\+?[0-9 ()\-.]+$")
#: njCallBackDate, yyyy/MM/dd HH:mm.
_CALLBACK = re.compile(r"([0-9]{4})/([0-9]{2})/([0-9]{2}) ([0-9]{2}):([0-9]{2})")
_NO_CHANGE_FOLDED = NO_CHANGE.lower()
_NOT_IN_LEAD_ID = re.compile(r"[<>&?#\x00-\x1f\x7f]")
#: Most lead fields in one job: a campaign template has a few dozen; this bounds what one job
#: costs to parse, store and send.
MAX_LEAD_FIELDS = 200
#: Longest value of a lead field (ours: Noojee names none).
FIELD_VALUE_MAX = 4000

UPDATE_PATH = "/servicemanager/rest/CampaignAPI/updateLeadFast"
INSERT_PATH = "/servicemanager/rest/CampaignAPI/insertLeadFast"
#: The simulator's apiKey under `contactsync up` (its own default, not a secret).
SANDBOX_API_KEY = "sandbox-key"

DESTINATION = Destination(
    name="noojee",
    settings=NoojeeSettings,
    job_kinds=("noojee.update", "noojee.insert"),
    calls_per_job=1,  # one call, which may wait its full read timeout (the PBX's queue)
    simulator="sandbox.noojee",
    simulator_summary="The Noojee CampaignAPI simulator, e.g. `--slots 4 --port 8081`.",
    sandbox_env={"API_KEY": SANDBOX_API_KEY},
    sandbox_args=("--api-key", SANDBOX_API_KEY),
)


# -- jobs --------------------------------------------------------------------------------------
class _NoojeeLead(JobModel):
    """Fields shared by update and insert. Python names; ``alias`` is Noojee's wire name."""

    destination: ClassVar[str] = "noojee"
    public_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "template_id",
            "campaign_id",
            "allocation_id",
            "external_lead_id",
            "disposition",
            "callback_date",
            "priority",
            "contact_hours",
            "allow_duplicates",
        }
    )
    allows_no_change: ClassVar[bool]
    #: The lead, by its external id: insert and update of one lead share it, so an update
    #: never overtakes the insert that creates its lead.
    entity_fields: ClassVar[tuple[str, ...]] = ("external_lead_id",)

    # Int32 in the CampaignAPI (Java int): a larger id cannot name a template, campaign or
    # allocation, and would only come back as 115-117 after a slot of the PBX was spent on it.
    template_id: Int32Id = Field(alias="fTemplateId")
    campaign_id: Int32Id = Field(alias="fCampaignId")
    allocation_id: Int32Id = Field(alias="fAllocationId")
    external_lead_id: str = Field(alias="njExternalLeadId", min_length=1, max_length=128)
    callback_date: str | None = Field(None, alias="njCallBackDate", max_length=16)
    priority: Percent | None = Field(None, alias="njPriority")
    contact_hours: str | None = Field(None, alias="njContactHours", min_length=1, max_length=64)
    fields: dict[str, str] = Field(
        default_factory=dict,
        validate_default=True,  # no fields at all must still fail "at least one phone field"
        max_length=MAX_LEAD_FIELDS,
        description="lead fields of the campaign template, e.g. Name, FirstPhone; phone fields "
        f"are the ones whose name ends in 'Phone'; at most {MAX_LEAD_FIELDS} fields, names of "
        f"letters, digits and _ (64 at most), values of at most {FIELD_VALUE_MAX} characters",
    )

    @field_validator("external_lead_id")
    @classmethod
    def _lead_id_is_plain(cls, value: str) -> str:
        if value != value.strip() or _NOT_IN_LEAD_ID.search(value):
            raise ValueError(
                "must not contain spaces at either end, control characters or any of < > & ? #"
            )
        return value

    @field_validator("callback_date")
    @classmethod
    def _callback_format(cls, value: str | None) -> str | None:
        if value is None:
            return value
        # The pattern, then datetime() for the calendar: strptime took half of a backfill's
        # validation time.
        found = _CALLBACK.fullmatch(value)
        try:
            if found is None:
                raise ValueError(value)
            year, month, day, hour, minute = map(int, found.groups())
            datetime(year, month, day, hour, minute)
        except ValueError:
            raise ValueError(
                "must be yyyy/MM/dd HH:mm in the lead's contact-hours timezone, "
                "e.g. 2026/11/24 09:30"
            ) from None
        return value

    @field_validator("fields")
    @classmethod
    def _field_names_and_phones(cls, fields: dict[str, str]) -> dict[str, str]:
        # A backfill validates every row: this loop is written for speed (map, not generators).
        has_phone = False
        for name, value in fields.items():
            if not _FIELD_NAME.fullmatch(name):  # never echoed: it may be a value put as a key
                raise ValueError(
                    "a field name must be a letter, then letters, digits or _ (64 at most)"
                )
            if name.startswith("nj"):
                raise ValueError(f"{name}: nj* system fields have their own parameters")
            if len(value) > FIELD_VALUE_MAX:
                raise ValueError(f"{name}: longer than {FIELD_VALUE_MAX} characters")
            if TEXT_CONTROL_CHARACTERS.search(value):
                raise ValueError(
                    f"{name}: contains control characters (only tab and line breaks are allowed)"
                )
            cls._check_no_change(name, value)
            if name.endswith(PHONE_SUFFIX):
                has_phone = has_phone or bool(value)
                if value != NO_CHANGE and not (
                    _PHONE.match(value) and 6 <= sum(map(str.isdigit, value)) <= 20
                ):
                    raise ValueError(
                        f"{name}: not a phone number (6 to 20 digits; spaces, + - ( ) . allowed)"
                    )
        if not has_phone:
            raise ValueError(
                "at least one phone field is required (a field whose name ends in 'Phone', "
                f"e.g. FirstPhone); on update, pass {NO_CHANGE} to keep a phone as it is"
            )
        return fields

    @field_validator("disposition", "contact_hours", check_fields=False)
    @classmethod
    def _no_change_allowed(cls, value: str | None) -> str | None:
        if value is not None:
            if CONTROL_CHARACTERS.search(value):
                raise ValueError("contains control characters")
            cls._check_no_change("value", value)
        return value

    @classmethod
    def _check_no_change(cls, name: str, value: str) -> None:
        if "<" in value and value.strip().lower() == _NO_CHANGE_FOLDED:
            if value != NO_CHANGE:
                raise ValueError(f"{name}: write the no-change marker exactly as {NO_CHANGE}")
            if not cls.allows_no_change:
                raise ValueError(f"{name}: {NO_CHANGE} is only valid on update, not on insert")

    def lead(self) -> dict[str, Any]:
        """The lead object Noojee takes in the body."""
        body: dict[str, Any] = dict(self.fields)
        for name in ("disposition", "callback_date", "priority", "contact_hours"):
            value = getattr(self, name, None)
            if value is not None:
                body[type(self).model_fields[name].alias or name] = value
        return body


class NoojeeLeadUpdate(_NoojeeLead):
    """``updateLeadFast``: change an existing lead. Setting ``disposition`` fires its actions on
    every call; pass ``<No Change>`` to keep the current one (fails with 107 on a lead never
    dialed)."""

    kind: ClassVar[str] = "noojee.update"
    allows_no_change: ClassVar[bool] = True
    disposition: str = Field(alias="njDisposition", min_length=1, max_length=128)

    def request(self) -> tuple[str, dict[str, Any], Any]:
        params = {
            "fTemplateId": self.template_id,
            "fCampaignId": self.campaign_id,
            "fAllocationId": self.allocation_id,
            "njExternalLeadId": self.external_lead_id,
        }
        return UPDATE_PATH, params, self.lead()

    def mergeable(self, newer: JobModel) -> bool:
        """Two updates of one lead in one campaign allocation merge unless they set different
        dispositions: a disposition fires its own actions in Noojee on every call that sets it,
        so each is delivered in its own call, in order. Inserts are never merged (an insert
        creates the lead; the update after it is its own call)."""
        if not isinstance(newer, NoojeeLeadUpdate):
            return False
        place = (self.template_id, self.campaign_id, self.allocation_id)
        if place != (newer.template_id, newer.campaign_id, newer.allocation_id):
            return False
        return self.disposition == newer.disposition or NO_CHANGE in (
            self.disposition,
            newer.disposition,
        )

    def merge(self, newer: NoojeeLeadUpdate) -> NoojeeLeadUpdate:
        """Newest value of each field: ``newer``'s, except where it says <No Change> (then this
        job's value stands) or leaves an optional field out."""
        fields = dict(self.fields)
        for name, value in newer.fields.items():
            if value != NO_CHANGE or name not in fields:
                fields[name] = value
        return self.model_copy(
            update={
                "fields": fields,
                "disposition": self.disposition
                if newer.disposition == NO_CHANGE
                else newer.disposition,
                **{
                    name: getattr(newer, name)
                    for name in ("callback_date", "priority", "contact_hours")
                    if getattr(newer, name) is not None
                },
            }
        )


class NoojeeLeadInsert(_NoojeeLead):
    """``insertLeadFast``: add a new lead (one lead per job)."""

    kind: ClassVar[str] = "noojee.insert"
    allows_no_change: ClassVar[bool] = False
    disposition: str | None = Field(None, alias="njDisposition", min_length=1, max_length=128)
    allow_duplicates: bool = Field(False, alias="allowDuplicates")

    def request(self) -> tuple[str, dict[str, Any], Any]:
        params = {
            "fTemplateId": self.template_id,
            "fCampaignId": self.campaign_id,
            "fAllocationId": self.allocation_id,
            "allowDuplicates": str(self.allow_duplicates).lower(),
        }
        return INSERT_PATH, params, [{"njExternalLeadId": self.external_lead_id, **self.lead()}]


# -- the answer table --------------------------------------------------------------------------
# fmt: off
ANSWERS: dict[int, Rule] = {
    0: Rule("delivered", "OK"),
    101: Rule("rejected", "COULDNT_FIND_THE_LEAD: no lead has this njExternalLeadId"),
    102: Rule("rejected", "NO_PHONE_FIELDS: the lead has no phone number"),
    103: Rule("fault", "EXCEPTION: the PBX failed while handling the call"),
    104: Rule("rejected", "DNC: the lead's phone numbers are on the do-not-call list; "
                          "compliance forbids retrying"),
    105: Rule("rejected", "DUPLICATE: a lead with this phone number already exists"),
    106: Rule("rejected", "INVALID_DISPOSTION: no such disposition in the campaign; "
                          "fix the disposition, then requeue"),
    107: Rule("rejected", "DISPOSTION_ISNT_SET_AND_NOCHANGE_SPECIFIED: the lead was never "
                          "dialed; send a real disposition instead of <No Change>"),
    108: Rule("rejected", "IMPORT_BUT_NOCHANGE_SPECIFIED: <No Change> is not valid on insert"),
    109: Rule("busy", "TIMEOUT_TOO_MANY_CONCURRENT_REQUESTS: the PBX queued the call too long"),
    110: Rule("review", "LEAD_NOT_UPDATED_DUE_TO_CONFLICT: a user edited the lead at the same "
                        "moment; check the lead in Noojee, then requeue or discard"),
    111: Rule("rejected", "INVALID_TIMEZONE_SPECIFIED: unknown njContactHours"),
    112: Rule("rejected", "DUPLICATE_EXTERNAL_ID: njExternalLeadId already exists in the campaign"),
    113: Rule("rejected", "EDIT_BUT_NO_EXTERNAL_ID_SUPPLIED: njExternalLeadId is missing"),
    114: Rule("rejected", "INVALID_CALLBACK_DATE_FORMAT: njCallBackDate is not yyyy/MM/dd HH:mm"),
    115: Rule("rejected", "ALLOCATIN_ID_REQUIRED: fAllocationId is not a valid allocation"),
    116: Rule("rejected", "TEMPLATE_ID_REQUIRED: fTemplateId is not a valid campaign template"),
    117: Rule("rejected", "CAMPAIGN_ID_REQUIRED: fCampaignId is not a valid campaign"),
}
# fmt: on
UNKNOWN_CODE = Rule("review", "unknown Noojee code: not in the documented table; a person decides")

#: Transport errors, by what they say about whether the PBX may have acted on the call.
#: Before the request was sent: safe to retry. After: the update may have applied (and a
#: disposition's actions fired), so a person decides.
# fmt: off
TRANSPORT: dict[type[Exception], Rule] = {
    httpx.ConnectError: Rule("down", "could not connect to the PBX (down for maintenance?)"),
    httpx.ConnectTimeout: Rule("down", "connecting to the PBX timed out"),
    httpx.PoolTimeout: Rule("fault", "no free connection to the PBX in this worker"),
    httpx.WriteError: Rule("fault", "the connection broke while sending the request"),
    httpx.WriteTimeout: Rule("fault", "sending the request timed out"),
    httpx.ReadTimeout: Rule("review", "no answer within the read timeout: the update may or may "
                                      "not have applied; check the lead, then requeue or discard"),
    httpx.ReadError: Rule("review", "the connection broke before the answer: the update may or "
                                    "may not have applied; check the lead"),
    httpx.RemoteProtocolError: Rule("review", "the PBX closed the connection without an answer: "
                                              "the update may or may not have applied"),
}
# fmt: on
TRANSPORT_OTHER = Rule("fault", "transport error talking to the PBX")

#: Codes Noojee answers before the call reaches the PBX's slots: their latency says nothing
#: about how loaded the PBX is.
BEFORE_THE_PBX = frozenset({"113", "115", "116", "117"})


def classify_answer(status: int, body: bytes) -> Outcome:
    """One Noojee HTTP answer → one outcome, by ``code`` (``Code`` tolerated)."""
    try:
        data = httpx.Response(status, content=body).json()
    except ValueError:
        data = None
    code = None
    if isinstance(data, dict):
        code = data.get("code", data.get("Code"))
    if isinstance(code, str) and code.isdigit():  # documented as a number; tolerate "109"
        code = int(code)
    if isinstance(code, int) and not isinstance(code, bool):
        return ANSWERS.get(code, UNKNOWN_CODE).outcome(str(code))
    if status in (401, 403):
        return Retry(
            f"http-{status}",
            "the PBX refused the apiKey: check "
            "CONTACTSYNC_NOOJEE__API_KEY and that this host is whitelisted",
            bounded=True,
        )
    if status >= 500:
        return Retry(
            f"http-{status}",
            f"HTTP {status} without a Noojee code",
            bounded=True,
            down=status in GATEWAY_DOWN,
        )
    return Review(f"http-{status}", f"HTTP {status} without a Noojee code; a person decides")


def describe_answer(response: httpx.Response) -> str:
    """What the ledger keeps of an answer: Noojee's code and message only. A body that is not a
    Noojee answer (an error page, a proxy's echo) may quote the request, apiKey and contact data
    included, so only its size and type are kept."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        kept = {k: data[k] for k in ("code", "Code", "message", "Message") if k in data}
        return f"HTTP {response.status_code} {json.dumps(kept)[:200]}"
    kind = response.headers.get("content-type", "no content type").split(";")[0]
    size = len(response.content)
    return f"HTTP {response.status_code}: {size} bytes of {kind}, not a Noojee answer"


def classify_transport(exc: Exception) -> Outcome:
    for cls in type(exc).__mro__:
        if cls in TRANSPORT:
            return TRANSPORT[cls].outcome(type(exc).__name__)
    return TRANSPORT_OTHER.outcome(type(exc).__name__)


# -- the client --------------------------------------------------------------------------------
class NoojeeClient:
    """One pooled, thread-safe HTTP client per worker process for one PBX."""

    def __init__(
        self, settings: NoojeeSettings, max_connections: int = 64, gate: Gate | None = None
    ) -> None:
        if settings.base_url is None:
            raise NotConfigured(
                "CONTACTSYNC_NOOJEE__BASE_URL is not set: point it at the PBX "
                "(https://pbx.example.com), or run `contactsync up` to use the simulator"
            )
        self._api_key = settings.api_key.get_secret_value()
        self.gate = gate
        timeout = httpx.Timeout(
            connect=settings.connect_timeout_s,
            read=settings.read_timeout_s,
            write=settings.connect_timeout_s,
            pool=settings.connect_timeout_s,
        )
        # Requests are built by the client (base URL, headers, timeouts) and sent straight to
        # its transport: redirects, cookies and auth do not apply to this API, and skipping those
        # layers shortens the moment between a permit handed over and the call on the wire.
        self._transport = httpx.HTTPTransport(limits=httpx.Limits(max_connections=max_connections))
        self._http = httpx.Client(
            base_url=str(settings.base_url).rstrip("/"),
            timeout=timeout,
            headers={"Accept": "application/json"},
            transport=self._transport,
        )

    def prepare(self, job: JobModel) -> Callable[[], Answer]:
        assert isinstance(job, NoojeeLeadUpdate | NoojeeLeadInsert)
        path, params, body = job.request()
        request = self._http.build_request(
            "POST", path, params={**params, "apiKey": self._api_key}, json=body
        )
        return lambda: self._exchange(request)

    def send(self, job: JobModel) -> Answer:
        """Build and send at once (tools and tests; deliveries prepare, then send)."""
        return self.prepare(job)()

    def _exchange(self, request: httpx.Request) -> Answer:
        try:
            response = self._transport.handle_request(request)
            try:
                response.read()
            finally:
                response.close()
        except httpx.TransportError as exc:
            return Answer(classify_transport(exc), type(exc).__name__)
        outcome = classify_answer(response.status_code, response.content)
        measured = (
            response.status_code < 500
            and outcome.code.isdigit()
            and outcome.code not in BEFORE_THE_PBX
            and not getattr(outcome, "busy", False)
        )
        return Answer(outcome, describe_answer(response), measured=measured)

    def secrets(self) -> list[str]:
        return [self._api_key]


def pbx_gate(settings: Settings) -> Gate:
    """The gate of the configured PBX: one per base URL, shared by insert and update, by every
    worker, and adaptive unless CONTACTSYNC_NOOJEE__ADAPTIVE=false."""
    noojee = settings.noojee
    return destination_gate(
        "noojee", str(noojee.base_url or ""), noojee, initial=noojee.initial_concurrency
    )


def _client() -> NoojeeClient:
    settings = get_settings()
    return NoojeeClient(
        settings.noojee,
        max_connections=settings.worker_concurrency * 2,
        gate=pbx_gate(settings) if settings.noojee.gate else None,
    )


class NoojeeDelivery(DeliveryTask):
    abstract = True
    connector_factory: ClassVar[Callable[[], NoojeeClient]] = staticmethod(_client)


@shared_task(base=NoojeeDelivery, bind=True, name="noojee.deliver", queue="noojee")
def deliver(self: NoojeeDelivery, job_id: str) -> dict[str, Any]:
    """Deliver one Noojee job (update or insert) from the ledger."""
    return self.deliver(job_id)
